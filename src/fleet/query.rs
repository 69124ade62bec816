//! Thread `mqtt-query`: answers log queries sent over MQTT (docs/CONTRACT.md §10) on a broker
//! connection of its own (client id `{MQTT_CLIENT_ID}-query`, no will), so a query never waits
//! behind the log stream's publishes nor they behind it.
//!
//! It connects (backing off between attempts), subscribes to `MQTT_QUERY_TOPIC` at QoS 0 on
//! every new connection, and then reads: requests go into a queue of [`QUEUE`]; one that finds
//! it full is dropped and counted. Between reads it answers the oldest request, one at a time,
//! from the ring and the files ([`super::search`]), in parts that fit the broker's packet limit
//! ([`super::request::Parts`]), published at QoS 0 to the reply topic. It pings when it has
//! written nothing for ¾ of the keep-alive and gives a connection up when nothing came for two.
//!
//! Memory is bounded: the queue, one answer's lines (≤ `limit`, ≤ 8 MiB) and one part. The
//! pipeline's one contact with this thread is the ring's lock, held for one copy of `Arc`s.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};

use super::request::{self, Parsed, Parts, Request};
use super::search;
use crate::backend::local::ring::Ring;
use crate::backend::mqtt::wire::{self, Alias, Message, Props, Publish};

/// Requests waiting to be answered; more are dropped (and counted).
pub const QUEUE: usize = 8;
/// The largest answer part, when the broker sets no smaller limit.
const PART_MAX: usize = 256 << 10;
/// The largest request taken; a bigger one is a protocol error that ends the connection.
const MAX_INCOMING: usize = 64 << 10;
const IDLE_READ: Duration = Duration::from_secs(1);
/// The read wait while requests are queued: just long enough to take in what already came.
const BUSY_READ: Duration = Duration::from_millis(1);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STACK: usize = 256 << 10;

/// What the query thread has done, for health and metrics.
#[derive(Debug, Default)]
pub struct QueryStats {
    /// Queries answered (with lines).
    pub answered: AtomicU64,
    /// Requests answered with an error.
    pub bad: AtomicU64,
    /// Requests dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Requests with no reply topic (nothing to answer).
    pub unanswerable: AtomicU64,
    /// Answer parts published.
    pub parts: AtomicU64,
}

impl QueryStats {
    pub fn json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "answered": get(&self.answered),
            "bad": get(&self.bad),
            "dropped": get(&self.dropped),
            "unanswerable": get(&self.unanswerable),
            "parts": get(&self.parts),
        })
    }
}

/// What the thread reads from.
pub struct Sources {
    pub ring: Arc<Ring>,
    /// `LOG_DIR`, when files are kept.
    pub log_dir: Option<PathBuf>,
}

/// The running query thread.
pub struct QueryService {
    stop: Sender<()>,
    closer: Arc<Mutex<Option<wire::Closer>>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<QueryStats>,
}

impl QueryService {
    /// Starts `mqtt-query` on `options` (the backend's, without its will), subscribed to
    /// `topic`.
    pub fn start(
        mut options: wire::Options,
        topic: String,
        sources: Sources,
    ) -> std::io::Result<QueryService> {
        options.client_id = format!("{}-query", options.client_id);
        options.will = None;
        options.max_incoming_packet = MAX_INCOMING;
        let (stop, stop_rx) = bounded(1);
        let closer = Arc::new(Mutex::new(None));
        let stats = Arc::new(QueryStats::default());
        let worker = Worker {
            options,
            topic,
            sources,
            stats: stats.clone(),
            closer: closer.clone(),
        };
        let thread = thread::Builder::new()
            .name("mqtt-query".into())
            .stack_size(STACK)
            .spawn(move || worker.run(&stop_rx))?;
        Ok(QueryService {
            stop,
            closer,
            thread: Some(thread),
            stats,
        })
    }

