//! `GET /api/v1/logs/stream`: Server-Sent Events of the ring's messages, with the filters of
//! `/api/v1/logs`, an optional backlog, `id:` lines for a gapless resume with `Last-Event-ID`,
//! and a heartbeat comment every 15 s.
//!
//! Each stream runs on the handler thread of its connection (`api-N`, see `server.rs`); the
//! connection counts against `API_MAX_CONNECTIONS` and ends with the stream. This module writes
//! the status line, the headers and the chunk framing itself and flushes after every batch of
//! events.
//!
//! This module must never make the pipeline wait: a client that falls behind fills its own
//! bounded queue, the ring drops it, and the stream ends with an `overflow` event. It must
//! never hold more than [`MAX_STREAMS`] streams open at once.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver};

use super::http::Request;

use super::query::{Filter, Pairs};
use crate::backend::local::ring::Ring;
use crate::message::LogMessage;
use crate::stats::write_metrics;

/// Streams open at once; one more gets 503.
pub const MAX_STREAMS: usize = 16;
/// Messages a stream may lag behind before the ring cuts it off.
const QUEUE: usize = 8192;
/// A comment is sent this often when nothing else is, so proxies and clients see a live link.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events written in one chunk at most, so one write stays small on a Pi.
const BATCH: usize = 256;
/// How long the browser waits before it reconnects on its own.
const RETRY_MS: u32 = 2000;

/// The streams currently open, and counters for `/metrics`.
#[derive(Default)]
pub struct Streams {
    active: AtomicUsize,
    next: AtomicU64,
    overflows: AtomicU64,
}

impl Streams {
    /// Streams open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Streams ever opened.
    pub fn opened(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Streams cut off because their client fell behind.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Appends the streams' metrics in the Prometheus text format.
    pub fn metrics(&self, out: &mut String) {
        let rows = [
            (
                "container_logd_api_streams",
                "gauge",
                "Live log streams open.",
                self.active() as u64,
            ),
            (
                "container_logd_api_streams_opened_total",
                "counter",
                "Live log streams ever opened.",
                self.opened(),
            ),
            (
                "container_logd_api_stream_overflows_total",
                "counter",
                "Live log streams cut off because their client fell behind.",
                self.overflows(),
            ),
        ];
        write_metrics(out, "", &rows);
    }

    /// Takes a place, or `None` when [`MAX_STREAMS`] are open.
    fn acquire(self: &Arc<Self>) -> Option<Slot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            streams: self.clone(),
            n,
        })
    }
}

/// A place among the open streams, given back when the stream's thread ends (or never starts).
struct Slot {
    streams: Arc<Streams>,
    n: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.streams.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a stream could not be opened; the caller answers with the status and the text.
#[derive(Debug)]
pub enum Error {
    /// A query parameter is unusable (400).
    BadParam(String),
    /// [`MAX_STREAMS`] are open already (503).
    Busy,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadParam(m) => f.write_str(m),
            Error::Busy => write!(
                f,
                "too many live streams ({MAX_STREAMS} open); close one or use /api/v1/logs"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::BadParam(_) => 400,
            Error::Busy => 503,
        }
    }
}

/// What to send before the live messages.
#[derive(Debug, PartialEq, Eq)]
enum Backlog {
    /// Nothing: live only.
    None,
    /// The newest `limit` matching messages (since `since`, when given).
    Newest(usize),
    /// Every matching message after the one with this id (a reconnect).
    After(String),
}

fn backlog_of(pairs: &Pairs, filter: &Filter, last_event_id: Option<&str>) -> Backlog {
    if let Some(id) = last_event_id.filter(|s| !s.is_empty()) {
        return Backlog::After(id.to_string());
    }
    let given = |name: &str| pairs.iter().any(|(k, _)| k == name);
    if given("limit") || given("since") {
        Backlog::Newest(filter.limit)
    } else {
        Backlog::None
    }
}

/// Serves a stream for `req` on this thread (the handler thread of its connection) until the
/// client goes, the ring cuts it off or the agent stops. An error is returned before anything
/// is written, so the caller can answer it.
pub fn serve(
    streams: &Arc<Streams>,
    ring: &Arc<Ring>,
    req: &Request,
    pairs: &Pairs,
    conn: &mut TcpStream,
) -> Result<(), Error> {
    let filter =
        Filter::parse(pairs, &["access_token"]).map_err(|e| Error::BadParam(e.to_string()))?;
    let backlog = backlog_of(pairs, &filter, req.header("Last-Event-ID").map(str::trim));
    let slot = streams.acquire().ok_or(Error::Busy)?;
    let Subscription { backlog, rx, note } = subscribe(ring, &filter, &backlog);
    let mut out = BufWriter::with_capacity(8192, conn);
    let mut s = Sse {
        out: &mut out,
        chunked: req.http11,
        buf: String::with_capacity(8192),
    };
    let end = s.run(&filter, backlog, &rx, note, req.is_head());
    if end == End::Overflow {
        slot.streams.overflows.fetch_add(1, Ordering::Relaxed);
    }
    if end != End::WriteFailed {
        let _ = s.finish();
    }
    log::debug!("stream {} ended: {end:?}", slot.n);
    Ok(())
}

