//! The MQTT backend (docs/CONTRACT.md §3–§5): streams every message to a broker, never losing one while the
//! broker is away (memory, then the disk spool), with a retained online/offline status.
//!
//! The state and every decision are in [`session`] (a state machine: events in, actions out);
//! this module is its thin I/O adapter over [`wire`] (a blocking MQTT 3.1.1 connection), in two
//! threads. `mqtt-conn` connects (backing off between attempts), hands the connection's
//! [`wire::Writer`] to the publisher, then reads: CONNACK, acknowledgements, PUBRECs, PINGRESPs
//! and errors go to the session; a read that waits [`CONN_TICK`] ticks the session, so a dead
//! connection is noticed even while the publisher is blocked in a write. `mqtt-pub` takes
//! messages from the backend's bounded channel, feeds them and the clock to the session, and
//! carries out what it asks: writes publishes (with the session's packet ids), PUBRELs and
//! pings, reports progress, closes a connection the session gave up; it flushes the writer when
//! it has nothing more to write at once. The session and the hand-over of each new connection
//! share one mutex; sockets are written and read outside it. No async runtime.
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
mod v5;
pub(crate) mod wire;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender, TryRecvError};

use self::session::{Ack, Action, Granted, Session};
use self::wire::Incoming;
use super::{Backend, Lane, Summary};
use crate::config::{MqttConfig, MqttVersion, Secret};
use crate::message::LogMessage;

/// Groups of messages (a reader's lines of one read, up to 64) waiting between `log_many()`
/// and the publisher: one send and one wake-up per group, not per message.
const CHANNEL: usize = 8;
/// Messages the publisher takes in under one lock.
const INTAKE: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for acknowledgements before spooling the rest.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// The limit of each socket write at shutdown: a broker that stopped reading must not hold the
/// stop past its deadline.
const STOP_WRITE: Duration = Duration::from_millis(500);
/// How long the connection thread waits for a packet before it ticks the session. Pings, a
/// missing PINGRESP and the ack-stall watchdog are the session's deadlines, which the publisher
/// thread sleeps until; this tick is a second watch, so it is rare (an idle agent wakes for it:
/// a wake-up of an idle agent's thread cost about 1 ms of CPU on the bench's machine).
const CONN_TICK: Duration = Duration::from_secs(30);
/// The longest the publisher sleeps: the session names a deadline whenever something is timed
/// (`Session::next_deadline`; a connected session always has its next ping), so this is a
/// safety net. It slept at most 200 ms before: 5 wake-ups a second of an idle agent.
const IDLE_CHECK: Duration = Duration::from_secs(30);
/// The limit of each step of a connection attempt: TCP connect, TLS handshake, CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest packet we take from the broker: we subscribe to nothing, and its answers are
/// 2 to 4 bytes.
const MAX_INCOMING: usize = 64 << 10;
/// Stacks of our threads; the conn thread runs the TLS handshake.
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
    lane: Lane,
}

