//! Thread `mqtt-fleet`: the fleet's own broker connection (client id `{MQTT_CLIENT_ID}-fleet`,
//! no will), apart from the log stream's, so an answer never waits behind log publishes nor
//! they behind it. It answers log queries (`MQTT_QUERY`) and publishes the Home Assistant
//! discovery configs and states (`HA_DISCOVERY`).
//!
//! It connects (backing off between attempts) and, on every new connection, subscribes to
//! `MQTT_QUERY_TOPIC` at QoS 0 and has discovery publish everything again. Then it reads:
//! requests go into a queue of [`QUEUE`], and one that finds it full is dropped and counted.
//! Between reads it answers the oldest request, one at a time ([`super::query::answer`]), and
//! publishes what discovery has to say. It pings when it has written nothing for ¾ of the
//! keep-alive and gives a connection up when nothing came for two.
//!
//! Memory is bounded: the queue, one answer's lines (≤ `limit`, ≤ 8 MiB) and one part. The
//! pipeline's contact with this thread is the ring's lock, held for one copy of `Arc`s, and the
//! discovery core's, held by the tap for each batch of error lines.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};

use super::discovery;
use super::query::{self, QueryStats, Sources};
use crate::backend::mqtt::wire::{self, Message};

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
/// How long a stop waits for the thread.
const STOP_WAIT: Duration = Duration::from_millis(500);

/// What the fleet connection does.
pub struct Duties {
    /// Answer queries on this topic, from these sources.
    pub query: Option<(String, Sources)>,
    /// Publish what this discovery core says.
    pub discovery: Option<discovery::Shared>,
}

/// The running `mqtt-fleet` thread.
pub struct FleetLink {
    stop: Sender<()>,
    closer: Arc<Mutex<Option<wire::Closer>>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<QueryStats>,
}

impl FleetLink {
    /// Starts `mqtt-fleet` on `options` (the backend's; the client id gets `-fleet`, the will
    /// is dropped).
    pub fn start(mut options: wire::Options, duties: Duties) -> std::io::Result<FleetLink> {
        options.client_id = format!("{}-fleet", options.client_id);
        options.will = None;
        options.max_incoming_packet = MAX_INCOMING;
        let (stop, stop_rx) = bounded(1);
        let closer = Arc::new(Mutex::new(None));
        let stats = Arc::new(QueryStats::default());
        let worker = Worker {
            options,
            duties,
            stats: stats.clone(),
            closer: closer.clone(),
        };
        let thread = thread::Builder::new()
            .name("mqtt-fleet".into())
            .stack_size(STACK)
            .spawn(move || worker.run(&stop_rx))?;
        Ok(FleetLink {
            stop,
            closer,
            thread: Some(thread),
            stats,
        })
    }

    /// Ends the thread: its connection is closed, its wait cut short. A thread still in a
    /// connection attempt after [`STOP_WAIT`] is left to end with the process (the agent's
    /// stop has its own deadline).
    pub fn stop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(c) = self.closer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            c.close();
        }
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + STOP_WAIT;
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for FleetLink {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    options: wire::Options,
    duties: Duties,
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
                        log::warn!("mqtt fleet connection lost: {e}");
                    }
                }
                Err(e) if !reported => {
                    log::warn!("mqtt fleet connection cannot connect: {e}; retrying");
                    reported = true;
                }
                Err(e) => log::debug!("mqtt fleet connect failed: {e}"),
            }
            match stop.recv_timeout(backoff) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Subscribes, then reads, answers and publishes until the connection fails or the thread
    /// is told to stop (then it disconnects, `Ok`).
    fn serve(
        &self,
        mut w: wire::Writer,
        r: wire::Reader,
        ack: &wire::ConnAck,
        stop: &Receiver<()>,
    ) -> Result<(), wire::Error> {
        if let Some((topic, _)) = &self.duties.query {
            w.subscribe(1, &[topic.as_str()])?;
            w.flush()?;
            log::info!("mqtt query: answering on {topic}");
        }
        if let Some(d) = &self.duties.discovery {
            discovery::lock(d).connected();
        }
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
        loop {
            if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                let _ = c.w.disconnect();
                return Ok(());
            }
            if self.read_one(&mut c)? {
                continue;
            }
            self.keep_alive(&mut c)?;
            self.publish_discovery(&mut c)?;
            if let (Some(m), Some((_, sources))) = (c.queue.pop_front(), &self.duties.query) {
                query::answer(&mut c.w, c.budget, &m, sources, &self.stats)?;
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
                let topic = self.duties.query.as_ref().map(|q| q.0.as_str());
                if let Some(m) = got.filter(|m| Some(m.topic.as_str()) == topic) {
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

    /// Publishes (retained, QoS 0) what discovery has to say now.
    fn publish_discovery(&self, c: &mut Conn) -> Result<(), wire::Error> {
        let Some(d) = &self.duties.discovery else {
            return Ok(());
        };
        let out = discovery::lock(d).step(Instant::now());
        if out.is_empty() {
            return Ok(());
        }
        for o in &out {
            c.w.publish(0, &o.topic, o.payload.as_bytes(), 0, true, false)?;
        }
        c.w.flush()?;
        c.last_write = Instant::now();
        Ok(())
    }
}
