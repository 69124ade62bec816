//! The API's sockets: the listening socket, the accept loop, the cap on connections, the pool of
//! handler threads and each connection's keep-alive loop with its timeouts. What a request is
//! answered with is the caller's [`Handler`]; the bytes of a head are `http.rs`'s.
//!
//! This module owns the accept loop (tiny_http's dies on the first `accept()` error, see
//! ARCHITECTURE.md) and must never let a connection hold a thread without a deadline: a request
//! head has `API_HEADER_TIMEOUT_S` to arrive, a keep-alive connection `API_IDLE_TIMEOUT_S`
//! between requests, a write [`WRITE_TIMEOUT`]. It must never hold more than
//! `API_MAX_CONNECTIONS` connections or threads: one more connection is answered 503 and closed
//! by the accept thread itself.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::http::{self, Request};
use crate::message::push_json_str;
use crate::stats::write_metrics;

/// A client that takes no bytes for this long is dropped, so a stuck reader cannot hold a
/// thread.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait after a failed `accept()`; doubled up to [`MAX_BACKOFF`] while it fails.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two `accept()` attempts while descriptors are short: the listener
/// answers again at most this long after they are back.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The accept loop's warning about failed accepts is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// A handler thread with no connection for this long ends; the pool grows again on demand.
const WORKER_IDLE: Duration = Duration::from_secs(30);
/// Handler threads format answers and live streams; 256 KiB is what the `api` thread had.
const STACK: usize = 256 * 1024;

/// The limits of `API_MAX_CONNECTIONS`, `API_HEADER_TIMEOUT_S` and `API_IDLE_TIMEOUT_S`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Answers one request on `conn`; returns whether the connection may serve another.
pub type Handler = Box<dyn Fn(&Request, &mut TcpStream) -> bool + Send + Sync>;

/// What the server did, for `/api/v1/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    open: AtomicUsize,
    threads: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    accept_errors: AtomicU64,
    header_timeouts: AtomicU64,
    idle_closed: AtomicU64,
}

impl Counters {
    /// The health document's `api` object.
    pub fn health(&self, max: usize) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connections": self.open.load(Ordering::Relaxed),
            "maxConnections": max,
            "threads": self.threads.load(Ordering::Relaxed),
            "accepted": get(&self.accepted),
            "refused": get(&self.refused),
            "acceptErrors": get(&self.accept_errors),
            "headerTimeouts": get(&self.header_timeouts),
            "idleClosed": get(&self.idle_closed),
        })
    }

    /// Appends the server's metrics in the Prometheus text format.
    pub fn metrics(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows = [
            (
                "container_logd_api_connections",
                "gauge",
                "API connections open.",
                self.open.load(Ordering::Relaxed) as u64,
            ),
            (
                "container_logd_api_threads",
                "gauge",
                "API handler threads.",
                self.threads.load(Ordering::Relaxed) as u64,
            ),
            (
                "container_logd_api_accepted_total",
                "counter",
                "API connections accepted.",
                get(&self.accepted),
            ),
            (
                "container_logd_api_refused_total",
                "counter",
                "API connections answered 503 and closed: API_MAX_CONNECTIONS were open.",
                get(&self.refused),
            ),
            (
                "container_logd_api_accept_errors_total",
                "counter",
                "Failed accept() calls of the API listener (e.g. out of file descriptors).",
                get(&self.accept_errors),
            ),
            (
                "container_logd_api_header_timeouts_total",
                "counter",
                "API connections closed without a complete request head in API_HEADER_TIMEOUT_S.",
                get(&self.header_timeouts),
            ),
            (
                "container_logd_api_idle_closed_total",
                "counter",
                "Keep-alive API connections closed after API_IDLE_TIMEOUT_S without a request.",
                get(&self.idle_closed),
            ),
        ];
        write_metrics(out, "", &rows);
    }

    /// Takes a place among the open connections, or `None` when `max` are open.
    fn enter(self: &Arc<Self>, max: usize) -> Option<Ticket> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Ticket(self.clone()))
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A place among the open connections, given back when the connection is dropped.
struct Ticket(Arc<Counters>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted connection: the socket and its place.
struct Conn {
    stream: TcpStream,
    _ticket: Ticket,
}

/// Connections waiting for a handler thread, and the threads.
#[derive(Default)]
struct Pool {
    queue: VecDeque<Conn>,
    /// Threads waiting for a connection.
    idle: usize,
    threads: usize,
}

struct Inner {
    limits: Limits,
    counters: Arc<Counters>,
    handler: Handler,
    stopping: AtomicBool,
    /// Never sent on; dropped on stop so the accept loop's back-off wakes at once.
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    pool: Mutex<Pool>,
    wake: Condvar,
}

/// The running server: the `api` accept thread and the `api-N` handler threads.
pub struct Server {
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(
        listener: TcpListener,
        limits: Limits,
        counters: Arc<Counters>,
        handler: Handler,
    ) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let inner = Arc::new(Inner {
            limits,
            counters,
            handler,
            stopping: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            pool: Mutex::new(Pool::default()),
            wake: Condvar::new(),
        });
        let i = inner.clone();
        let accept = std::thread::Builder::new()
            .name("api".into())
            .stack_size(128 * 1024)
            .spawn(move || i.accept_loop(&listener))?;
        Ok(Server {
            inner,
            accept: Some(accept),
            addr,
        })
    }

    /// Stops accepting and tells the handler threads to end after their current request. A
    /// live stream ends when its client goes or the ring stops; they are not waited for.
    pub fn stop(&mut self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner
            .stop_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.inner.wake.notify_all();
        // A blocked accept() wakes only for a connection: make one. Without it (descriptors
        // short at this very moment) the thread is left to the process's exit.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(t) = self.accept.take() {
            if woken {
                let _ = t.join();
            }
        }
    }
}

