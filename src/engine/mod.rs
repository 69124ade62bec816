//! The engine side: a Docker Engine API client over `DOCKER_HOST` (`unix://` or `tcp://`),
//! speaking HTTP/1.1 that we write and parse ourselves.
//!
//! The wire parsers (`http`, `chunked`, `frames`, `timestamp`, `events`) are pure: bytes in,
//! values out, no sockets. [`Engine`] and the streams glue them to a socket. Nothing here knows
//! about backends, levels or labels-to-topics: it hands out raw lines and events.

pub mod chunked;
pub mod events;
pub mod frames;
pub mod http;
pub mod timestamp;

use std::collections::BTreeMap;
use std::fmt;

/// Everything that can go wrong talking to the engine.
#[derive(Debug)]
pub enum Error {
    /// The socket could not be reached or broke.
    Io(std::io::Error),
    /// The engine answered with a non-2xx status; `message` is the engine's own text.
    Status { status: u16, message: String },
    /// The bytes on the wire were not what the protocol allows.
    Protocol(String),
    /// Not implemented yet.
    Unsupported(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "engine connection: {e}"),
            Error::Status { status, message } => write!(f, "engine answered {status}: {message}"),
            Error::Protocol(m) => write!(f, "engine protocol: {m}"),
            Error::Unsupported(m) => write!(f, "not supported: {m}"),
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
    /// True for a 404: the container (or path) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Status { status: 404, .. })
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
    /// `State.Running`.
    pub running: bool,
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

/// One log line as the engine gave it, partial frames already rejoined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: StreamKind,
    /// The engine's timestamp of the line, ns since the epoch.
    pub ts_ns: i64,
    /// The line's bytes without the timestamp prefix and without the trailing `\n`/`\r\n`;
    /// at most `max_line_bytes` of them.
    pub bytes: Vec<u8>,
    /// Bytes beyond `max_line_bytes` were dropped.
    pub truncated: bool,
}

/// Where a log stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Everything the engine has.
    All,
    /// Only lines written from now on (`tail=0`).
    Now,
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
