//! The log stream decoder: turns the body of `/containers/{id}/logs?timestamps=1` (after chunk
//! decoding) into lines ([`LineRef`], owned: [`LogLine`](super::LogLine)).
//!
//! Without a TTY the body is multiplexed in frames with an 8-byte header
//! `[type, 0, 0, 0, size u32 BE]`: type 1 is stdout, 2 stderr, 0 stdin (ignored) and 3 an error
//! the engine reports in band. With a TTY the body is raw bytes. Either way every log entry
//! starts with `<RFC3339Nano> `, which becomes `ts_ns`. The engine cuts lines longer than
//! 16 KiB into several entries, each with the same timestamp and no `\n` but the last; they are
//! rejoined per stream, keeping the first fragment's timestamp and at most `max_line_bytes`.
//!
//! # Podman
//!
//! Podman's own endpoint (`/libpod/containers/{id}/logs`, which the engine client uses when
//! the engine is Podman) multiplexes a TTY's output too, so its entries are delimited even
//! then: [`Decoder::framed`]. Podman (conmon) cuts entries where the container's writes end, not
//! at 16 KiB: `printf "a "; sleep 1; echo b` is a partial entry `a ` and a final entry `b\n`,
//! stamped a second apart, possibly with the other stream's entries in between. Seen from
//! here, a frame that ends its entry without a `\n` before [`PARTIAL_BYTES`] is such a cut
//! ("cut short"). What follows from it:
//! - A line is counted where the entry that ends it is ([`LineRef::end_ts_ns`]): a stream
//!   resumed with `since` at that second may start after the line's first entries, but it
//!   always holds the final one, so the count at every second is the same on every read.
//! - A line cut short is never emitted while the stream is merely quiet (the engine sends its
//!   rest), nor when the stream breaks ([`Decoder::cut`]): the resumed stream reads it whole.
//!   Only the end of the body ([`Decoder::finish`]) makes it a line as it is (the container
//!   ended without the rest).
//!
//! Docker never sends a frame cut short except a container's very last output without a
//! `\n`, right before the body ends, and the fragments of its long lines share one timestamp;
//! so none of this changes what Docker's streams give.
//!
//! Pure and incremental: frames, entries and timestamps may be cut anywhere between two calls
//! to [`Decoder::feed`]. It never panics; a corrupt multiplex header is an error.
//!
//! It runs once per log line, so the usual cases have paths of their own: a whole Docker frame
//! (`whole_frame`), a whole timestamp (`whole_prefix`), a whole line handed out where it lies in
//! the input (`whole_line`: [`LineRef`] borrows it; only a line cut between reads is assembled,
//! in a buffer kept from line to line); line ends are found with `memchr`. `src/reference/frames.rs` keeps the
//! decoder as it was before them; the tests and the fuzz targets require the same lines and
//! errors from both.

#[cfg(test)]
use super::timestamp::parse_rfc3339_ns;
use super::timestamp::{Parser, MAX_TIMESTAMP_LEN};
use super::{Error, LineRef, StreamKind};
use memchr::{memchr, memchr2};

/// The length of the timestamps Docker writes with all nine digits of their fraction:
/// `2026-11-25T02:10:05.620164341Z`.
const DOCKER_TIMESTAMP_LEN: usize = 30;

/// The engine's log copier emits a partial entry when its 16 KiB buffer fills without a `\n`.
/// A TTY stream has no frames, so this size is how we know where such a fragment ends.
pub const PARTIAL_BYTES: usize = 16 * 1024;

/// What the current multiplexed frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    Stdin,
    Log(StreamKind),
    System,
}

/// A line being assembled for one stream.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Timestamp of the line's first fragment; valid while `active`.
    ts: i64,
    /// Timestamp of the line's latest fragment (where the line is counted); valid while
    /// `active`.
    end_ts: i64,
    /// Some bytes (possibly none kept, if truncated) of this line were seen.
    active: bool,
    /// A fragment of this line ended short of [`PARTIAL_BYTES`] without a `\n`: the engine
    /// cuts entries where the container's writes end and sends the rest later (Podman).
    cut_short: bool,
    truncated: bool,
    /// A TTY `\r` at the end of what we have so far: dropped if `\n` follows, kept otherwise.
    cr_held: bool,
}

/// Decodes one log stream.
#[derive(Debug)]
pub struct Decoder {
    /// The body has no multiplex headers (the compat endpoint's TTY streams).
    raw: bool,
    /// The content comes from a TTY: `\r\n` line ends.
    tty: bool,
    max_line_bytes: usize,
    /// Multiplex header bytes gathered so far (non-TTY).
    header: [u8; 8],
    header_len: usize,
    in_frame: bool,
    frame_left: usize,
    frame_kind: FrameKind,
    /// At the start of an entry, gathering its timestamp into `prefix`.
    in_prefix: bool,
    /// The prefix is only maybe a timestamp: a TTY fragment just reached [`PARTIAL_BYTES`].
    tentative: bool,
    prefix: Vec<u8>,
    /// Parses the entries' timestamps (remembering the last one's minute).
    timestamps: Parser,
    /// The stream the current entry's content goes to.
    entry_stream: StreamKind,
    /// Content bytes of the current fragment, for the TTY fragment-size rule.
    fragment_len: usize,
    /// The most recent timestamp seen, for lines whose own timestamp is missing.
    last_ts: i64,
    /// Lines being assembled: stdout, stderr, engine errors.
    pending: [Pending; 3],
}