/// What a stream starts from.
struct Subscription {
    /// The messages to send before the live ones.
    backlog: Vec<Arc<LogMessage>>,
    /// The live messages.
    rx: Receiver<Arc<LogMessage>>,
    /// A comment to send first.
    note: Option<&'static str>,
}

/// Subscribes to the ring and takes the backlog asked for.
///
/// The backlog and the subscription come from one lock, so no message falls between them.
fn subscribe(ring: &Ring, filter: &Filter, backlog: &Backlog) -> Subscription {
    match backlog {
        Backlog::None => {
            let (_, rx) = ring.subscribe(0, QUEUE, |_| false);
            Subscription {
                backlog: Vec::new(),
                rx,
                note: None,
            }
        }
        Backlog::Newest(limit) => {
            let (backlog, rx) = ring.subscribe(*limit, QUEUE, |m| filter.matches(m));
            Subscription {
                backlog,
                rx,
                note: None,
            }
        }
        Backlog::After(id) => subscribe_after(ring, filter, id),
    }
}

/// [`subscribe`] for a reconnect: what matches after the message with `id`.
fn subscribe_after(ring: &Ring, filter: &Filter, id: &str) -> Subscription {
    // The ring is scanned newest first: keep what matches until the last message the client
    // saw, nothing older than it.
    let seen = std::cell::Cell::new(false);
    let (mut backlog, rx) = ring.subscribe(usize::MAX, QUEUE, |m| {
        if seen.get() {
            return false;
        }
        if m.id() == id {
            seen.set(true);
            return false;
        }
        filter.matches(m)
    });
    if seen.get() {
        return Subscription {
            backlog,
            rx,
            note: None,
        };
    }
    // A reconnect whose last id has left the ring gets what the ring still has: a gap is told,
    // never hidden, so the comment says so.
    if backlog.len() > filter.limit {
        backlog.drain(..backlog.len() - filter.limit);
    }
    Subscription {
        backlog,
        rx,
        note: Some("last event id no longer in memory; sending all that is"),
    }
}

/// Why a stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client went away (a write failed or timed out).
    WriteFailed,
    /// The ring cut the client off for falling behind, or the agent is stopping.
    Overflow,
    /// A HEAD request got its headers.
    HeadOnly,
}

/// One open event stream: the connection's writer and the framing.
struct Sse<'a> {
    out: &'a mut dyn Write,
    chunked: bool,
    buf: String,
}