/// The session, and the connection the connection thread hands to the publisher, under one
/// lock.
struct Link {
    session: Session,
    /// The number of the latest connection that reached CONNACK (counted from 1).
    conn: u64,
    /// Its writer, from its CONNACK until the publisher takes it.
    writer: Option<wire::Writer>,
    /// Ends it from any thread (shutdown).
    closer: Option<wire::Closer>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        let _ = self.wake.try_send(());
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
    /// The host and version the status names, and when the agent started.
    host: String,
    version: String,
    started_at: String,
    /// The query thread's counters, once it runs (shown in health and metrics).
    query: std::sync::OnceLock<Arc<crate::fleet::query::QueryStats>>,
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
        if cfg.message_expiry.is_some() && cfg.version != MqttVersion::V5 {
            log::warn!("MQTT_MESSAGE_EXPIRY_S has no effect at MQTT 3.1.1 (set MQTT_VERSION=5)");
        }
        let (health, online, offline) = first_status(host, version);
        let options = options(cfg, host, &offline)?;
        let spool = open_spool(cfg, state_dir)?;
        let (wake_tx, wake_rx) = bounded(1);
        let session = Session::new(cfg, spool, host, online, offline, Instant::now());
        let shared = Arc::new(Shared {
            link: Mutex::new(Link {
                session,
                conn: 0,
                writer: None,
                closer: None,
            }),
            wake: wake_tx,
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
            host: host.to_string(),
            version: version.to_string(),
            started_at: health.started_at,
            query: std::sync::OnceLock::new(),
        }))
    }

    /// When the agent started, as the status says it: RFC 3339, whole seconds.
    pub fn started_at(&self) -> &str {
        &self.started_at
    }

    /// Shows the query thread's counters in this backend's health and metrics.
    pub(crate) fn show_query(&self, stats: Arc<crate::fleet::query::QueryStats>) {
        let _ = self.query.set(stats);
    }

    /// Gives the session the online status with fresh health; the session decides when it
    /// goes out (on change, at most every 10 s).
    pub fn set_health(&self, health: &topic::Health) {
        let payload = topic::status_payload("online", &self.host, &self.version, Some(health));
        let news = self.shared.lock().session.status(payload, Instant::now());
        // The same health again changes nothing: the publisher sleeps on.
        if news {
            self.shared.wake();
        }
    }
}

/// The health known at start (the start time), and the online and offline statuses.
fn first_status(host: &str, version: &str) -> (topic::Health, String, String) {
    let health = topic::Health {
        started_at: started_at(),
        ..topic::Health::default()
    };
    let online = topic::status_payload("online", host, version, Some(&health));
    let offline = topic::status_payload("offline", host, version, None);
    (health, online, offline)
}

/// Now, RFC 3339 in UTC to the second.
fn started_at() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ns = i64::try_from(secs)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000);
    let full = crate::engine::timestamp::format_rfc3339_ns(ns);
    // `…T12:00:00.000000000Z` → `…T12:00:00Z`.
    match full.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => full,
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

/// What every connection is made from: the MQTT version, clean session, the keep-alive, the
/// offline status as last will (at MQTT 5 with the status's properties), credentials and TLS.
/// `check` connects with them too.
pub(crate) fn options(cfg: &MqttConfig, host: &str, offline: &str) -> Result<wire::Options, Error> {
    let tls = if cfg.tls {
        Some(tls::client_config(cfg)?)
    } else {
        None
    };
    let credentials = cfg.username.as_ref().map(|user| {
        let password = cfg
            .password
            .clone()
            .unwrap_or_else(|| Secret::new(String::new()));
        (user.clone(), password)
    });
    Ok(wire::Options {
        host: cfg.host.clone(),
        port: cfg.port,
        version: cfg.version,
        client_id: cfg.client_id.clone(),
        keep_alive: cfg.keepalive.max(Duration::from_secs(1)),
        clean_session: true,
        credentials,
        will: Some(wire::Will {
            topic: cfg.status_topic.clone(),
            payload: offline.as_bytes().to_vec(),
            qos: 1,
            retain: true,
            props: (cfg.version == MqttVersion::V5).then(|| v5::status_props(host)),
        }),
        tls,
        connect_timeout: CONNECT_TIMEOUT,
        max_incoming_packet: MAX_INCOMING,
    })
}

/// The publisher: takes messages in, ticks the session and carries out what it asks, until
/// told to stop.
fn run_pub(
    shared: &Shared,
    rx: &Receiver<Vec<Arc<LogMessage>>>,
    wake_rx: &Receiver<()>,
    stop_rx: &Receiver<()>,
) {
    let mut got: Vec<Arc<LogMessage>> = Vec::with_capacity(INTAKE);
    let mut out = Out::default();
    loop {
        let stop = wait_for_input(shared, rx, wake_rx, stop_rx, &mut got);
        let now = Instant::now();
        let accepting = {
            let mut link = shared.lock();
            for m in got.drain(..) {
                link.session.intake(m, now);
            }
            link.session.tick(now);
            out.take(shared, &mut link);
            link.session.accepting(now)
        };
        let wrote = out.write(shared);
        if stop {
            break;
        }
        // More is coming at once only when something was written, messages wait in the
        // channel and the session takes them: otherwise this thread is about to wait.
        if wrote == 0 || rx.is_empty() || !accepting {
            out.flush(shared);
        }
    }
    shutdown_pub(shared, rx, wake_rx, &mut out);
}

