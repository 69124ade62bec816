//! The engine side: a Docker Engine API client over `DOCKER_HOST` (`unix://` or `tcp://`),
//! speaking HTTP/1.1 that we write and parse ourselves.
//!
//! The wire parsers (`http`, `chunked`, `frames`, `timestamp`, `events`, `containers`) are pure:
//! bytes in, values out, no sockets, tested on recorded engine answers in `tests/data/`.
//! `transport` owns the socket; [`Engine`] and the streams here glue the two together.
//! Nothing here knows about backends, levels or labels-to-topics: it hands out raw lines and
//! events.
//!
//! Podman is told apart by its `/_ping` answer (`Libpod-Api-Version`). Its logs are read from
//! its own endpoint, `/libpod/containers/{id}/logs`, which takes the same query but frames a
//! TTY's output too (the compat endpoint writes a TTY's entries raw, each with its timestamp,
//! so a line written in two parts comes with the second timestamp inside its text), and its
//! `since` (exclusive, unlike Docker's) is sent as RFC 3339 one nanosecond early, which makes
//! it inclusive. Everything else is the Docker API.

pub mod chunked;
pub mod containers;
pub mod events;
pub mod frames;
pub mod http;
pub mod pace;
pub mod timestamp;
pub(crate) mod transport;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chunked::BodyDecoder;
use events::EventSplitter;
use frames::Decoder;
use transport::{is_timeout, Conn, Reader};

pub use transport::{Addr, Closer};

/// Everything that can go wrong talking to the engine.
#[derive(Debug)]
pub enum Error {
    /// The socket could not be reached or broke.
    Io(std::io::Error),
    /// The engine answered with a non-2xx status; `message` is the engine's own text.
    Status { status: u16, message: String },
    /// The bytes on the wire were not what the protocol allows.
    Protocol(String),
    /// `DOCKER_HOST` is not a `unix://` or `tcp://` address we can use.
    InvalidHost(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "engine connection: {e}"),
            Error::Status { status, message } => write!(f, "engine answered {status}: {message}"),
            Error::Protocol(m) => write!(f, "engine protocol: {m}"),
            Error::InvalidHost(m) => write!(f, "bad DOCKER_HOST {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

impl Error {
    /// True for a 404 (the container does not exist) or a 409 for a container that is dead
    /// or being removed: either way there is nothing left to read.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Status {
                status: 404 | 409,
                ..
            }
        )
    }
}

/// A running container as listed or inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full 64-hex id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// `Config.Tty`: the log stream is raw, not multiplexed.
    pub tty: bool,
    pub labels: BTreeMap<String, String>,
    /// `State.Running`; the engine keeps it true while a restart policy waits to start the
    /// container again (then `restarting` is true as well).
    pub running: bool,
    /// `State.Restarting`: between two runs of a restart policy. A log stream opened now ends
    /// at once; the next run's `start` event is what to wait for.
    pub restarting: bool,
    /// `State.StartedAt` in ns since the epoch (0 when unknown).
    pub started_at_ns: i64,
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
    /// Frame type 3: an error the engine reports in band.
    EngineError,
}

/// One log line as the engine gave it, partial frames already rejoined, owning its bytes: what
/// the reference decoder (`src/reference/`) makes and the tests keep; its fields are those of
/// [`LineRef`]. The agent itself only ever sees [`LineRef`]s.
#[cfg(any(test, feature = "internals"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: StreamKind,
    pub ts_ns: i64,
    pub end_ts_ns: i64,
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

#[cfg(any(test, feature = "internals"))]
impl LogLine {
    /// The line as the decoder hands it out.
    pub fn borrowed(&self) -> LineRef<'_> {
        LineRef {
            stream: self.stream,
            ts_ns: self.ts_ns,
            end_ts_ns: self.end_ts_ns,
            bytes: &self.bytes,
            truncated: self.truncated,
            eq_free: false,
        }
    }
}