impl Sse<'_> {
    fn run(
        &mut self,
        filter: &Filter,
        backlog: Vec<Arc<LogMessage>>,
        rx: &Receiver<Arc<LogMessage>>,
        note: Option<&str>,
        head_only: bool,
    ) -> End {
        if self.write_head().is_err() {
            return End::WriteFailed;
        }
        if head_only {
            return End::HeadOnly;
        }
        if self.send_backlog(&backlog, note).is_err() {
            return End::WriteFailed;
        }
        self.follow(filter, rx)
    }

    /// The status line and the headers, flushed with the first events.
    fn write_head(&mut self) -> std::io::Result<()> {
        let mut head = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
             Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n",
        );
        if self.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
        head.push_str("\r\n");
        self.out.write_all(head.as_bytes())
    }

    /// The retry interval, the note if any, and the backlog, [`BATCH`] events a chunk.
    fn send_backlog(
        &mut self,
        backlog: &[Arc<LogMessage>],
        note: Option<&str>,
    ) -> std::io::Result<()> {
        let _ = write!(self.buf, "retry: {RETRY_MS}\n: connected\n\n");
        if let Some(n) = note {
            let _ = write!(self.buf, ": {n}\n\n");
        }
        for chunk in backlog.chunks(BATCH) {
            for m in chunk {
                event(&mut self.buf, m);
            }
            self.send()?;
        }
        self.send()
    }

    /// Sends live messages as they come, and a heartbeat when none do, until the client goes
    /// away or the ring cuts it off.
    fn follow(&mut self, filter: &Filter, rx: &Receiver<Arc<LogMessage>>) -> End {
        // The last message taken from the queue, shown or filtered out: an overflow names it, so
        // a resume with Last-Event-ID neither repeats nor skips anything.
        let mut last: Option<Arc<LogMessage>> = None;
        loop {
            select! {
                recv(rx) -> msg => match msg {
                    Ok(m) => {
                        last = Some(self.take_waiting(filter, m, rx));
                        if !self.buf.is_empty() && self.send().is_err() {
                            return End::WriteFailed;
                        }
                    }
                    Err(_) => return self.overflow(last.as_deref()),
                },
                default(HEARTBEAT) => {
                    self.buf.push_str(": heartbeat\n\n");
                    if self.send().is_err() {
                        return End::WriteFailed;
                    }
                }
            }
        }
    }

    /// Buffers the events of `first` and of what else is waiting (up to [`BATCH`] more), so
    /// they go out in one chunk. Returns the last message taken.
    fn take_waiting(
        &mut self,
        filter: &Filter,
        first: Arc<LogMessage>,
        rx: &Receiver<Arc<LogMessage>>,
    ) -> Arc<LogMessage> {
        let mut last = first;
        if filter.matches(&last) {
            event(&mut self.buf, &last);
        }
        for m in rx.try_iter().take(BATCH) {
            if filter.matches(&m) {
                event(&mut self.buf, &m);
            }
            last = m;
        }
        last
    }

    /// The ring cut this client off: the `overflow` event, after the id of the last message
    /// taken, so the client can resume from there.
    fn overflow(&mut self, last: Option<&LogMessage>) -> End {
        if let Some(m) = last {
            push_id(&mut self.buf, m.id());
        }
        self.buf.push_str(
            "event: overflow\ndata: {\"error\":\"this stream fell behind and \
             was cut off; reconnect with Last-Event-ID to resume\"}\n\n",
        );
        if self.send().is_err() {
            return End::WriteFailed;
        }
        End::Overflow
    }

    /// Writes the buffered events as one chunk and flushes.
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.chunked {
            write!(self.out, "{:x}\r\n", self.buf.len())?;
            self.out.write_all(self.buf.as_bytes())?;
            self.out.write_all(b"\r\n")?;
        } else {
            self.out.write_all(self.buf.as_bytes())?;
        }
        self.buf.clear();
        self.out.flush()
    }

    /// Ends the body properly, so the client sees a clean end rather than a broken connection.
    fn finish(&mut self) -> std::io::Result<()> {
        if self.chunked {
            self.out.write_all(b"0\r\n\r\n")?;
        }
        self.out.flush()
    }
}

/// Appends one event: the message id, then its JSON (one line: the JSON escapes newlines).
fn event(buf: &mut String, m: &LogMessage) {
    push_id(buf, m.id());
    buf.push_str("data: ");
    m.write_json(buf);
    buf.push_str("\n\n");
}

fn push_id(buf: &mut String, id: &str) {
    buf.push_str("id: ");
    // An id is ours and has no line breaks; a stray one would end the field early.
    buf.extend(id.chars().filter(|c| *c != '\n' && *c != '\r'));
    buf.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Pairs {
        super::super::query::split_url(q).expect("url").1
    }

    #[test]
    fn backlog_only_when_asked() {
        let p = pairs("/s?level=warn");
        let f = Filter::parse(&p, &[]).expect("filter");
        assert_eq!(backlog_of(&p, &f, None), Backlog::None);
        let p = pairs("/s?limit=5");
        let f = Filter::parse(&p, &[]).expect("filter");
        assert_eq!(backlog_of(&p, &f, None), Backlog::Newest(5));
        let p = pairs("/s?since=0");
        let f = Filter::parse(&p, &[]).expect("filter");
        assert_eq!(backlog_of(&p, &f, None), Backlog::Newest(1000));
        assert_eq!(
            backlog_of(&p, &f, Some("abc")),
            Backlog::After("abc".into())
        );
        assert_eq!(backlog_of(&p, &f, Some("")), Backlog::Newest(1000));
    }

    #[test]
    fn the_cap_holds_and_frees() {
        let s = Arc::new(Streams::default());
        let slots: Vec<Slot> = (0..MAX_STREAMS).filter_map(|_| s.acquire()).collect();
        assert_eq!(slots.len(), MAX_STREAMS);
        assert!(s.acquire().is_none());
        drop(slots);
        assert_eq!(s.active(), 0);
        assert!(s.acquire().is_some());
    }
}