impl Inner {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts until stopped. A failed `accept()` (EMFILE, ENFILE, ENOBUFS, ECONNABORTED…)
    /// never ends the loop: it is counted and retried after a back-off that doubles up to
    /// [`MAX_BACKOFF`], so the listener answers again soon after descriptors are back. While
    /// descriptors are short, each freed one lets a connection in and the next accept fails
    /// again: the warning is logged at most every [`WARN_EVERY`].
    fn accept_loop(self: &Arc<Self>, listener: &TcpListener) {
        let mut backoff = MIN_BACKOFF;
        let mut warned: Option<Instant> = None;
        while !self.stopping() {
            match listener.accept() {
                Ok((stream, _)) => {
                    backoff = MIN_BACKOFF;
                    if !self.stopping() {
                        self.admit(stream);
                    }
                }
                Err(e) => {
                    bump(&self.counters.accept_errors);
                    if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        let n = self.counters.accept_errors.load(Ordering::Relaxed);
                        log::warn!(
                            "API cannot accept a connection: {e}; retrying ({n} failed so far)"
                        );
                        warned = Some(Instant::now());
                    }
                    let _ = self.stop_rx.recv_timeout(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Hands the connection to a handler thread, or answers 503 when the cap is reached.
    fn admit(self: &Arc<Self>, stream: TcpStream) {
        bump(&self.counters.accepted);
        let max = self.limits.max_connections;
        match self.counters.enter(max) {
            Some(ticket) => self.dispatch(Conn {
                stream,
                _ticket: ticket,
            }),
            None => {
                bump(&self.counters.refused);
                refuse(stream, max);
            }
        }
    }

    /// Queues the connection and makes sure a thread will take it: a waiting one, or a new one
    /// while there are fewer than `API_MAX_CONNECTIONS`.
    fn dispatch(self: &Arc<Self>, conn: Conn) {
        let mut pool = self.pool();
        pool.queue.push_back(conn);
        if pool.queue.len() <= pool.idle {
            self.wake.notify_one();
            return;
        }
        if pool.threads >= self.limits.max_connections {
            // Every thread is busy; one takes the connection when it is done with its own.
            return;
        }
        pool.threads += 1;
        let n = pool.threads;
        drop(pool);
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("api-{n}"))
            .stack_size(STACK)
            .spawn(move || inner.work());
        let mut pool = self.pool();
        match spawned {
            Ok(_) => self.counters.threads.store(pool.threads, Ordering::Relaxed),
            Err(e) => {
                pool.threads -= 1;
                log::warn!("cannot start an API thread: {e}");
                if pool.threads == 0 {
                    // No thread will ever take them: close them rather than hold them.
                    pool.queue.clear();
                }
            }
        }
    }

    /// A handler thread: serves connections until none comes for [`WORKER_IDLE`] or the
    /// server stops.
    fn work(&self) {
        while let Some(conn) = self.next_conn() {
            self.serve(conn);
        }
    }

    fn next_conn(&self) -> Option<Conn> {
        let mut pool = self.pool();
        loop {
            if let Some(c) = pool.queue.pop_front() {
                return Some(c);
            }
            if self.stopping() {
                break;
            }
            pool.idle += 1;
            let (p, waited) = self
                .wake
                .wait_timeout(pool, WORKER_IDLE)
                .unwrap_or_else(|p| p.into_inner());
            pool = p;
            pool.idle -= 1;
            if waited.timed_out() && pool.queue.is_empty() {
                break;
            }
        }
        pool.threads -= 1;
        self.counters.threads.store(pool.threads, Ordering::Relaxed);
        None
    }

    /// One connection's keep-alive loop: read a head, answer it, again, until the client or
    /// the handler ends it or a timeout closes it.
    fn serve(&self, mut conn: Conn) {
        let s = &mut conn.stream;
        if s.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
            return;
        }
        let _ = s.set_nodelay(true);
        let mut buf = Vec::with_capacity(1024);
        let mut first = true;
        loop {
            let req = match read_head(s, &mut buf, first, &self.limits) {
                Ok(r) => r,
                Err(Ended::Closed) => return,
                Err(Ended::HeaderTimeout) => return bump(&self.counters.header_timeouts),
                Err(Ended::Idle) => return bump(&self.counters.idle_closed),
                Err(Ended::Bad(e)) => {
                    let _ = answer_error(s, e.status(), &e.to_string());
                    return;
                }
            };
            first = false;
            if !(self.handler)(&req, s) || self.stopping() {
                return;
            }
        }
    }
}

/// Why a connection ends before a request could be read.
#[derive(Debug)]
enum Ended {
    /// The client closed it, or the socket failed.
    Closed,
    /// No complete request head within `API_HEADER_TIMEOUT_S` of its first byte (or of the
    /// connection).
    HeaderTimeout,
    /// No new request within `API_IDLE_TIMEOUT_S` on a keep-alive connection.
    Idle,
    /// The head is unusable.
    Bad(http::HeadError),
}

/// Reads until `buf` holds a complete head, and takes it out of `buf` (what follows it stays,
/// for a pipelining client). The first request of a connection, and a request whose first
/// bytes came, has `header_timeout`; a keep-alive connection waits `idle_timeout` for them.
fn read_head(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    first: bool,
    limits: &Limits,
) -> Result<Request, Ended> {
    let mut idle = !first && buf.is_empty();
    let mut deadline = Instant::now()
        + if idle {
            limits.idle_timeout
        } else {
            limits.header_timeout
        };
    let mut chunk = [0u8; 2048];
    loop {
        if let Some((req, n)) = http::parse_head(buf).map_err(Ended::Bad)? {
            buf.drain(..n);
            return Ok(req);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(if idle {
                Ended::Idle
            } else {
                Ended::HeaderTimeout
            });
        }
        if s.set_read_timeout(Some(left)).is_err() {
            return Err(Ended::Closed);
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(Ended::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if idle {
                    idle = false;
                    deadline = Instant::now() + limits.header_timeout;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return Err(Ended::Closed),
        }
    }
}

/// Writes a whole answer: head, then the body unless `head_only`.
pub fn respond(
    out: &mut impl Write,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let head = http::response_head(status, content_type, body.len(), extra, keep_alive);
    out.write_all(head.as_bytes())?;
    if !head_only {
        out.write_all(body)?;
    }
    out.flush()
}

/// `{"error": text}` with `status`, and `Connection: close`.
fn answer_error(out: &mut impl Write, status: u16, text: &str) -> std::io::Result<()> {
    let mut body = String::from("{\"error\":");
    push_json_str(&mut body, text);
    body.push('}');
    let extra = [("Cache-Control", "no-store"), ("Retry-After", "1")];
    let extra = if status == 503 {
        &extra[..]
    } else {
        &extra[..1]
    };
    respond(
        out,
        status,
        "application/json",
        extra,
        body.as_bytes(),
        false,
        false,
    )
}

/// Answers a connection over the cap with 503, on the accept thread, without ever waiting on
/// the client: the answer fits a fresh socket's send buffer, and the socket is non-blocking.
fn refuse(mut s: TcpStream, max: usize) {
    let _ = s.set_nonblocking(true);
    let text = format!("too many connections ({max} open, API_MAX_CONNECTIONS); try again later");
    let _ = answer_error(&mut s, 503, &text);
    // Reading what the client already sent keeps the kernel from answering the close with a
    // reset, which could make the client lose the 503.
    let mut sink = [0u8; 4096];
    let _ = s.read(&mut sink);
    let _ = s.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_frees() {
        let c = Arc::new(Counters::default());
        let held: Vec<Ticket> = (0..3).filter_map(|_| c.enter(3)).collect();
        assert_eq!(held.len(), 3);
        assert!(c.enter(3).is_none());
        drop(held);
        assert_eq!(c.health(3)["connections"], 0);
        assert!(c.enter(3).is_some());
    }

    #[test]
    fn a_refused_connection_gets_503_and_the_end() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        client
            .write_all(b"GET /api/v1/health HTTP/1.1\r\n\r\n")
            .expect("write");
        let (server_side, _) = listener.accept().expect("accept");
        refuse(server_side, 64);
        let mut answer = String::new();
        client.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(
            answer.ends_with("API_MAX_CONNECTIONS); try again later\"}"),
            "{answer}"
        );
    }
}