/// One log line as the decoder hands it out, partial frames already rejoined, its bytes
/// borrowed for the call that takes it: from the socket's read buffer when the line lies whole
/// in one read (the usual case), else from the decoder's own buffer, where a line cut between
/// reads is assembled. No line costs an allocation of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRef<'a> {
    pub stream: StreamKind,
    /// The engine's timestamp of the line (of its first entry), ns since the epoch.
    pub ts_ns: i64,
    /// The timestamp of the entry that ended the line, where the line is counted
    /// (`monitor::lines`). The same as `ts_ns` unless the engine stamped the line's entries
    /// apart (Podman; see `frames`).
    pub end_ts_ns: i64,
    /// The line's bytes without the timestamp prefix and without the trailing `\n`/`\r\n`;
    /// at most `max_line_bytes` of them.
    pub bytes: &'a [u8],
    /// Bytes beyond `max_line_bytes` were dropped.
    pub truncated: bool,
    /// `bytes` holds no `=`: the decoder looked for one in the same search that made sure the
    /// line has no `\n` inside, which spares level detection its own search for logfmt's
    /// `level=`. False when it did not look.
    pub eq_free: bool,
}

#[cfg(any(test, feature = "internals"))]
impl From<LineRef<'_>> for LogLine {
    fn from(l: LineRef<'_>) -> LogLine {
        LogLine {
            stream: l.stream,
            ts_ns: l.ts_ns,
            end_ts_ns: l.end_ts_ns,
            bytes: l.bytes.to_vec(),
            truncated: l.truncated,
        }
    }
}

/// Where a log stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Everything the engine has.
    All,
    /// Lines with a timestamp >= this many ns since the epoch (inclusive, as the engine does).
    At(i64),
}

/// A container event from `/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `Action`, e.g. `start`, `die`, `oom`, `restart`, `health_status: healthy`.
    pub action: String,
    /// `Actor.ID`.
    pub id: String,
    /// `Actor.Attributes` (name, labels, `exitCode`, …).
    pub attributes: BTreeMap<String, String>,
    /// `timeNano`.
    pub time_nano: i64,
}

/// The newest API version we speak; older engines get theirs.
pub const OUR_API_VERSION: &str = "1.47";
/// Engines that do not say which version they speak are older than the header (API 1.25).
const FALLBACK_API_VERSION: &str = "1.24";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a one-shot request, and the head of a stream, may take per read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// One-shot bodies (lists, inspects) bigger than this are refused.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Error bodies are read up to this size only, since only their message is wanted.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A client for one engine. Cheap to clone; every request opens its own connection, so clones
/// can be used from different threads.
#[derive(Debug, Clone)]
pub struct Engine {
    addr: Addr,
    /// Set by the first successful [`Engine::negotiate`]; until then [`OUR_API_VERSION`].
    version: OnceLock<String>,
    /// Podman's own API version (its `Libpod-Api-Version`), when the engine is Podman; set by
    /// the first successful [`Engine::negotiate`].
    libpod: OnceLock<String>,
}

impl Engine {
    /// Parses `DOCKER_HOST` with [`Addr::parse`]. No I/O. A `Config`'s `docker_host` has
    /// already passed that parser, so for it this does not fail. Until [`Engine::negotiate`] is
    /// called, requests use [`OUR_API_VERSION`].
    pub fn new(docker_host: &str) -> Result<Engine, Error> {
        let addr = Addr::parse(docker_host)
            .map_err(|why| Error::InvalidHost(format!("{docker_host:?}: {why}")))?;
        Ok(Engine {
            addr,
            version: OnceLock::new(),
            libpod: OnceLock::new(),
        })
    }

    /// `GET /_ping`; uses the lower of our version and the engine's `Api-Version` for all later
    /// requests (the first version chosen stays), and notes whether the engine is Podman.
    /// Returns the version chosen.
    pub fn negotiate(&self) -> Result<String, Error> {
        let (head, _) = self.get("/_ping")?;
        if let Some(v) = head.libpod_version() {
            let _ = self.libpod.set(v.to_string());
        }
        let theirs = head.api_version().unwrap_or(FALLBACK_API_VERSION);
        let chosen = match (parse_version(theirs), parse_version(OUR_API_VERSION)) {
            (Some(t), Some(o)) if t < o => theirs.trim().to_string(),
            (Some(_), _) => OUR_API_VERSION.to_string(),
            (None, _) => {
                return Err(Error::Protocol(format!(
                    "engine sent a bad Api-Version {theirs:?}"
                )))
            }
        };
        Ok(self.version.get_or_init(|| chosen).clone())
    }

