//! The MQTT backend (docs/CONTRACT.md §3–§5): streams every message to a broker, never losing one while the
//! broker is away (memory, then the disk spool), with a retained online/offline status.
//!
//! The state and every decision are in [`session`] (a state machine: events in, actions out);
//! this module is its thin I/O adapter over rumqttc, in two threads. `mqtt-pub` takes messages
//! from the backend's bounded channel, feeds them and the clock to the session, and does what
//! the session asks: hands publishes to the current rumqttc `Client` with `try_publish`, reports
//! progress, gives a stuck connection up. `mqtt-conn` iterates the `Connection` (where rumqttc's
//! own current-thread runtime does the I/O), feeds CONNACK, sent packet ids, acknowledgements
//! and errors to the session, makes a new client for each new connection, and backs off between
//! connection attempts. The session and the current client share one mutex.
//!
//! This module must never block `log()` for long while the broker is away, never count a
//! message delivered before the broker acknowledged it, and never log the password.

#[cfg(test)]
mod model_test;
mod session;
pub mod spool;
pub mod tls;
pub mod topic;
mod tracker;
mod wire;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use rumqttc::{
    Client, Connection, ConnectionError, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    TlsConfiguration, Transport,
};

use self::session::{Ack, Action, Granted, Session};
use super::{Backend, Lane, Summary};
use crate::config::MqttConfig;
use crate::message::LogMessage;

/// Groups of messages (a reader's lines of one read, up to 64) waiting between `log_many()`
/// and the publisher: one send and one wake-up per group, not per message.
const CHANNEL: usize = 8;
/// Messages the publisher takes in under one lock.
const INTAKE: usize = 256;
/// rumqttc's own in-flight window (packet ids 1..N): more than ours, with room for the status.
const CLIENT_INFLIGHT: u16 = 200;
const _: () = assert!(session::MAX_INFLIGHT_UNITS + 4 <= CLIENT_INFLIGHT as usize);
/// The client's request channel: more than our window, the status and the disconnect.
const REQUEST_CAP: usize = session::MAX_INFLIGHT_UNITS + 16;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for acknowledgements before spooling the rest.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// How often, while connected and rumqttc has nothing to say, the connection thread looks
/// whether the session gave its connection up (no acknowledgements: `session::ACK_STALL`).
/// Longer than rumqttc's own network timeout (5 s), so the wait it cuts short is never one for
/// a connect or a flush; while not connected, rumqttc is never cut short.
const CONN_TICK: Duration = Duration::from_secs(6);
/// Stacks of our threads; the conn thread runs rumqttc's runtime and the TLS handshake.
const PUB_STACK: usize = 256 << 10;
const CONN_STACK: usize = 256 << 10;