/// Waits for messages (while the session takes them), a wake-up, or the next deadline; true
/// when told to stop.
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
        .unwrap_or(IDLE_CHECK)
        .min(IDLE_CHECK);
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
fn shutdown_pub(
    shared: &Shared,
    rx: &Receiver<Vec<Arc<LogMessage>>>,
    wake_rx: &Receiver<()>,
    out: &mut Out,
) {
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
        let done = {
            let mut link = shared.lock();
            let now = Instant::now();
            link.session.tick(now);
            out.take(shared, &mut link);
            link.session.drained() || !link.session.is_connected() || now >= deadline
        };
        out.limit_writes();
        out.write(shared);
        out.flush(shared);
        if done {
            break;
        }
        let _ = wake_rx.recv_timeout(Duration::from_millis(20));
    }
    let offline = {
        let mut link = shared.lock();
        let offline = link.session.stop(Instant::now());
        out.take(shared, &mut link);
        offline
    };
    out.write(shared);
    if let (Some(p), Some(w)) = (offline, out.writer.as_mut()) {
        let said = write_publish(w, &p).and_then(|()| w.disconnect());
        if let Err(e) = said {
            log::debug!("mqtt: offline status and DISCONNECT not written: {e}");
        }
    }
}

/// The publisher's side of the current connection, and what it has to write there.
#[derive(Default)]
struct Out {
    /// The number of the connection `writer` belongs to.
    conn: u64,
    writer: Option<wire::Writer>,
    /// Actions taken from the session under the lock, to carry out after it.
    todo: Vec<Action>,
    /// Payloads written, to give back to the session at the next take.
    spare: Vec<Vec<u8>>,
}

impl Out {
    /// Under the lock: takes a new connection's writer, lets go of one the session left, and
    /// takes the session's actions (progress is reported at once).
    fn take(&mut self, shared: &Shared, link: &mut Link) {
        if let Some(w) = link.writer.take() {
            self.close();
            self.writer = Some(w);
            self.conn = link.conn;
        }
        if !link.session.is_connected() || self.conn != link.conn {
            // Dead, given up, or replaced: nothing more is written on it.
            self.close();
        }
        for payload in self.spare.drain(..) {
            link.session.recycle(payload);
        }
        while let Some(action) = link.session.poll() {
            match action {
                Action::Progress(container, pos) => shared.lane.taken(&container, pos),
                Action::Publish(p) if self.writer.is_none() => link.session.refused(p.token),
                Action::Reconnect => self.close(),
                a => self.todo.push(a),
            }
        }
    }

    /// Writes the actions taken; how many. A failed write ends the connection.
    fn write(&mut self, shared: &Shared) -> usize {
        let Out {
            writer,
            todo,
            spare,
            ..
        } = self;
        let Some(w) = writer.as_mut() else {
            todo.clear();
            return 0;
        };
        let mut n = 0;
        let mut failed = None;
        for action in todo.drain(..) {
            let written = match &action {
                Action::Publish(p) => write_publish(w, p),
                Action::PubRel(pkid) => w.pubrel(*pkid),
                Action::Ping => w.ping(),
                Action::Progress(..) | Action::Reconnect => Ok(()),
            };
            if let Action::Publish(p) = action {
                spare.push(p.payload);
            }
            if let Err(e) = written {
                failed = Some(e);
                break;
            }
            n += 1;
        }
        todo.clear();
        if let Some(e) = failed {
            self.failed(shared, e);
        }
        n
    }