    /// `GET /containers/json`: the ids of the running containers.
    pub fn list_running(&self) -> Result<Vec<String>, Error> {
        let (_, body) = self.get(&self.path("/containers/json"))?;
        containers::parse_list(&body)
    }

    /// `GET /containers/{id}/json`; `id` may also be a name.
    pub fn inspect(&self, id: &str) -> Result<ContainerInfo, Error> {
        let path = self.path(&format!("/containers/{}/json", encode_id(id)));
        let (_, body) = self.get(&path)?;
        containers::parse_inspect(&body)
    }

    /// Follows a container's logs with timestamps from `since`. `tty` must match the
    /// container's `Config.Tty`, since it decides how the body is framed.
    pub fn logs(
        &self,
        id: &str,
        tty: bool,
        since: Since,
        max_line_bytes: usize,
    ) -> Result<LogStream, Error> {
        let (path, frames) = self.logs_request(id, tty, since, max_line_bytes);
        let (reader, body) = self.open(&path)?;
        Ok(LogStream::new(reader, body, frames))
    }

    /// The path of a logs request and the decoder for its body: the engine decides both.
    fn logs_request(
        &self,
        id: &str,
        tty: bool,
        since: Since,
        max_line_bytes: usize,
    ) -> (String, Box<Decoder>) {
        let query = "follow=1&stdout=1&stderr=1&timestamps=1";
        let id = encode_id(id);
        let (mut path, frames) = match self.libpod.get() {
            None => (
                self.path(&format!("/containers/{id}/logs?{query}")),
                Box::new(Decoder::new(tty, max_line_bytes)),
            ),
            Some(v) => (
                format!("/v{v}/libpod/containers/{id}/logs?{query}"),
                Box::new(Decoder::framed(tty, max_line_bytes)),
            ),
        };
        if let Since::At(ns) = since {
            path.push_str("&since=");
            match self.libpod.get() {
                None => path.push_str(&timestamp::format_since(ns)),
                // Podman keeps lines after `since` only; a ns before makes that inclusive.
                Some(_) => path.push_str(&timestamp::format_rfc3339_ns(ns.saturating_sub(1))),
            }
        }
        (path, frames)
    }

    /// Follows `/events` for containers.
    pub fn events(&self) -> Result<EventStream, Error> {
        // `{"type":["container"]}`, URL-encoded.
        let path = self.path("/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D");
        let (reader, body) = self.open(&path)?;
        Ok(EventStream::new(reader, body))
    }

    fn path(&self, rest: &str) -> String {
        let version = self.version.get().map_or(OUR_API_VERSION, String::as_str);
        format!("/v{version}{rest}")
    }

    fn get(&self, path: &str) -> Result<(http::Head, Vec<u8>), Error> {
        get_on(Conn::connect(&self.addr, CONNECT_TIMEOUT)?, path)
    }

    fn open(&self, path: &str) -> Result<(Reader, BodyDecoder), Error> {
        open_on(Conn::connect(&self.addr, CONNECT_TIMEOUT)?, path)
    }
}

/// Sends `GET path` and reads the response head.
fn send(conn: Conn, path: &str, one_shot: bool) -> Result<(Reader, http::Head), Error> {
    let mut request = Vec::with_capacity(256);
    http::write_request(&mut request, path, one_shot);
    Reader::send(conn, &request, REQUEST_TIMEOUT)
}

/// A one-shot request: the head and the whole body, or the engine's error.
fn get_on(conn: Conn, path: &str) -> Result<(http::Head, Vec<u8>), Error> {
    let (mut reader, head) = send(conn, path, true)?;
    let limit = if head.is_success() {
        MAX_BODY_BYTES
    } else {
        MAX_ERROR_BODY_BYTES
    };
    let body = read_body(&mut reader, head.framing, limit)?;
    if !head.is_success() {
        return Err(http::status_error(head.status, &body));
    }
    Ok((head, body))
}

/// Opens a followed stream: checks the status, then leaves the socket blocking.
fn open_on(conn: Conn, path: &str) -> Result<(Reader, BodyDecoder), Error> {
    let (mut reader, head) = send(conn, path, false)?;
    if !head.is_success() {
        let body = read_body(&mut reader, head.framing, MAX_ERROR_BODY_BYTES)?;
        return Err(http::status_error(head.status, &body));
    }
    reader.set_timeout(None)?;
    Ok((reader, BodyDecoder::new(head.framing)))
}