/// Why the MQTT backend could not start. An unreachable broker is not one of them.
#[derive(Debug)]
pub enum Error {
    /// A certificate or key file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// A certificate or key file holds nothing usable.
    Pem {
        /// The file.
        path: PathBuf,
        /// What it should have held.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// rustls refused the TLS settings (for example a key that does not match the certificate).
    Tls(rustls::Error),
    /// The spool directory could not be created or read.
    Spool {
        /// The directory.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// A thread could not be started.
    Thread(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            Error::Pem { path, what, detail } => {
                write!(f, "{} holds no usable {what}: {detail}", path.display())
            }
            Error::Tls(e) => write!(f, "tls settings refused: {e}"),
            Error::Spool { path, err } => {
                write!(f, "cannot open the mqtt spool {}: {err}", path.display())
            }
            Error::Thread(e) => write!(f, "cannot start an mqtt thread: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The state both threads and the backend's callers see.
struct Shared {
    link: Mutex<Link>,
    /// Wakes the publisher when the connection state changes or the in-flight window frees.
    wake: Sender<()>,
    /// Set when the session gave the connection up: `mqtt-conn` drops it and makes a new one.
    renew: AtomicBool,
    lane: Lane,
}

/// The session and the client of the connection it is on, under one lock: a publish request
/// is handed to the client in the same critical section the session made it in.
struct Link {
    session: Session,
    /// The client of the current connection: set at its CONNACK, taken away when the session
    /// leaves it. A request can only ever reach the connection it was made for.
    client: Option<Client>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    /// Does what the session asks: hands publishes to the client, reports progress, gives a
    /// stuck connection up.
    fn apply(&self, link: &mut Link) {
        while let Some(action) = link.session.poll() {
            match action {
                Action::Publish(p) => {
                    let handed = link.client.as_ref().is_some_and(|c| {
                        c.try_publish(p.topic, p.qos, p.retain, p.payload).is_ok()
                    });
                    if !handed {
                        // The request channel is full (should not happen with our window), or
                        // there is no connection: the session keeps it for later.
                        link.session.refused(p.token);
                    }
                }
                Action::Progress(container, pos) => self.lane.taken(&container, pos),
                Action::Reconnect => {
                    link.client = None;
                    self.renew.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// The MQTT backend; see the module documentation.
pub struct MqttBackend {
    tx: Sender<Vec<Arc<LogMessage>>>,
    stop_pub: Sender<()>,
    stop_conn: Sender<()>,
    stopped: AtomicBool,
    shared: Arc<Shared>,
    broker: String,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl MqttBackend {
    /// Starts the backend: opens the spool (replaying what a previous run left), then the
    /// publisher and connection threads. Returns at once; an unreachable broker is retried.
    pub fn start(
        cfg: &MqttConfig,
        state_dir: &Path,
        lane: Lane,
        host: &str,
        version: &str,
    ) -> Result<Arc<MqttBackend>, Error> {
        let online = topic::status_payload("online", host, version);
        let offline = topic::status_payload("offline", host, version);
        let options = options(cfg, &offline)?;
        let spool = open_spool(cfg, state_dir)?;
        let (wake_tx, wake_rx) = bounded(1);
        let session = Session::new(cfg, spool, online, offline, Instant::now());
        let shared = Arc::new(Shared {
            link: Mutex::new(Link {
                session,
                client: None,
            }),
            wake: wake_tx,
            renew: AtomicBool::new(false),
            lane,
        });
        let (tx, rx) = bounded(CHANNEL);
        let (stop_pub, stop_pub_rx) = bounded(1);
        let (stop_conn, stop_conn_rx) = bounded(1);

        let s = shared.clone();
        let pub_thread = thread::Builder::new()
            .name("mqtt-pub".into())
            .stack_size(PUB_STACK)
            .spawn(move || run_pub(&s, &rx, &wake_rx, &stop_pub_rx))
            .map_err(Error::Thread)?;
        let s = shared.clone();
        let conn_thread = thread::Builder::new()
            .name("mqtt-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || run_conn(&s, &options, &stop_conn_rx))
            .map_err(Error::Thread)?;

        Ok(Arc::new(MqttBackend {
            tx,
            stop_pub,
            stop_conn,
            stopped: AtomicBool::new(false),
            shared,
            broker: format!("{}:{}", cfg.host, cfg.port),
            threads: Mutex::new(vec![pub_thread, conn_thread]),
        }))
    }
}

/// Opens the spool under `state_dir`, saying what an earlier run left in it.
fn open_spool(cfg: &MqttConfig, state_dir: &Path) -> Result<spool::Spool, Error> {
    let dir = state_dir.join("spool");
    let spool = spool::Spool::open(&dir, cfg.spool_max_bytes).map_err(|err| Error::Spool {
        path: dir.clone(),
        err,
    })?;
    if spool.pending() > 0 {
        log::info!(
            "mqtt spool holds {} messages from before, sending them first",
            spool.pending()
        );
    }
    Ok(spool)
}

/// The client options every connection is made from: clean session, our packet size and
/// window, the offline status as last will, credentials and TLS.
fn options(cfg: &MqttConfig, offline: &str) -> Result<MqttOptions, Error> {
    let mut options = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    options
        .set_keep_alive(cfg.keepalive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_max_packet_size(session::MAX_PACKET, session::MAX_PACKET)
        .set_inflight(CLIENT_INFLIGHT)
        .set_last_will(LastWill::new(
            cfg.status_topic.clone(),
            offline.as_bytes().to_vec(),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &cfg.username {
        let password = cfg.password.as_ref().map(|p| p.expose()).unwrap_or("");
        options.set_credentials(user.clone(), password);
    }
    if cfg.tls {
        let config = tls::client_config(cfg)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    Ok(options)
}

/// The publisher: takes messages in, ticks the session and does what it asks, until told to
/// stop.
fn run_pub(
    shared: &Shared,
    rx: &Receiver<Vec<Arc<LogMessage>>>,
    wake_rx: &Receiver<()>,
    stop_rx: &Receiver<()>,
) {
    let mut got: Vec<Arc<LogMessage>> = Vec::with_capacity(INTAKE);
    loop {
        let stop = wait_for_input(shared, rx, wake_rx, stop_rx, &mut got);
        let now = Instant::now();
        let mut link = shared.lock();
        for m in got.drain(..) {
            link.session.intake(m, now);
        }
        link.session.tick(now);
        shared.apply(&mut link);
        drop(link);
        if stop {
            break;
        }
    }
    shutdown_pub(shared, rx, wake_rx);
}

/// Waits for messages (while the session takes them), a wake-up, or the next batch deadline;
/// true when told to stop.
fn wait_for_input(
    shared: &Shared,
    rx: &Receiver<Vec<Arc<LogMessage>>>,
    wake_rx: &Receiver<()>,
    stop_rx: &Receiver<()>,
    got: &mut Vec<Arc<LogMessage>>,
) -> bool {
    let now = Instant::now();
    let (accept, deadline) = {
        let link = shared.lock();
        (link.session.accepting(now), link.session.next_deadline())
    };
    let timeout = deadline
        .map(|d| d.saturating_duration_since(now))
        .unwrap_or(Duration::from_millis(200))
        .min(Duration::from_millis(200));
    let mut stop = false;
    if accept {
        select! {
            recv(rx) -> m => match m {
                Ok(m) => got.extend(m),
                Err(_) => stop = true,
            },
            recv(stop_rx) -> _ => stop = true,
            recv(wake_rx) -> _ => {}
            default(timeout) => {}
        }
        while got.len() < INTAKE {
            match rx.try_recv() {
                Ok(m) => got.extend(m),
                Err(_) => break,
            }
        }
    } else {
        // Memory is full and the broker is taking messages: let `log()` wait a little.
        select! {
            recv(stop_rx) -> _ => stop = true,
            recv(wake_rx) -> _ => {}
            default(timeout) => {}
        }
    }
    stop
}

/// Flushes batches, waits a little for acknowledgements, spools the rest, says offline and
/// disconnects.
fn shutdown_pub(shared: &Shared, rx: &Receiver<Vec<Arc<LogMessage>>>, wake_rx: &Receiver<()>) {
    let deadline = Instant::now() + ACK_WAIT;
    {
        let mut link = shared.lock();
        let now = Instant::now();
        while let Ok(msgs) = rx.try_recv() {
            for m in msgs {
                link.session.intake(m, now);
            }
        }
        link.session.flush(now);
    }
    loop {
        {
            let mut link = shared.lock();
            let now = Instant::now();
            link.session.tick(now);
            shared.apply(&mut link);
            if link.session.drained() || !link.session.is_connected() || now >= deadline {
                break;
            }
        }
        let _ = wake_rx.recv_timeout(Duration::from_millis(20));
    }
    let mut link = shared.lock();
    let offline = link.session.stop(Instant::now());
    shared.apply(&mut link);
    if let (Some(p), Some(client)) = (offline, &link.client) {
        let _ = client.try_publish(p.topic, p.qos, p.retain, p.payload);
        let _ = client.try_disconnect();
    }
}

/// One rumqttc client and its connection. A connection that reached CONNACK is never used
/// again once it ends or is given up: the next one is a new pair made from the same options,
/// so nothing of the old one (rumqttc's in-flight state and packet ids, requests still queued
/// in the old client) can reach it, and no field of rumqttc's is ever written. Requests
/// queued in an old client go nowhere: its channel's receiver is dropped with its connection.
struct Wire {
    client: Client,
    connection: Connection,
    /// It reached CONNACK, and its client was handed to the publisher.
    used: bool,
}

impl Wire {
    fn new(options: &MqttOptions) -> Wire {
        let (client, connection) = Client::new(options.clone(), REQUEST_CAP);
        Wire {
            client,
            connection,
            used: false,
        }
    }
}

/// What the connection thread does after an event.
enum Flow {
    Go,
    Connected,
    Stop,
}

/// The connection thread: drives rumqttc's event loop and reports what it sees to the session.
fn run_conn(shared: &Shared, options: &MqttOptions, stop_rx: &Receiver<()>) {
    let mut wire = Wire::new(options);
    let mut backoff = BACKOFF_MIN;
    // Whether this spell without a connection was reported at warning level: once per spell,
    // the retries only at debug level (as the engine's own reconnect loop does).
    let mut reported = false;
    loop {
        // While connected, wake up now and then to see whether the session gave up on us;
        // while not, rumqttc's connect is never cut short.
        let next = if wire.used {
            wire.connection.recv_timeout(CONN_TICK)
        } else {
            wire.connection
                .recv()
                .map_err(|_| rumqttc::RecvTimeoutError::Disconnected)
        };
        if shared.renew.swap(false, Ordering::SeqCst) {
            // The session gave this connection up (no acknowledgements): a new one at once.
            wire = Wire::new(options);
            continue;
        }
        let event = match next {
            Ok(e) => e,
            Err(rumqttc::RecvTimeoutError::Timeout) => continue,
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        };
        match event {
            Ok(event) => match on_event(shared, &mut wire, event) {
                Flow::Go => {}
                Flow::Connected => {
                    backoff = BACKOFF_MIN;
                    reported = false;
                }
                Flow::Stop => break,
            },
            Err(e) => {
                if !on_error(shared, &mut wire, options, &e, &mut reported) {
                    break;
                }
                match stop_rx.recv_timeout(backoff) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    let mut link = shared.lock();
    link.client = None;
    if link.session.is_connected() {
        link.session.disconnected("stopped".into(), Instant::now());
    }
}

/// Feeds one rumqttc event to the session.
fn on_event(shared: &Shared, wire: &mut Wire, event: Event) -> Flow {
    let now = Instant::now();
    match event {
        Event::Incoming(Incoming::ConnAck(ack)) => {
            let mut link = shared.lock();
            if link.session.is_stopping() {
                return Flow::Stop;
            }
            link.session
                .connected(Granted::v311(ack.session_present), now);
            link.client = Some(wire.client.clone());
            wire.used = true;
            drop(link);
            log::info!("mqtt connected");
            shared.wake();
            return Flow::Connected;
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => shared.lock().session.sent(pkid, now),
        Event::Incoming(Incoming::PubAck(ack)) => {
            shared.lock().session.acked(ack.pkid, Ack::Ok, now)
        }
        Event::Incoming(Incoming::PubComp(comp)) => {
            shared.lock().session.acked(comp.pkid, Ack::Ok, now)
        }
        Event::Outgoing(Outgoing::Disconnect) if shared.lock().session.is_stopping() => {
            return Flow::Stop;
        }
        _ => return Flow::Go,
    }
    shared.wake();
    Flow::Go
}

/// The connection failed or dropped: tells the session, replaces a pair that was connected, and
/// says so once per outage. False when stopping.
fn on_error(
    shared: &Shared,
    wire: &mut Wire,
    options: &MqttOptions,
    e: &ConnectionError,
    reported: &mut bool,
) -> bool {
    let (was_connected, stopping) = {
        let mut link = shared.lock();
        let was = link.session.is_connected();
        link.session.disconnected(e.to_string(), Instant::now());
        link.client = None;
        // A connection the session gave up on is being replaced anyway.
        shared.renew.store(false, Ordering::SeqCst);
        (was, link.session.is_stopping())
    };
    if wire.used {
        *wire = Wire::new(options);
    }
    if stopping {
        return false;
    }
    if was_connected {
        log::warn!("mqtt connection lost: {e}");
        *reported = true;
    } else if !*reported {
        // The first failed attempt since the start: a refused password or certificate must
        // not be silent at the default log level.
        log::warn!("mqtt cannot connect: {e}; retrying");
        *reported = true;
    } else {
        log::debug!("mqtt connect failed: {e}");
    }
    shared.wake();
    true
}

impl Backend for MqttBackend {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn log(&self, msg: &Arc<LogMessage>) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let _ = self.tx.send(vec![msg.clone()]);
    }

    fn log_many(&self, msgs: &[Arc<LogMessage>]) {
        if self.stopped.load(Ordering::Relaxed) || msgs.is_empty() {
            return;
        }
        let _ = self.tx.send(msgs.to_vec());
    }

    fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let start = Instant::now();
        let _ = self.stop_pub.try_send(());
        let mut threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        // The publisher first: it spools and says offline; then the connection thread, which
        // ends on the disconnect or, when the broker is away, on our stop signal.
        if !threads.is_empty() {
            let pub_thread = threads.remove(0);
            join_by(pub_thread, start + Duration::from_millis(2600));
        }
        let _ = self.stop_conn.try_send(());
        for t in threads {
            join_by(t, start + Duration::from_millis(2950));
        }
    }

    fn summary(&self) -> Summary {
        let link = self.shared.lock();
        let s = &link.session;
        Summary {
            ok: s.healthy(Instant::now()),
            dropped: s.counters().dropped,
            spool_bytes: s.spool_bytes(),
        }
    }

    fn health(&self) -> serde_json::Value {
        let link = self.shared.lock();
        let s = &link.session;
        let c = s.counters();
        serde_json::json!({
            "connected": s.is_connected(),
            "broker": self.broker,
            "queue": s.queued(),
            "spoolBytes": s.spool_bytes(),
            "published": c.published,
            "acknowledged": c.acknowledged,
            "spooled": c.spooled,
            "dropped": c.dropped,
            "reconnects": c.reconnects,
            "lastError": s.last_error(),
        })
    }

    fn metrics(&self, out: &mut String) {
        let link = self.shared.lock();
        let s = &link.session;
        let c = s.counters();
        let lines: [(&str, &str, &str, u64); 8] = [
            ("published_total", "counter", "Messages handed to the broker connection.", c.published),
            ("acknowledged_total", "counter", "Messages the broker acknowledged (QoS 1/2) or that were written to the socket (QoS 0).", c.acknowledged),
            ("spooled_total", "counter", "Messages written to the disk spool.", c.spooled),
            ("dropped_total", "counter", "Messages dropped because the spool was full or failed.", c.dropped),
            ("reconnects_total", "counter", "Connections to the broker after the first.", c.reconnects),
            ("connected", "gauge", "1 while connected to the broker.", u64::from(s.is_connected())),
            ("queue_messages", "gauge", "Messages waiting in memory.", s.queued() as u64),
            ("spool_bytes", "gauge", "Bytes in the disk spool.", s.spool_bytes()),
        ];
        crate::stats::write_metrics(out, "container_logd_mqtt_", &lines);
    }
}

impl Drop for MqttBackend {
    fn drop(&mut self) {
        // Threads that still run hold only their own clones; ask them to stop.
        let _ = self.stop_pub.try_send(());
        let _ = self.stop_conn.try_send(());
    }
}

/// Joins `t` if it ends before `deadline`; otherwise leaves it (the process is stopping).
fn join_by(t: JoinHandle<()>, deadline: Instant) {
    while !t.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if t.is_finished() {
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_left_in_a_replaced_client_reaches_nothing() {
        // Port 9 on loopback: nothing is ever polled here, so nothing connects.
        let options = MqttOptions::new("t", "127.0.0.1", 9);
        let mut wire = Wire::new(&options);
        let old = wire.client.clone();
        assert!(old
            .try_publish("t", QoS::AtLeastOnce, false, b"queued".to_vec())
            .is_ok());
        // What `run_conn` does when a connection ends: the old pair is dropped.
        wire = Wire::new(&options);
        assert!(
            old.try_publish("t", QoS::AtLeastOnce, false, b"late".to_vec())
                .is_err(),
            "the old client's channel died with its connection"
        );
        assert!(!wire.used);
    }
}