    /// Sends what is buffered.
    fn flush(&mut self, shared: &Shared) {
        if let Some(Err(e)) = self.writer.as_mut().map(wire::Writer::flush) {
            self.failed(shared, e);
        }
    }

    /// At shutdown: a write may not block for long.
    fn limit_writes(&self) {
        if let Some(w) = &self.writer {
            let _ = w.set_write_timeout(Some(STOP_WRITE));
        }
    }

    /// A write failed: the connection is unusable. The session leaves it (unless it already
    /// did, or it is an old one) and it is closed, which ends the connection thread's read.
    fn failed(&mut self, shared: &Shared, e: io::Error) {
        let e = wire::Error::from(e);
        let mut link = shared.lock();
        if link.conn == self.conn && link.session.is_connected() {
            link.session.disconnected(e.to_string(), Instant::now());
            drop(link);
            log::warn!("mqtt connection lost: {e}");
            shared.wake();
        }
        self.close();
    }

    fn close(&mut self) {
        if let Some(w) = self.writer.take() {
            w.closer().close();
        }
    }
}

/// Writes one of the session's publishes.
fn write_publish(w: &mut wire::Writer, p: &session::Publish) -> io::Result<()> {
    w.publish_with(&wire::Publish {
        pkid: p.pkid,
        topic: &p.topic,
        payload: &p.payload,
        qos: p.qos as u8,
        retain: p.retain,
        dup: false,
        props: p.props.as_deref(),
        alias: p.alias,
    })
}

