//! The log stream decoder as it was before its fast path (one scan per byte for the
//! timestamp's end and the line's end, every line copied through its pending buffer). Kept
//! verbatim (tests excepted) to check `engine::frames` against; it parses timestamps with the
//! reference parser.

use super::timestamp::{parse_rfc3339_ns, MAX_TIMESTAMP_LEN};
use crate::engine::{Error, LogLine, StreamKind};

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
            entry_stream: StreamKind::Stdout,
            fragment_len: 0,
            last_ts: 0,
            pending: Default::default(),
        }
    }

    /// Decodes the next bytes of the body, calling `emit` for every complete line.
    pub fn feed(&mut self, mut input: &[u8], emit: &mut impl FnMut(LogLine)) -> Result<(), Error> {
        if self.raw {
            self.entry_bytes(input, emit);
            return Ok(());
        }
        while !input.is_empty() {
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

    /// Emits the lines still waiting for their `\n` (used when the stream goes quiet), except
    /// those cut short (see the module documentation), whose rest the engine sends. Bytes that
    /// arrive later for the emitted lines start new lines.
    pub fn flush_partial(&mut self, emit: &mut impl FnMut(LogLine)) {
        for stream in STREAMS {
            let p = &self.pending[slot(stream)];
            if p.active && !p.cut_short {
                self.finish_line(stream, emit);
            }
        }
    }

    /// The engine ended the body: everything still held, even half a timestamp, becomes a line.
    pub fn finish(&mut self, emit: &mut impl FnMut(LogLine)) {
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
    pub fn cut(&mut self, emit: &mut impl FnMut(LogLine)) {
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

    fn start_frame(&mut self, emit: &mut impl FnMut(LogLine)) -> Result<(), Error> {
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
    fn end_frame(&mut self, emit: &mut impl FnMut(LogLine)) {
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
    fn entry_bytes(&mut self, mut data: &[u8], emit: &mut impl FnMut(LogLine)) {
        while !data.is_empty() {
            if self.in_prefix {
                let room = MAX_TIMESTAMP_LEN - self.prefix.len().min(MAX_TIMESTAMP_LEN);
                let window = &data[..data.len().min(room + 1)];
                match window.iter().position(|&b| b == b' ' || b == b'\n') {
                    Some(i) if window[i] == b' ' => {
                        self.prefix.extend_from_slice(&window[..i]);
                        data = &data[i + 1..];
                        match parse_rfc3339_ns(&self.prefix) {
                            Ok(ts) => self.begin_entry(ts),
                            Err(_) => self.prefix_failed(true, emit),
                        }
                    }
                    Some(i) => {
                        // A `\n` before any space: no timestamp here; the `\n` is content.
                        self.prefix.extend_from_slice(&window[..i]);
                        data = &data[i..];
                        self.prefix_failed(false, emit);
                    }
                    None => {
                        self.prefix.extend_from_slice(window);
                        data = &data[window.len()..];
                        if self.prefix.len() > MAX_TIMESTAMP_LEN {
                            self.prefix_failed(false, emit);
                        }
                    }
                }
                continue;
            }
            let limit = if self.raw && self.fragment_len < PARTIAL_BYTES {
                PARTIAL_BYTES - self.fragment_len
            } else {
                usize::MAX
            };
            let used = self.content(self.entry_stream, data, limit, emit);
            let newline = data[..used].last() == Some(&b'\n');
            data = &data[used..];
            if newline {
                self.in_prefix = true;
                self.tentative = false;
                self.prefix.clear();
                self.fragment_len = 0;
            } else if self.raw && self.fragment_len == PARTIAL_BYTES {
                self.in_prefix = true;
                self.tentative = true;
                self.prefix.clear();
            }
        }
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
    fn prefix_failed(&mut self, with_space: bool, emit: &mut impl FnMut(LogLine)) {
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
        emit: &mut impl FnMut(LogLine),
    ) -> usize {
        let window = &data[..data.len().min(limit)];
        match window.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.append(stream, &window[..i]);
                self.fragment_len += i;
                self.finish_line(stream, emit);
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

    fn finish_line(&mut self, stream: StreamKind, emit: &mut impl FnMut(LogLine)) {
        let last_ts = self.last_ts;
        let p = &mut self.pending[slot(stream)];
        let line = LogLine {
            stream,
            ts_ns: if p.active { p.ts } else { last_ts },
            end_ts_ns: if p.active { p.end_ts } else { last_ts },
            // A copy of exactly the line's length; the buffer is kept for the next line.
            bytes: p.bytes.clone(),
            truncated: p.truncated,
        };
        p.reset();
        emit(line);
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