fn slot(stream: StreamKind) -> usize {
    match stream {
        StreamKind::Stdout => 0,
        StreamKind::Stderr => 1,
        StreamKind::EngineError => 2,
    }
}

const STREAMS: [StreamKind; 3] = [
    StreamKind::Stdout,
    StreamKind::Stderr,
    StreamKind::EngineError,
];

impl Decoder {
    /// A decoder for the Docker API's stream of a container with (`tty`, a raw body) or
    /// without a TTY (multiplexed); lines keep at most `max_line_bytes` bytes.
    pub fn new(tty: bool, max_line_bytes: usize) -> Decoder {
        Decoder::with(tty, tty, max_line_bytes)
    }

    /// A decoder for a multiplexed stream whatever the TTY setting (Podman's own endpoint);
    /// `tty` says the content has a TTY's `\r\n` line ends.
    pub fn framed(tty: bool, max_line_bytes: usize) -> Decoder {
        Decoder::with(false, tty, max_line_bytes)
    }

    fn with(raw: bool, tty: bool, max_line_bytes: usize) -> Decoder {
        Decoder {
            raw,
            tty,
            max_line_bytes,
            header: [0; 8],
            header_len: 0,
            in_frame: false,
            frame_left: 0,
            frame_kind: FrameKind::Stdin,
            in_prefix: raw,
            tentative: false,
            prefix: Vec::with_capacity(MAX_TIMESTAMP_LEN + 1),
            timestamps: Parser::default(),
            entry_stream: StreamKind::Stdout,
            fragment_len: 0,
            last_ts: 0,
            pending: Default::default(),
        }
    }