/// Reads a whole body of at most `limit` bytes (an error body may be cut at the limit).
fn read_body(
    reader: &mut Reader,
    framing: chunked::Framing,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let mut decoder = BodyDecoder::new(framing);
    let mut body = Vec::new();
    while !decoder.is_done() {
        let bytes = reader.read()?;
        if bytes.is_empty() {
            decoder.on_eof()?;
            break;
        }
        let mut over = false;
        decoder.decode(bytes, &mut |b| {
            body.extend_from_slice(b);
            over |= body.len() > limit;
            Ok(())
        })?;
        if over {
            if limit == MAX_ERROR_BODY_BYTES {
                body.truncate(limit);
                break;
            }
            return Err(Error::Protocol(format!("response body over {limit} bytes")));
        }
    }
    Ok(body)
}

/// `1.41` → (1, 41), so versions compare as numbers.
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Percent-encodes an id or name for a path segment; a leading `/` of a name is dropped.
fn encode_id(id: &str) -> String {
    let id = id.trim_start_matches('/');
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What [`LogStream::next`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// It gave one line or more.
    Lines,
    /// Nothing arrived within the idle time and no partial line was waiting.
    Idle,
    /// The engine ended the stream (the container stopped, or the stream was closed).
    End,
}

/// A followed log stream.
pub struct LogStream {
    reader: Reader,
    body: BodyDecoder,
    /// On the heap: moved through the frames that open a stream, it made every reader's
    /// stack a page deeper (monitor/reader.rs says why that counts).
    frames: Box<Decoder>,
    ended: bool,
    /// The wait before the next read ([`pace`]).
    wait: Duration,
}

impl LogStream {
    fn new(reader: Reader, body: BodyDecoder, frames: Box<Decoder>) -> LogStream {
        LogStream {
            reader,
            body,
            frames,
            ended: false,
            wait: Duration::ZERO,
        }
    }

    /// Blocks for the next read that completes a line, and gives `each` every line that read
    /// completed, in order, borrowed from the read buffer (the lines are not kept). With
    /// `idle = Some(d)`: if no complete line arrives within about `d`, a pending partial line
    /// (no newline yet) is given as a line, else [`Next::Idle`] is returned. Lines completed
    /// before an error are given before it is returned. A busy stream waits a moment before
    /// its next read ([`pace`]).
    pub fn next(
        &mut self,
        idle: Option<Duration>,
        each: &mut impl FnMut(LineRef<'_>),
    ) -> Result<Next, Error> {
        let started = Instant::now();
        let given = std::cell::Cell::new(false);
        let mut emit = |l: LineRef<'_>| {
            given.set(true);
            each(l);
        };
        let or = |none: Next| if given.get() { Next::Lines } else { none };
        let frames = &mut self.frames;
        while !self.ended {
            self.reader.set_timeout(idle)?;
            let bytes = match read_paced(&mut self.reader, &mut self.wait) {
                Ok(b) => b,
                Err(e) if is_timeout(&e) && idle.is_some() => {
                    frames.flush_partial(&mut emit);
                    return Ok(or(Next::Idle));
                }
                Err(e) => return Err(e.into()),
            };
            if bytes.is_empty() {
                // A stream cut short (engine restart, closer) ends like a finished one, but
                // for the lines the engine cut short: the caller re-opens it from the last
                // line emitted, and those come again whole.
                match self.body.on_eof() {
                    Ok(()) => frames.finish(&mut emit),
                    Err(e) => {
                        log::debug!("log stream: {e}");
                        frames.cut(&mut emit);
                    }
                }
                self.ended = true;
                break;
            }
            self.body
                .decode(bytes, &mut |b| frames.feed(b, &mut emit))?;
            if self.body.is_done() {
                frames.finish(&mut emit);
                self.ended = true;
            } else if !given.get() && idle.is_some_and(|d| started.elapsed() >= d) {
                // Bytes trickled in without completing a line; the idle time still counts.
                frames.flush_partial(&mut emit);
                return Ok(or(Next::Idle));
            }
            if given.get() {
                return Ok(Next::Lines);
            }
        }
        Ok(or(Next::End))
    }

    /// A handle another thread can use to end this stream at once.
    pub fn closer(&self) -> Closer {
        self.reader.closer()
    }
}

/// One read of a log stream, after the wait the read before asked for; sets the wait the next
/// one needs ([`pace`]).
fn read_paced<'r>(reader: &'r mut Reader, wait: &mut Duration) -> std::io::Result<&'r [u8]> {
    if !wait.is_zero() {
        std::thread::sleep(std::mem::take(wait));
    }
    let room = reader.room();
    let read_at = Instant::now();
    let bytes = reader.read()?;
    *wait = pace::wait_after(pace::Read {
        took: read_at.elapsed(),
        // The bytes that came with the head: read on at once.
        filled: room.is_none_or(|r| bytes.len() == r),
    });
    Ok(bytes)
}