/// The connection thread: connects, backs off between attempts, and reads each connection
/// until it ends.
fn run_conn(shared: &Shared, options: &wire::Options, stop_rx: &Receiver<()>) {
    let mut backoff = BACKOFF_MIN;
    // Whether this spell without a connection was reported at warning level: once per spell,
    // the retries only at debug level (as the engine's own reconnect loop does).
    let mut reported = false;
    while matches!(stop_rx.try_recv(), Err(TryRecvError::Empty)) {
        match wire::connect(options) {
            Ok((writer, reader, ack)) => {
                let Some(conn) = install(shared, writer, &reader, ack) else {
                    break;
                };
                backoff = BACKOFF_MIN;
                reported = read(shared, reader, conn);
            }
            Err(e) => {
                if !connect_failed(shared, &e, &mut reported) {
                    break;
                }
            }
        }
        if shared.lock().session.is_stopping() {
            break;
        }
        match stop_rx.recv_timeout(backoff) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let mut link = shared.lock();
    link.writer = None;
    link.closer = None;
    if link.session.is_connected() {
        link.session.disconnected("stopped".into(), Instant::now());
    }
}

/// A connection reached CONNACK: the session is told and the publisher gets its writer. Its
/// number, or `None` when the backend is stopping (the connection is ended at once).
fn install(
    shared: &Shared,
    mut writer: wire::Writer,
    reader: &wire::Reader,
    ack: wire::ConnAck,
) -> Option<u64> {
    let mut link = shared.lock();
    if link.session.is_stopping() {
        drop(link);
        let _ = writer.disconnect();
        return None;
    }
    link.conn += 1;
    link.session.connected(granted(&ack), Instant::now());
    link.writer = Some(writer);
    link.closer = Some(reader.closer());
    let conn = link.conn;
    drop(link);
    log::info!("mqtt connected");
    if let Some(id) = &ack.assigned_client_id {
        log::info!("mqtt broker assigned the client id {id:?}");
    }
    shared.wake();
    Some(conn)
}

/// What a CONNACK grants the session: at MQTT 3.1.1 nothing beyond our own bounds; at MQTT 5
/// the broker's limits, each where it set one.
fn granted(ack: &wire::ConnAck) -> Granted {
    let mut g = Granted::v311(ack.session_present);
    if let Some(n) = ack.receive_max {
        g.receive_max = n.max(1);
    }
    if let Some(n) = ack.max_packet {
        g.max_packet = g.max_packet.min(usize::try_from(n).unwrap_or(usize::MAX));
    }
    g.topic_alias_max = ack.topic_alias_max.unwrap_or(0);
    g.keep_alive = ack
        .server_keep_alive
        .map(|s| Duration::from_secs(u64::from(s)));
    g.max_qos = ack.max_qos.unwrap_or(2);
    g.retain = ack.retain_available.unwrap_or(true);
    g
}

/// Reads connection `conn` until it ends or the session leaves it, and feeds what comes to the
/// session; ticks it when nothing comes for [`CONN_TICK`]. Whether the end was reported at
/// warning level.
fn read(shared: &Shared, mut reader: wire::Reader, conn: u64) -> bool {
    let closer = reader.closer();
    if let Err(e) = reader.set_read_timeout(Some(CONN_TICK)) {
        closer.close();
        return lost(shared, conn, &wire::Error::from(e));
    }
    loop {
        let got = reader.next();
        let now = Instant::now();
        let mut link = shared.lock();
        if link.conn != conn || !link.session.is_connected() {
            // The session left it: a write failed, or no acknowledgement or PINGRESP came.
            drop(link);
            closer.close();
            return true;
        }
        let s = &mut link.session;
        match got {
            Ok(Incoming::PubAck(pkid, code)) => s.acked(pkid, Ack::of(code), now),
            Ok(Incoming::PubComp(pkid)) => s.acked(pkid, Ack::Ok, now),
            Ok(Incoming::PubRec(pkid, code)) if code >= 0x80 => s.acked(pkid, Ack::of(code), now),
            Ok(Incoming::PubRec(pkid, _)) => s.pubrec(pkid, now),
            Ok(Incoming::PingResp) => s.ping_resp(now),
            Ok(Incoming::Other) => continue,
            Ok(Incoming::Disconnect(code)) => {
                drop(link);
                closer.close();
                let e = match code {
                    0 => wire::Error::Closed,
                    _ => wire::Error::Disconnected(code),
                };
                return lost(shared, conn, &e);
            }
            Err(wire::Error::Timeout) => s.tick(now),
            Err(e) => {
                drop(link);
                closer.close();
                return lost(shared, conn, &e);
            }
        }
        drop(link);
        shared.wake();
    }
}

/// Connection `conn` ended with `e`: the session leaves it, and it is said at warning level
/// unless the backend is stopping. True (the spell without a connection is reported).
fn lost(shared: &Shared, conn: u64, e: &wire::Error) -> bool {
    let mut link = shared.lock();
    let stopping = link.session.is_stopping();
    if link.conn == conn && link.session.is_connected() {
        link.session.disconnected(e.to_string(), Instant::now());
        drop(link);
        if !stopping {
            log::warn!("mqtt connection lost: {e}");
        }
        shared.wake();
    }
    true
}

/// A connection attempt failed: tells the session and says so once per spell. False when
/// stopping.
fn connect_failed(shared: &Shared, e: &wire::Error, reported: &mut bool) -> bool {
    let stopping = {
        let mut link = shared.lock();
        link.session.disconnected(e.to_string(), Instant::now());
        link.session.is_stopping()
    };
    if stopping {
        return false;
    }
    if !*reported {
        // The first failed attempt of a spell: a refused password or certificate must not be
        // silent at the default log level.
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
        // The publisher first: it spools, says offline and disconnects; then the connection
        // thread, which ends when the broker closes the connection, on our stop signal while
        // it backs off, or when the connection is shut down here.
        if !threads.is_empty() {
            let pub_thread = threads.remove(0);
            join_by(pub_thread, start + Duration::from_millis(2600));
        }
        let _ = self.stop_conn.try_send(());
        for t in threads {
            wait_for_end(&t, Instant::now() + Duration::from_millis(200));
            if !t.is_finished() {
                if let Some(closer) = &self.shared.lock().closer {
                    closer.close();
                }
            }
            wait_for_end(&t, start + Duration::from_millis(2950));
            if t.is_finished() {
                let _ = t.join();
            }
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
            "droppedLines": c.dropped_lines,
            "droppedAgent": c.dropped_agent,
            "reconnects": c.reconnects,
            "refused": refused_json(&c),
            "lastError": s.last_error(),
            "query": self.query.get().map(|q| q.json()),
        })
    }

    fn metrics(&self, out: &mut String) {
        let link = self.shared.lock();
        let s = &link.session;
        let c = s.counters();
        let lines: [(&str, &str, &str, u64); 10] = [
            ("published_total", "counter", "Messages handed to the broker connection.", c.published),
            ("acknowledged_total", "counter", "Messages the broker acknowledged (QoS 1/2) or that were written to the socket (QoS 0).", c.acknowledged),
            ("spooled_total", "counter", "Messages written to the disk spool.", c.spooled),
            ("dropped_total", "counter", "Messages dropped because the spool was full or failed, or the broker refused them (MQTT 5).", c.dropped),
            ("dropped_lines_total", "counter", "Container lines (and lifecycle messages) dropped.", c.dropped_lines),
            ("dropped_agent_total", "counter", "The agent's own messages dropped.", c.dropped_agent),
            ("reconnects_total", "counter", "Connections to the broker after the first.", c.reconnects),
            ("connected", "gauge", "1 while connected to the broker.", u64::from(s.is_connected())),
            ("queue_messages", "gauge", "Messages waiting in memory.", s.queued() as u64),
            ("spool_bytes", "gauge", "Bytes in the disk spool.", s.spool_bytes()),
        ];
        crate::stats::write_metrics(out, "container_logd_mqtt_", &lines);
        write_refused_metrics(out, &c);
        if let Some(q) = self.query.get() {
            let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let lines: [(&str, &str, &str, u64); 4] = [
                (
                    "answered_total",
                    "counter",
                    "Log queries over MQTT answered.",
                    get(&q.answered),
                ),
                (
                    "bad_total",
                    "counter",
                    "Log queries over MQTT answered with an error.",
                    get(&q.bad),
                ),
                (
                    "dropped_total",
                    "counter",
                    "Log queries over MQTT dropped: too many waited.",
                    get(&q.dropped),
                ),
                (
                    "parts_total",
                    "counter",
                    "Answer parts published.",
                    get(&q.parts),
                ),
            ];
            crate::stats::write_metrics(out, "container_logd_mqtt_query_", &lines);
        }
    }
}