    /// Ends the thread: its connection is closed, its wait cut short.
    pub fn stop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(c) = self.closer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            c.close();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for QueryService {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    options: wire::Options,
    topic: String,
    sources: Sources,
    stats: Arc<QueryStats>,
    closer: Arc<Mutex<Option<wire::Closer>>>,
}

/// One connection's reading and answering state.
struct Conn {
    w: wire::Writer,
    r: wire::Reader,
    /// The largest part, within the broker's packet limit.
    budget: usize,
    queue: VecDeque<Message>,
    read_wait: Duration,
    last_read: Instant,
    last_write: Instant,
}

impl Worker {
    fn run(&self, stop: &Receiver<()>) {
        let mut backoff = BACKOFF_MIN;
        let mut reported = false;
        while matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
            match wire::connect(&self.options) {
                Ok((w, r, ack)) => {
                    backoff = BACKOFF_MIN;
                    reported = false;
                    *self.closer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.closer());
                    if let Err(e) = self.serve(w, r, &ack, stop) {
                        log::warn!("mqtt query connection lost: {e}");
                    }
                }
                Err(e) if !reported => {
                    log::warn!("mqtt query connection cannot connect: {e}; retrying");
                    reported = true;
                }
                Err(e) => log::debug!("mqtt query connect failed: {e}"),
            }
            match stop.recv_timeout(backoff) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Subscribes, then reads and answers until the connection fails or the thread is told to
    /// stop (then it disconnects, `Ok`).
    fn serve(
        &self,
        mut w: wire::Writer,
        r: wire::Reader,
        ack: &wire::ConnAck,
        stop: &Receiver<()>,
    ) -> Result<(), wire::Error> {
        w.subscribe(1, &[self.topic.as_str()])?;
        w.flush()?;
        r.set_read_timeout(Some(IDLE_READ))?;
        let limit = ack
            .max_packet
            .map_or(PART_MAX, |m| usize::try_from(m).unwrap_or(PART_MAX));
        let now = Instant::now();
        let mut c = Conn {
            w,
            r,
            budget: limit.min(PART_MAX),
            queue: VecDeque::with_capacity(QUEUE),
            read_wait: IDLE_READ,
            last_read: now,
            last_write: now,
        };
        log::info!("mqtt query: answering on {}", self.topic);
        loop {
            if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                let _ = c.w.disconnect();
                return Ok(());
            }
            if self.read_one(&mut c)? {
                continue;
            }
            self.keep_alive(&mut c)?;
            if let Some(m) = c.queue.pop_front() {
                self.answer(&mut c, &m)?;
                c.last_write = Instant::now();
            }
        }
    }

    /// Reads one packet, queueing a request; true when one came (more may be waiting).
    fn read_one(&self, c: &mut Conn) -> Result<bool, wire::Error> {
        let wait = if c.queue.is_empty() {
            IDLE_READ
        } else {
            BUSY_READ
        };
        if wait != c.read_wait {
            c.r.set_read_timeout(Some(wait))?;
            c.read_wait = wait;
        }
        match c.r.next_message() {
            Ok(got) => {
                c.last_read = Instant::now();
                if let Some(m) = got.filter(|m| m.topic == self.topic) {
                    if c.queue.len() < QUEUE {
                        c.queue.push_back(m);
                    } else {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(true)
            }
            Err(wire::Error::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Pings when nothing was written for ¾ of the keep-alive; an error when nothing came for
    /// two keep-alives (the broker answers a ping, so a live link is never that quiet).
    fn keep_alive(&self, c: &mut Conn) -> Result<(), wire::Error> {
        let ka = self.options.keep_alive;
        let now = Instant::now();
        if now.saturating_duration_since(c.last_read) > ka * 2 {
            return Err(wire::Error::Protocol(
                "nothing from the broker for two keep-alives".into(),
            ));
        }
        if now.saturating_duration_since(c.last_write) >= ka * 3 / 4 {
            c.w.ping()?;
            c.w.flush()?;
            c.last_write = now;
        }
        Ok(())
    }

    /// Answers one request: its lines in parts, or its error.
    fn answer(&self, c: &mut Conn, m: &Message) -> Result<(), wire::Error> {
        let (reply, outcome) = match request::parse(m) {
            Parsed::Unanswerable(why) => {
                self.stats.unanswerable.fetch_add(1, Ordering::Relaxed);
                log::debug!("mqtt query not answered: {why}");
                return Ok(());
            }
            Parsed::Bad(reply, e) => (reply, Err(e)),
            Parsed::Query(Request { filter, reply }) => (reply, Ok(filter)),
        };
        let props = match &reply.correlation_data {
            Some(data) => Some(Props::default().with_reply(None, Some(data))?),
            None => None,
        };
        let mut emit = |payload: &[u8]| -> std::io::Result<()> {
            self.stats.parts.fetch_add(1, Ordering::Relaxed);
            c.w.publish_with(&Publish {
                pkid: 0,
                topic: &reply.topic,
                payload,
                qos: 0,
                retain: false,
                dup: false,
                props: props.as_ref(),
                alias: Alias::None,
            })
        };
        match outcome {
            Err(e) => {
                self.stats.bad.fetch_add(1, Ordering::Relaxed);
                emit(&request::error_payload(&reply, &e))?;
            }
            Ok(filter) => {
                let s = &self.sources;
                let found = search::search(&s.ring, s.log_dir.as_deref(), &filter);
                // The topic, the properties and the headers take their share of the packet.
                let extra = reply.correlation_data.as_ref().map_or(0, Vec::len);
                let budget = c.budget.saturating_sub(reply.topic.len() + extra + 96);
                let mut parts = Parts::new(&reply.correlation_json, budget);
                for line in &found.from_files {
                    parts.push(line.as_bytes(), &mut emit)?;
                }
                let mut json = String::new();
                for msg in &found.from_ring {
                    json.clear();
                    msg.write_json(&mut json);
                    parts.push(json.as_bytes(), &mut emit)?;
                }
                parts.finish(&mut emit)?;
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        c.w.flush()?;
        Ok(())
    }
}