    /// Decodes the next bytes of the body, calling `emit` for every complete line.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        emit: &mut impl FnMut(LineRef<'_>),
    ) -> Result<(), Error> {
        if self.raw {
            self.entry_bytes(input, emit);
            return Ok(());
        }
        while !input.is_empty() {
            if !self.in_frame && self.header_len == 0 {
                if let Some(used) = self.whole_frame(input, emit) {
                    input = &input[used..];
                    continue;
                }
            }
            if !self.in_frame {
                let n = (8 - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                self.header_len += n;
                input = &input[n..];
                if self.header_len == 8 {
                    self.header_len = 0;
                    self.start_frame(emit)?;
                }
                continue;
            }
            let n = self.frame_left.min(input.len());
            let (payload, rest) = input.split_at(n);
            input = rest;
            self.frame_left -= n;
            match self.frame_kind {
                FrameKind::Stdin => {}
                FrameKind::Log(_) => self.entry_bytes(payload, emit),
                FrameKind::System => {
                    let mut data = payload;
                    while !data.is_empty() {
                        let used = self.content(StreamKind::EngineError, data, usize::MAX, emit);
                        data = &data[used..];
                    }
                }
            }
            if self.frame_left == 0 {
                self.end_frame(emit);
            }
        }
        Ok(())
    }

    /// The usual frame, whole at the start of `input`: stdout or stderr, one entry with
    /// Docker's timestamp, its content and the `\n` that ends the frame, for a stream with no
    /// line pending. Emits the line and leaves the decoder as the general path would (between
    /// frames); returns the bytes it took, or `None` (nothing changed) for the general path.
    #[inline]
    fn whole_frame(&mut self, input: &[u8], emit: &mut impl FnMut(LineRef<'_>)) -> Option<usize> {
        let (header, rest) = input.split_first_chunk::<8>()?;
        let stream = match header {
            [1, 0, 0, 0, ..] => StreamKind::Stdout,
            [2, 0, 0, 0, ..] => StreamKind::Stderr,
            _ => return None,
        };
        let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let payload = rest.get(..usize::try_from(size).ok()?)?;
        let (b'\n', entry) = payload.split_last()? else {
            return None;
        };
        if self.pending[slot(stream)].active || entry.get(DOCKER_TIMESTAMP_LEN) != Some(&b' ') {
            return None;
        }
        let content = &entry[DOCKER_TIMESTAMP_LEN + 1..];
        // One search finds a `\n` inside (not this path's) and tells level detection whether
        // the line has an `=` at all.
        let eq_free = match memchr2(b'\n', b'=', content) {
            None => true,
            Some(i) if content[i] == b'=' => {
                if memchr(b'\n', &content[i + 1..]).is_some() {
                    return None;
                }
                false
            }
            Some(_) => return None,
        };
        let ts = self.timestamps.parse(&entry[..DOCKER_TIMESTAMP_LEN])?;
        self.header = *header;
        self.frame_kind = FrameKind::Log(stream);
        self.frame_left = 0;
        self.entry_stream = stream;
        self.last_ts = ts;
        self.fragment_len = 0;
        self.tentative = false;
        self.in_prefix = false;
        self.prefix.clear();
        self.whole_line(stream, content, eq_free, emit);
        Some(8 + payload.len())
    }

    /// Emits the lines still waiting for their `\n` (used when the stream goes quiet), except
    /// those cut short (see the module documentation), whose rest the engine sends. Bytes that
    /// arrive later for the emitted lines start new lines.
    pub fn flush_partial(&mut self, emit: &mut impl FnMut(LineRef<'_>)) {
        for stream in STREAMS {
            let p = &self.pending[slot(stream)];
            if p.active && !p.cut_short {
                self.finish_line(stream, emit);
            }
        }
    }

    /// The engine ended the body: everything still held, even half a timestamp, becomes a line.
    pub fn finish(&mut self, emit: &mut impl FnMut(LineRef<'_>)) {
        if self.in_prefix && !self.prefix.is_empty() {
            self.prefix_failed(false, emit);
        }
        for stream in STREAMS {
            if self.pending[slot(stream)].active {
                self.finish_line(stream, emit);
            }
        }
    }

    /// The stream broke before its body ended: as [`Decoder::finish`], but the lines cut short
    /// are dropped, since the stream resumed after the last line emitted reads them whole.
    pub fn cut(&mut self, emit: &mut impl FnMut(LineRef<'_>)) {
        if self.in_prefix && !self.prefix.is_empty() {
            self.prefix_failed(false, emit);
        }
        for p in &mut self.pending {
            if p.cut_short {
                p.reset();
            }
        }
        self.finish(emit);
    }

    fn start_frame(&mut self, emit: &mut impl FnMut(LineRef<'_>)) -> Result<(), Error> {
        let h = self.header;
        if h[1] != 0 || h[2] != 0 || h[3] != 0 {
            return Err(Error::Protocol(format!(
                "bad log frame header {h:02x?} (is the container's TTY setting right?)"
            )));
        }
        self.frame_kind = match h[0] {
            0 => FrameKind::Stdin,
            1 => FrameKind::Log(StreamKind::Stdout),
            2 => FrameKind::Log(StreamKind::Stderr),
            3 => FrameKind::System,
            t => return Err(Error::Protocol(format!("unknown log frame type {t}"))),
        };
        let size = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        self.frame_left = usize::try_from(size).unwrap_or(usize::MAX);
        self.in_frame = true;
        self.fragment_len = 0;
        self.prefix.clear();
        self.tentative = false;
        if let FrameKind::Log(stream) = self.frame_kind {
            self.in_prefix = true;
            self.entry_stream = stream;
        } else {
            self.in_prefix = false;
        }
        if self.frame_left == 0 {
            self.end_frame(emit);
        }
        Ok(())
    }

    /// A frame ends its last entry; a timestamp cut short by the frame end is content. A log
    /// entry that ends here without its `\n`, short of [`PARTIAL_BYTES`], is cut short.
    fn end_frame(&mut self, emit: &mut impl FnMut(LineRef<'_>)) {
        if self.in_prefix && !self.prefix.is_empty() {
            self.prefix_failed(false, emit);
        }
        if let FrameKind::Log(stream) = self.frame_kind {
            let p = &mut self.pending[slot(stream)];
            if !self.in_prefix && p.active && self.fragment_len < PARTIAL_BYTES {
                p.cut_short = true;
            }
        }
        self.in_prefix = false;
        self.in_frame = false;
    }

    /// Bytes of log entries: a timestamp prefix, then content up to `\n`, repeated.
    fn entry_bytes(&mut self, mut data: &[u8], emit: &mut impl FnMut(LineRef<'_>)) {
        while !data.is_empty() {
            let used = if self.in_prefix {
                self.prefix_bytes(data, emit)
            } else {
                self.entry_content(data, emit)
            };
            data = &data[used..];
        }
    }

    /// Bytes of a timestamp prefix (at most up to the space that ends it); returns how many
    /// bytes of `data` it took.
    fn prefix_bytes(&mut self, data: &[u8], emit: &mut impl FnMut(LineRef<'_>)) -> usize {
        if self.prefix.is_empty() {
            if let Some(used) = self.whole_prefix(data) {
                return used;
            }
        }
        let room = MAX_TIMESTAMP_LEN - self.prefix.len().min(MAX_TIMESTAMP_LEN);
        let window = &data[..data.len().min(room + 1)];
        match memchr2(b' ', b'\n', window) {
            Some(i) if window[i] == b' ' => {
                self.prefix.extend_from_slice(&window[..i]);
                match self.timestamps.parse(&self.prefix) {
                    Some(ts) => self.begin_entry(ts),
                    None => self.prefix_failed(true, emit),
                }
                i + 1
            }
            Some(i) => {
                // A `\n` before any space: no timestamp here; the `\n` is content.
                self.prefix.extend_from_slice(&window[..i]);
                self.prefix_failed(false, emit);
                i
            }
            None => {
                self.prefix.extend_from_slice(window);
                if self.prefix.len() > MAX_TIMESTAMP_LEN {
                    self.prefix_failed(false, emit);
                }
                window.len()
            }
        }
    }

    /// The usual case: a whole timestamp and its space at the start of `data`, parsed where
    /// it lies. Returns the bytes it took, or `None` (nothing changed) for the general path.
    /// Docker's timestamps have 30 bytes unless their fraction ends in zeros; a timestamp that
    /// parses holds no space and no `\n`, so the space after it is the first of either.
    #[inline]
    fn whole_prefix(&mut self, data: &[u8]) -> Option<usize> {
        let window = &data[..data.len().min(MAX_TIMESTAMP_LEN + 1)];
        let end = match window.get(DOCKER_TIMESTAMP_LEN) {
            Some(b' ') => DOCKER_TIMESTAMP_LEN,
            _ => memchr2(b' ', b'\n', window).filter(|&i| window[i] == b' ')?,
        };
        let ts = self.timestamps.parse(&window[..end])?;
        self.begin_entry(ts);
        Some(end + 1)
    }

    /// Content bytes of the current entry, up to its `\n` at most; returns how many bytes of
    /// `data` it took.
    fn entry_content(&mut self, data: &[u8], emit: &mut impl FnMut(LineRef<'_>)) -> usize {
        let limit = if self.raw && self.fragment_len < PARTIAL_BYTES {
            PARTIAL_BYTES - self.fragment_len
        } else {
            usize::MAX
        };
        let used = self.content(self.entry_stream, data, limit, emit);
        if data[..used].last() == Some(&b'\n') {
            self.in_prefix = true;
            self.tentative = false;
            self.prefix.clear();
            self.fragment_len = 0;
        } else if self.raw && self.fragment_len == PARTIAL_BYTES {
            self.in_prefix = true;
            self.tentative = true;
            self.prefix.clear();
        }
        used
    }

    fn begin_entry(&mut self, ts: i64) {
        self.last_ts = ts;
        self.in_prefix = false;
        self.tentative = false;
        self.prefix.clear();
        self.fragment_len = 0;
        if self.raw {
            self.entry_stream = StreamKind::Stdout;
        }
    }

    /// What looked like a timestamp prefix was not one: its bytes are content. On a TTY an
    /// entry without a timestamp can only come from the engine itself (container output always
    /// gets one), so it becomes an engine error line; after a 16 KiB fragment it simply
    /// continues the line.
    fn prefix_failed(&mut self, with_space: bool, emit: &mut impl FnMut(LineRef<'_>)) {
        self.in_prefix = false;
        if self.raw && !self.tentative {
            self.entry_stream = StreamKind::EngineError;
        }
        self.tentative = false;
        let prefix = std::mem::take(&mut self.prefix);
        let stream = self.entry_stream;
        // The prefix holds no `\n`, so content takes all of it at once.
        self.content(stream, &prefix, usize::MAX, emit);
        if with_space {
            self.content(stream, b" ", usize::MAX, emit);
        }
        self.prefix = prefix;
        self.prefix.clear();
    }

    /// Adds content for `stream` up to and including the first `\n` (which completes the line)
    /// and at most `limit` bytes; returns how many bytes of `data` it took.
    fn content(
        &mut self,
        stream: StreamKind,
        data: &[u8],
        limit: usize,
        emit: &mut impl FnMut(LineRef<'_>),
    ) -> usize {
        let window = &data[..data.len().min(limit)];
        match memchr(b'\n', window) {
            Some(i) => {
                self.fragment_len += i;
                if self.pending[slot(stream)].active {
                    self.append(stream, &window[..i]);
                    self.finish_line(stream, emit);
                } else {
                    self.whole_line(stream, &window[..i], false, emit);
                }
                i + 1
            }
            None => {
                self.append(stream, window);
                self.fragment_len += window.len();
                window.len()
            }
        }
    }

    fn append(&mut self, stream: StreamKind, bytes: &[u8]) {
        let max = self.max_line_bytes;
        let tty = self.tty;
        let p = &mut self.pending[slot(stream)];
        if !p.active {
            p.active = true;
            p.ts = self.last_ts;
        }
        p.end_ts = self.last_ts;
        if bytes.is_empty() {
            return;
        }
        if p.cr_held {
            p.cr_held = false;
            push_capped(p, b"\r", max);
        }
        match bytes.split_last() {
            Some((b'\r', body)) if tty => {
                push_capped(p, body, max);
                p.cr_held = true;
            }
            _ => push_capped(p, bytes, max),
        }
    }

    /// A line that is whole in `bytes` (none of it pending): handed out where it lies in the
    /// input, as [`Decoder::append`] then [`Decoder::finish_line`] would make it; `eq_free`
    /// says `bytes` holds no `=` (false: not known).
    fn whole_line(
        &self,
        stream: StreamKind,
        bytes: &[u8],
        eq_free: bool,
        emit: &mut impl FnMut(LineRef<'_>),
    ) {
        let line = match bytes.split_last() {
            Some((b'\r', body)) if self.tty => body,
            _ => bytes,
        };
        let take = line.len().min(self.max_line_bytes);
        emit(LineRef {
            stream,
            ts_ns: self.last_ts,
            end_ts_ns: self.last_ts,
            bytes: &line[..take],
            truncated: take < line.len(),
            eq_free,
        });
    }

    /// Hands out the line assembled for `stream` from its buffer, which is kept for the next
    /// line.
    fn finish_line(&mut self, stream: StreamKind, emit: &mut impl FnMut(LineRef<'_>)) {
        let last_ts = self.last_ts;
        let p = &mut self.pending[slot(stream)];
        emit(LineRef {
            stream,
            ts_ns: if p.active { p.ts } else { last_ts },
            end_ts_ns: if p.active { p.end_ts } else { last_ts },
            bytes: &p.bytes,
            truncated: p.truncated,
            eq_free: false,
        });
        p.reset();
    }
}

impl Pending {
    /// Forgets the line, keeping the buffer for the next one.
    fn reset(&mut self) {
        self.bytes.clear();
        self.active = false;
        self.truncated = false;
        self.cr_held = false;
        self.cut_short = false;
    }
}

fn push_capped(p: &mut Pending, bytes: &[u8], max: usize) {
    let room = max.saturating_sub(p.bytes.len());
    let take = room.min(bytes.len());
    p.bytes.extend_from_slice(&bytes[..take]);
    if take < bytes.len() {
        p.truncated = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LogLine;

    const SMALL: &[u8] = include_bytes!("../../tests/data/logs-small.http");
    const SMALL_TTY: &[u8] = include_bytes!("../../tests/data/logs-smalltty.http");
    const PLAIN: &[u8] = include_bytes!("../../tests/data/logs-plain.http");
    const TTY: &[u8] = include_bytes!("../../tests/data/logs-tty.http");
    const TTY_16K: &[u8] = include_bytes!("../../tests/data/logs-tty-16k.http");
    const PODMAN_SPLIT: &[u8] = include_bytes!("../../tests/data/podman-split.http");
    const PODMAN_TTY: &[u8] = include_bytes!("../../tests/data/podman-tty.http");
    const PODMAN_TTY_COMPAT: &[u8] = include_bytes!("../../tests/data/podman-tty-compat.http");

    const OUT: StreamKind = StreamKind::Stdout;
    const ERR: StreamKind = StreamKind::Stderr;
    const SYS: StreamKind = StreamKind::EngineError;

    /// The de-chunked body of a recorded response.
    fn body(resp: &[u8]) -> Vec<u8> {
        let (out, done) = crate::engine::chunked::recorded_body(resp);
        assert!(done);
        out
    }

    fn decode(tty: bool, max: usize, pieces: &[&[u8]]) -> Vec<LogLine> {
        let mut d = Decoder::new(tty, max);
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p, &mut |l| out.push(LogLine::from(l))).unwrap();
        }
        d.finish(&mut |l| out.push(LogLine::from(l)));
        out
    }

    fn text(lines: &[LogLine]) -> Vec<(StreamKind, String)> {
        lines
            .iter()
            .map(|l| (l.stream, String::from_utf8_lossy(&l.bytes).into_owned()))
            .collect()
    }

    fn ts(s: &str) -> i64 {
        parse_rfc3339_ns(s.as_bytes()).unwrap()
    }

    /// A multiplexed frame.
    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn decodes_the_recorded_small_stream() {
        let lines = decode(false, 1 << 20, &[&body(SMALL)]);
        let want: Vec<(StreamKind, String)> = [
            (ERR, "two"),
            (OUT, "one"),
            (OUT, "three"),
            (OUT, "1"),
            (OUT, "2"),
            (OUT, "3"),
            (OUT, "4"),
            (OUT, "5"),
            (OUT, "tail"),
        ]
        .iter()
        .map(|(s, t)| (*s, t.to_string()))
        .collect();
        assert_eq!(text(&lines), want);
        assert_eq!(lines[0].ts_ns, ts("2026-11-25T02:10:05.620164341Z"));
        assert_eq!(lines[8].ts_ns, ts("2026-11-25T02:10:05.656902940Z"));
        assert!(lines.iter().all(|l| !l.truncated));
    }

    #[test]
    fn decodes_the_recorded_small_tty_stream() {
        let lines = decode(true, 1 << 20, &[&body(SMALL_TTY)]);
        let got: Vec<String> = text(&lines)
            .into_iter()
            .map(|(s, t)| {
                assert_eq!(s, OUT);
                t
            })
            .collect();
        assert_eq!(
            got,
            ["one", "two", "three", "1", "2", "3", "4", "5", "tail"]
        );
        assert_eq!(lines[8].ts_ns, ts("2026-11-25T02:10:06.081714388Z"));
    }

    fn check_big(lines: &[LogLine], tty: bool) {
        // Stdout and stderr may arrive out of order relative to each other, so each stream is
        // checked on its own.
        let of = |stream| -> Vec<(String, i64)> {
            lines
                .iter()
                .filter(|l| l.stream == stream)
                .map(|l| (String::from_utf8_lossy(&l.bytes).into_owned(), l.ts_ns))
                .collect()
        };
        assert_eq!(lines.len(), 8);
        let out = of(OUT);
        let err = if tty { out.clone() } else { of(ERR) };
        let out_text: Vec<&str> = out.iter().map(|l| l.0.as_str()).collect();
        let a = "a".repeat(33000);
        let b = "b".repeat(20000);
        let mut want = vec!["hello", "bad \u{fffd}\u{fffd} bytes", "  spaced  ", "", &a];
        if tty {
            want.insert(1, "to-stderr");
            want.push(&b);
        } else {
            let err_text: Vec<&str> = err.iter().map(|l| l.0.as_str()).collect();
            assert_eq!(err_text, ["to-stderr", b.as_str()]);
        }
        want.push("no newline at end");
        assert_eq!(out_text, want);
        // A rejoined line keeps the timestamp of its first fragment (all fragments share it).
        let a_ts = out.iter().find(|l| l.0 == a).unwrap().1;
        let b_ts = err.iter().find(|l| l.0 == b).unwrap().1;
        assert!(a_ts > out[0].1);
        assert!(b_ts >= a_ts);
    }

    #[test]
    fn rejoins_long_lines_in_the_recorded_streams() {
        check_big(&decode(false, 1 << 20, &[&body(PLAIN)]), false);
        check_big(&decode(true, 1 << 20, &[&body(TTY)]), true);
    }

    #[test]
    fn every_split_offset_of_the_small_streams() {
        for (resp, tty) in [(SMALL, false), (SMALL_TTY, true)] {
            let b = body(resp);
            let whole = decode(tty, 1 << 20, &[&b]);
            for cut in 0..=b.len() {
                assert_eq!(
                    decode(tty, 1 << 20, &[&b[..cut], &b[cut..]]),
                    whole,
                    "cut {cut}"
                );
                for cut2 in cut..=b.len() {
                    let got = decode(tty, 1 << 20, &[&b[..cut], &b[cut..cut2], &b[cut2..]]);
                    assert_eq!(got, whole, "cuts {cut} {cut2}");
                }
            }
        }
    }

    /// Every split offset except those deep inside the runs of `a` and `b` of the long lines,
    /// where the decoder's state is the same from one byte to the next; of those, every 97th.
    /// (Splitting a 53 KB stream at all of its offsets takes minutes in a debug build.)
    #[test]
    fn every_split_offset_of_the_long_line_streams() {
        for (resp, tty) in [(PLAIN, false), (TTY, true), (TTY_16K, true)] {
            let b = body(resp);
            let whole = decode(tty, 1 << 20, &[&b]);
            let in_run = |i: usize| {
                let lo = i.saturating_sub(48);
                let hi = (i + 48).min(b.len());
                let run = &b[lo..hi];
                run.iter().all(|&c| c == run[0]) && matches!(run[0], b'a' | b'b' | b'c')
            };
            let mut tried = 0;
            for cut in 0..=b.len() {
                if in_run(cut) && cut % 97 != 0 {
                    continue;
                }
                tried += 1;
                assert_eq!(
                    decode(tty, 1 << 20, &[&b[..cut], &b[cut..]]),
                    whole,
                    "cut {cut}"
                );
            }
            assert!(tried > 1000);
        }
    }

    #[test]
    fn byte_at_a_time() {
        for (resp, tty) in [(PLAIN, false), (TTY, true)] {
            let b = body(resp);
            let pieces: Vec<&[u8]> = b.chunks(1).collect();
            check_big(&decode(tty, 1 << 20, &pieces), tty);
        }
    }

    /// On a TTY the `\r` of `\r\n` counts towards the engine's 16 KiB, so lines of 16383,
    /// 16384 and 16385 bytes are cut in three different places; all must come back whole.
    #[test]
    fn tty_lines_around_16k() {
        let b = body(TTY_16K);
        for lines in [
            decode(true, 1 << 20, &[&b]),
            decode(true, 1 << 20, &b.chunks(1).collect::<Vec<_>>()),
        ] {
            let got: Vec<(usize, bool)> = lines
                .iter()
                .map(|l| (l.bytes.len(), l.bytes.iter().all(|&c| c == b'c')))
                .collect();
            assert_eq!(
                got,
                [(16383, true), (16384, true), (16385, true), (3, false)]
            );
            assert_eq!(lines[3].bytes, b"end");
            assert!(lines.iter().all(|l| l.stream == OUT && !l.truncated));
        }
    }

    #[test]
    fn truncates_but_keeps_consuming_to_the_newline() {
        for (resp, tty) in [(PLAIN, false), (TTY, true)] {
            let lines = decode(tty, 1000, &[&body(resp)]);
            assert_eq!(lines.len(), 8);
            let long: Vec<&LogLine> = lines.iter().filter(|l| l.bytes.len() == 1000).collect();
            assert_eq!(long.len(), 2);
            assert_eq!(long[0].bytes, vec![b'a'; 1000]);
            assert_eq!(long[1].bytes, vec![b'b'; 1000]);
            assert!(long.iter().all(|l| l.truncated));
            assert_eq!(lines[7].bytes, b"no newline at end");
            assert!(!lines[7].truncated);
            assert_eq!(lines.iter().filter(|l| l.truncated).count(), 2);
        }
        let lines = decode(false, 3, &[&frame(1, b"2026-11-25T02:10:05Z abc\n")]);
        assert_eq!(
            (lines[0].bytes.as_slice(), lines[0].truncated),
            (&b"abc"[..], false)
        );
        let lines = decode(false, 0, &[&frame(1, b"2026-11-25T02:10:05Z abc\n")]);
        assert!(lines[0].bytes.is_empty() && lines[0].truncated);
        // On a TTY the `\r` of `\r\n` does not count against the cap.
        let lines = decode(true, 3, &[b"2026-11-25T02:10:05Z abc\r\n"]);
        assert_eq!(
            (lines[0].bytes.as_slice(), lines[0].truncated),
            (&b"abc"[..], false)
        );
    }

    #[test]
    fn several_entries_in_one_frame_and_interleaved_partials() {
        let t1 = "2026-11-25T02:10:05.1Z";
        let t2 = "2026-11-25T02:10:06.2Z";
        let mut s = frame(1, format!("{t1} one\n{t1} two\n{t1} par").as_bytes());
        s.extend(frame(2, format!("{t2} err-start").as_bytes()));
        s.extend(frame(0, b"stdin is ignored\n"));
        s.extend(frame(1, format!("{t2} tial\n{t2} three\n").as_bytes()));
        s.extend(frame(2, format!("{t2} -end\n").as_bytes()));
        let lines = decode(false, 100, &[&s]);
        assert_eq!(
            text(&lines),
            vec![
                (OUT, "one".into()),
                (OUT, "two".into()),
                (OUT, "partial".into()),
                (OUT, "three".into()),
                (ERR, "err-start-end".into()),
            ]
        );
        assert_eq!(lines[2].ts_ns, ts(t1));
        assert_eq!(lines[3].ts_ns, ts(t2));
        assert_eq!(lines[4].ts_ns, ts(t2));
    }

    #[test]
    fn engine_errors_in_band() {
        let mut s = frame(1, b"2026-11-25T02:10:05Z one\n");
        s.extend(frame(3, b"Error grabbing logs: log file is gone\n"));
        let lines = decode(false, 100, &[&s]);
        assert_eq!(lines[1].stream, SYS);
        assert_eq!(lines[1].bytes, b"Error grabbing logs: log file is gone");
        assert_eq!(lines[1].ts_ns, lines[0].ts_ns);
        // On a TTY the engine writes the same message raw, without a timestamp.
        let lines = decode(
            true,
            100,
            &[b"2026-11-25T02:10:05Z one\r\nError grabbing logs: x\n"],
        );
        assert_eq!(
            text(&lines),
            vec![(OUT, "one".into()), (SYS, "Error grabbing logs: x".into())]
        );
    }

    #[test]
    fn tty_fragment_rule() {
        let t = "2026-11-25T02:10:05.5Z";
        // Exactly 16 KiB then something that is not a timestamp: one line.
        let mut s = format!("{t} ").into_bytes();
        s.extend(vec![b'x'; PARTIAL_BYTES]);
        s.extend_from_slice(b"not a time stamp\r\n");
        let lines = decode(true, 1 << 20, &[&s]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].bytes.len(), PARTIAL_BYTES + 16);
        assert!(lines[0].bytes.ends_with(b"xnot a time stamp"));
        // Exactly 16 KiB, then an entry holding only the line end.
        let mut s = format!("{t} ").into_bytes();
        s.extend(vec![b'x'; PARTIAL_BYTES]);
        s.extend_from_slice(format!("{t} \r\n{t} next\r\n").as_bytes());
        let lines = decode(true, 1 << 20, &[&s]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].bytes, vec![b'x'; PARTIAL_BYTES]);
        assert_eq!(lines[1].bytes, b"next");
    }

    fn decode_framed(tty: bool, pieces: &[&[u8]]) -> Vec<LogLine> {
        let mut d = Decoder::framed(tty, 1 << 20);
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p, &mut |l| out.push(LogLine::from(l))).unwrap();
        }
        d.finish(&mut |l| out.push(LogLine::from(l)));
        out
    }

    /// `echo hello; echo err >&2; printf "P line "; sleep 1; echo 3; echo done`, as Podman's
    /// own endpoint sends it, with and without a TTY: the line written in two parts is one
    /// line, stamped at its first part and counted at its last, with no timestamp in its text.
    #[test]
    fn podman_split_lines_with_and_without_a_tty() {
        let first = ts("2026-11-29T21:00:17Z");
        let next = first + 1_000_000_000;
        let want = vec![
            (OUT, "hello".to_string(), first, first),
            (ERR, "err".into(), first, first),
            (OUT, "P line 3".into(), first, next),
            (OUT, "done".into(), next, next),
        ];
        let of = |lines: Vec<LogLine>| -> Vec<(StreamKind, String, i64, i64)> {
            lines
                .into_iter()
                .map(|l| {
                    let text = String::from_utf8(l.bytes).unwrap();
                    (l.stream, text, l.ts_ns, l.end_ts_ns)
                })
                .collect()
        };
        let b = body(PODMAN_SPLIT);
        for cut in 0..=b.len() {
            assert_eq!(of(decode_framed(false, &[&b[..cut], &b[cut..]])), want);
        }
        // A TTY has one output (stdout) and `\r\n` line ends.
        let first = ts("2026-11-29T21:00:20Z");
        let next = first + 1_000_000_000;
        let want = vec![
            (OUT, "hello".to_string(), first, first),
            (OUT, "err".into(), first, first),
            (OUT, "P line 3".into(), first, next),
            (OUT, "done".into(), next, next),
        ];
        let b = body(PODMAN_TTY);
        for cut in 0..=b.len() {
            assert_eq!(of(decode_framed(true, &[&b[..cut], &b[cut..]])), want);
        }
    }

    /// Why Podman is read on its own endpoint: the compat one writes a TTY's entries raw, and
    /// a line's second entry brings its timestamp into the text.
    #[test]
    fn podman_compat_tty_stream_cannot_be_split_into_entries() {
        let lines = decode(true, 1 << 20, &[&body(PODMAN_TTY_COMPAT)]);
        assert_eq!(
            String::from_utf8_lossy(&lines[2].bytes),
            "P line 2026-11-29T21:00:21Z 3"
        );
    }

    /// A line cut short waits for its rest while the stream is quiet, is dropped when the
    /// stream breaks (the resumed stream reads it whole), and is a line at the body's end.
    #[test]
    fn lines_cut_short_wait_for_their_rest() {
        let b = body(PODMAN_SPLIT);
        let at = b.windows(6).position(|w| w == b"P line").unwrap() + 7;
        let mut d = Decoder::framed(false, 100);
        let mut out = Vec::new();
        d.feed(&b[..at], &mut |l| out.push(LogLine::from(l)))
            .unwrap();
        assert_eq!(text(&out), vec![(OUT, "hello".into())]);
        d.flush_partial(&mut |l| out.push(LogLine::from(l)));
        assert_eq!(out.len(), 1, "not flushed while quiet");
        let mut broken = Vec::new();
        let mut copy = Decoder::framed(false, 100);
        copy.feed(&b[..at], &mut |_| {}).unwrap();
        copy.cut(&mut |l| broken.push(LogLine::from(l)));
        assert!(broken.is_empty(), "dropped when the stream breaks");
        d.finish(&mut |l| out.push(LogLine::from(l)));
        assert_eq!(text(&out[1..]), vec![(OUT, "P line ".into())]);
        // A partial that is not cut short (a Docker 16 KiB fragment) is flushed when quiet,
        // and kept when the stream breaks, as before.
        let mut payload = b"2026-11-25T02:10:05Z ".to_vec();
        payload.extend(vec![b'x'; PARTIAL_BYTES]);
        let s = frame(1, &payload);
        let mut d = Decoder::new(false, 1 << 20);
        let mut out = Vec::new();
        d.feed(&s, &mut |l| out.push(LogLine::from(l))).unwrap();
        d.cut(&mut |l| out.push(LogLine::from(l)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes.len(), PARTIAL_BYTES);
    }

    #[test]
    fn flush_partial_emits_what_is_pending() {
        let mut d = Decoder::new(false, 100);
        let mut out = Vec::new();
        let f = frame(1, b"2026-11-25T02:10:05Z half");
        d.feed(&f[..f.len() - 2], &mut |l| out.push(LogLine::from(l)))
            .unwrap();
        assert!(out.is_empty());
        d.flush_partial(&mut |l| out.push(LogLine::from(l)));
        assert_eq!(text(&out), vec![(OUT, "ha".into())]);
        d.feed(&f[f.len() - 2..], &mut |l| out.push(LogLine::from(l)))
            .unwrap();
        d.feed(&frame(1, b"2026-11-25T02:10:06Z !\n"), &mut |l| {
            out.push(LogLine::from(l))
        })
        .unwrap();
        assert_eq!(out[1].bytes, b"lf!");
        assert_eq!(out[1].ts_ns, ts("2026-11-25T02:10:05Z"));
        d.flush_partial(&mut |l| out.push(LogLine::from(l)));
        assert_eq!(out.len(), 2);
        // A TTY `\r` waiting for its `\n` is not part of the line.
        let mut d = Decoder::new(true, 100);
        d.feed(b"2026-11-25T02:10:05Z x\r", &mut |l| {
            out.push(LogLine::from(l))
        })
        .unwrap();
        d.flush_partial(&mut |l| out.push(LogLine::from(l)));
        assert_eq!(out[2].bytes, b"x");
        // A `\r` inside a line is kept.
        let lines = decode(true, 100, &[b"2026-11-25T02:10:05Z a\r", b"b\r\n"]);
        assert_eq!(lines[0].bytes, b"a\rb");
    }

    #[test]
    fn rejects_bad_frame_headers() {
        let mut d = Decoder::new(false, 100);
        assert!(d
            .feed(b"2026-11-25T02:10:05Z hello\n", &mut |_| {})
            .is_err());
        let mut d = Decoder::new(false, 100);
        assert!(d
            .feed(&[4, 0, 0, 0, 0, 0, 0, 1, b'x'], &mut |_| {})
            .is_err());
        let mut d = Decoder::new(false, 100);
        assert!(d
            .feed(&[1, 0, 1, 0, 0, 0, 0, 1, b'x'], &mut |_| {})
            .is_err());
        // A truncated header at the end is dropped quietly.
        assert!(decode(false, 100, &[&[1, 0, 0]]).is_empty());
        // Empty frames are fine.
        assert!(decode(false, 100, &[&frame(1, b""), &frame(2, b"")]).is_empty());
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let alphabet = b"\x00\x01\x02\x03\x00\x00\n\r 2026-11-25T02:10:05.5Z+:x";
        for round in 0..3000 {
            let mut buf = Vec::new();
            for _ in 0..(seed % 200) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let tty = round % 2 == 0;
            let mut d = Decoder::new(tty, (seed % 50) as usize);
            for piece in buf.chunks(1 + (seed % 7) as usize) {
                if d.feed(piece, &mut |_| {}).is_err() {
                    break;
                }
            }
            d.finish(&mut |_| {});
        }
    }
}