/// The messages the broker refused for good, by reason (health's `mqtt.refused`).
fn refused_json(c: &session::Counters) -> serde_json::Value {
    let mut by = serde_json::Map::new();
    for (i, (_, name, _)) in session::REFUSALS.iter().enumerate() {
        by.insert((*name).into(), c.refused[i].into());
    }
    by.insert("other".into(), c.refused[session::REFUSALS.len()].into());
    serde_json::Value::Object(by)
}

/// `container_logd_mqtt_refused_total{reason="…"}`, one series per reason.
fn write_refused_metrics(out: &mut String, c: &session::Counters) {
    use std::fmt::Write as _;
    let name = "container_logd_mqtt_refused_total";
    let _ = writeln!(
        out,
        "# HELP {name} Messages the broker refused for good (MQTT 5 reason code 0x80 or more), \
         by reason; also counted in dropped_total.\n# TYPE {name} counter"
    );
    let reasons = session::REFUSALS.iter().map(|r| r.2).chain(["other"]);
    for (reason, n) in reasons.zip(c.refused) {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
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
    wait_for_end(&t, deadline);
    if t.is_finished() {
        let _ = t.join();
    }
}

/// Waits until `t` has ended or `deadline` has passed.
fn wait_for_end(t: &JoinHandle<()>, deadline: Instant) {
    while !t.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}