/// A followed `/events` stream of container events.
pub struct EventStream {
    reader: Reader,
    body: BodyDecoder,
    splitter: EventSplitter,
    ready: VecDeque<Event>,
    ended: bool,
}

impl EventStream {
    fn new(reader: Reader, body: BodyDecoder) -> EventStream {
        EventStream {
            reader,
            body,
            splitter: EventSplitter::new(),
            ready: VecDeque::new(),
            ended: false,
        }
    }

    /// Blocks for the next container event; `None` when the stream ended.
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(Some(ev));
            }
            if self.ended {
                return Ok(None);
            }
            let ready = &mut self.ready;
            let splitter = &mut self.splitter;
            let bytes = self.reader.read()?;
            if bytes.is_empty() {
                if let Err(e) = self.body.on_eof() {
                    log::debug!("event stream: {e}");
                }
                splitter.finish(&mut |e| ready.push_back(e))?;
                self.ended = true;
                continue;
            }
            self.body.decode(bytes, &mut |b| {
                splitter.feed(b, &mut |e| ready.push_back(e))
            })?;
            if self.body.is_done() {
                splitter.finish(&mut |e| ready.push_back(e))?;
                self.ended = true;
            }
        }
    }

    /// A handle another thread can use to end this stream at once.
    pub fn closer(&self) -> Closer {
        self.reader.closer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_versions_as_numbers() {
        assert_eq!(parse_version("1.41"), Some((1, 41)));
        assert!(parse_version("1.9") < parse_version("1.41"));
        assert_eq!(parse_version("x"), None);
        assert_eq!(parse_version("1."), None);
    }

    #[test]
    fn builds_paths() {
        let e = Engine::new("unix:///tmp/docker.sock").unwrap();
        assert_eq!(e.version.get(), None);
        assert_eq!(e.path("/containers/json"), "/v1.47/containers/json");
        assert_eq!(encode_id("/my-app_1.web"), "my-app_1.web");
        assert_eq!(encode_id("a b/c?d"), "a%20b%2Fc%3Fd");
        assert!(matches!(Engine::new("ssh://x"), Err(Error::InvalidHost(_))));
    }

    const SMALL: &[u8] = include_bytes!("../../tests/data/logs-small.http");
    const PING: &[u8] = include_bytes!("../../tests/data/ping.http");
    const PODMAN_PING: &[u8] = include_bytes!("../../tests/data/podman-ping.http");
    const NOT_FOUND: &[u8] = include_bytes!("../../tests/data/logs-404.http");
    const EVENTS: &[u8] = include_bytes!("../../tests/data/events.http");
    const INSPECT: &[u8] = include_bytes!("../../tests/data/inspect-running.http");

    /// A socket pair whose far end plays the engine: it reads the request, then writes each
    /// piece after its pause and closes. No engine is involved.
    fn fake_engine(pieces: Vec<(u64, Vec<u8>)>) -> (Conn, std::thread::JoinHandle<Vec<u8>>) {
        use std::io::{Read, Write};
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut request = Vec::new();
            let mut b = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = theirs.read(&mut b).unwrap();
                assert!(n > 0);
                request.extend_from_slice(&b[..n]);
            }
            for (pause_ms, bytes) in pieces {
                std::thread::sleep(Duration::from_millis(pause_ms));
                // The client may have gone already; that is what some tests check.
                if theirs.write_all(&bytes).is_err() {
                    break;
                }
            }
            request
        });
        (Conn::Unix(ours), t)
    }

    fn log_stream(pieces: Vec<(u64, Vec<u8>)>, tty: bool) -> LogStream {
        let (conn, _) = fake_engine(pieces);
        let (reader, body) = open_on(conn, "/v1.41/containers/x/logs").unwrap();
        LogStream::new(reader, body, Box::new(Decoder::new(tty, 1000)))
    }

    /// One call of [`LogStream::next`]: what it returned and the lines it gave.
    fn next_lines(s: &mut LogStream, idle: Option<Duration>) -> (Next, Vec<String>) {
        let mut lines = Vec::new();
        let next = s
            .next(idle, &mut |l| {
                lines.push(String::from_utf8(l.bytes.to_vec()).unwrap())
            })
            .unwrap();
        (next, lines)
    }

    #[test]
    fn follows_a_recorded_stream_to_its_end() {
        let cut = SMALL.len() / 2;
        let mut s = log_stream(
            vec![(0, SMALL[..cut].to_vec()), (20, SMALL[cut..].to_vec())],
            false,
        );
        let mut lines = Vec::new();
        loop {
            match next_lines(&mut s, None) {
                (Next::Lines, got) => {
                    assert!(!got.is_empty());
                    lines.extend(got);
                }
                (Next::End, got) => {
                    assert!(got.is_empty());
                    break;
                }
                (Next::Idle, _) => panic!("no idle without a timeout"),
            }
        }
        assert_eq!(
            lines,
            ["two", "one", "three", "1", "2", "3", "4", "5", "tail"]
        );
        assert_eq!(next_lines(&mut s, None), (Next::End, vec![]));
    }

    #[test]
    fn idle_flushes_a_partial_line_then_reports_idle() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let chunk = |s: &[u8]| {
            let mut c = format!("{:x}\r\n", s.len()).into_bytes();
            c.extend_from_slice(s);
            c.extend_from_slice(b"\r\n");
            c
        };
        let mut s = log_stream(
            vec![
                (0, head),
                (
                    0,
                    chunk(b"2026-11-25T02:10:05Z whole\r\n2026-11-25T02:10:06Z hal"),
                ),
                (1000, chunk(b"f\r\n")),
                (0, b"0\r\n\r\n".to_vec()),
            ],
            true,
        );
        let idle = Some(Duration::from_millis(60));
        let lines = |want: &[&str]| (Next::Lines, want.iter().map(|l| l.to_string()).collect());
        assert_eq!(next_lines(&mut s, idle), lines(&["whole"]));
        assert_eq!(next_lines(&mut s, idle), lines(&["hal"]));
        assert_eq!(next_lines(&mut s, idle), (Next::Idle, vec![]));
        // The rest of the line arrives later as a line of its own; without a timeout we wait.
        assert_eq!(next_lines(&mut s, None), lines(&["f"]));
        assert_eq!(next_lines(&mut s, idle), (Next::End, vec![]));
    }

    #[test]
    fn closer_ends_a_blocked_stream() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut s = log_stream(vec![(0, head), (5000, b"0\r\n\r\n".to_vec())], false);
        let closer = s.closer();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            closer.close();
        });
        let started = Instant::now();
        let r = s.next(None, &mut |l| panic!("{l:?}"));
        assert!(matches!(r, Ok(Next::End) | Err(Error::Io(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        t.join().unwrap();
    }

    #[test]
    fn stream_errors_carry_the_engines_message() {
        let (conn, t) = fake_engine(vec![(0, NOT_FOUND.to_vec())]);
        let e = open_on(conn, "/v1.41/containers/no-such-ctr/logs?follow=1")
            .err()
            .unwrap();
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "engine answered 404: No such container: no-such-ctr"
        );
        let request = String::from_utf8(t.join().unwrap()).unwrap();
        assert!(request.starts_with(
            "GET /v1.41/containers/no-such-ctr/logs?follow=1 HTTP/1.1\r\nHost: docker\r\n"
        ));
    }

    #[test]
    fn one_shot_requests_read_the_whole_body() {
        let (conn, t) = fake_engine(vec![
            (0, INSPECT[..100].to_vec()),
            (10, INSPECT[100..].to_vec()),
        ]);
        let (head, body) = get_on(conn, "/v1.41/containers/eng-cap-lbl/json").unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(
            containers::parse_inspect(&body).unwrap().name,
            "eng-cap-lbl"
        );
        assert!(String::from_utf8(t.join().unwrap())
            .unwrap()
            .contains("Connection: close\r\n"));
        // A body cut short is an error, not a short answer.
        let (conn, _) = fake_engine(vec![(0, INSPECT[..INSPECT.len() - 10].to_vec())]);
        assert!(get_on(conn, "/x").is_err());
        // So is a peer that closes before the head is complete.
        let (conn, _) = fake_engine(vec![(0, b"HTTP/1.1 200 OK\r\n".to_vec())]);
        assert!(get_on(conn, "/x").is_err());
    }

    #[test]
    fn response_heads_larger_than_the_read_buffer() {
        // A proxy may add long headers: up to MAX_HEAD_BYTES the buffer grows to hold them.
        let pad = format!("X-Pad: {}\r\n", "p".repeat(3 * transport::BUF_BYTES));
        let response =
            format!("HTTP/1.1 200 OK\r\n{pad}Content-Length: 5\r\nConnection: close\r\n\r\nhello");
        let (conn, _) = fake_engine(vec![(0, response.into_bytes())]);
        let (head, body) = get_on(conn, "/x").unwrap();
        assert_eq!((head.status, body.as_slice()), (200, &b"hello"[..]));
        let pad = format!("X-Pad: {}\r\n", "p".repeat(http::MAX_HEAD_BYTES));
        let response = format!("HTTP/1.1 200 OK\r\n{pad}\r\n");
        let (conn, _) = fake_engine(vec![(0, response.into_bytes())]);
        assert!(get_on(conn, "/x").is_err(), "beyond the limit: an error");
    }

    #[test]
    fn follows_recorded_events() {
        let (conn, _) = fake_engine(vec![(0, EVENTS.to_vec())]);
        let (reader, body) = open_on(conn, "/v1.41/events").unwrap();
        let mut s = EventStream::new(reader, body);
        let mut actions = Vec::new();
        while let Some(ev) = s.next_event().unwrap() {
            actions.push(ev.action);
        }
        assert!(actions.starts_with(&["create".to_string(), "attach".into(), "start".into()]));
        assert_eq!(s.next_event().unwrap(), None);
    }

    /// Podman says who it is in `/_ping`; its logs come from its own endpoint, framed, with an
    /// inclusive `since`. Docker's requests are as they always were.
    #[test]
    fn podman_is_told_apart_by_its_ping() {
        let (conn, _) = fake_engine(vec![(0, PODMAN_PING.to_vec())]);
        let (head, _) = get_on(conn, "/_ping").unwrap();
        assert_eq!(
            (head.api_version(), head.libpod_version()),
            (Some("1.41"), Some("4.3.1"))
        );
        let (conn, _) = fake_engine(vec![(0, PING.to_vec())]);
        let (head, _) = get_on(conn, "/_ping").unwrap();
        assert_eq!(head.libpod_version(), None);

        let t = timestamp::parse_rfc3339_ns(b"2026-11-29T21:00:18Z").unwrap();
        let mut e = Engine::new("unix:///tmp/x.sock").unwrap();
        e.version = OnceLock::from("1.41".to_string());
        let (path, _) = e.logs_request("abc", true, Since::At(t), 100);
        assert_eq!(
            path,
            "/v1.41/containers/abc/logs?follow=1&stdout=1&stderr=1&timestamps=1&since=1795986018.000000000"
        );
        e.libpod = OnceLock::from("4.3.1".to_string());
        let (path, mut frames) = e.logs_request("abc", true, Since::At(t), 100);
        assert_eq!(
            path,
            "/v4.3.1/libpod/containers/abc/logs?follow=1&stdout=1&stderr=1&timestamps=1&since=2026-11-29T21:00:17.999999999Z"
        );
        let (path, _) = e.logs_request("abc", false, Since::All, 100);
        assert_eq!(
            path,
            "/v4.3.1/libpod/containers/abc/logs?follow=1&stdout=1&stderr=1&timestamps=1"
        );
        // A TTY container's stream is framed there.
        let mut out = Vec::new();
        let b = b"\x01\0\0\0\0\0\0\x1b2026-11-29T21:00:18Z done\r\n";
        frames.feed(b, &mut |l| out.push(l.bytes.to_vec())).unwrap();
        assert_eq!(out, [b"done"]);
    }

    #[test]
    fn closer_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Closer>();
        check::<Engine>();
        fn send<T: Send>() {}
        send::<LogStream>();
        send::<EventStream>();
    }
}
