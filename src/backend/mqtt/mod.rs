//! The MQTT backend (docs/CONTRACT.md §3–§5): streams every message to a broker, never losing one while the
//! broker is away (memory, then the disk spool), with a retained online/offline status.
//!
//! Two threads: `mqtt-pub` owns the rumqttc `Client`, takes messages from the backend's bounded
//! channel, batches, spools and publishes; `mqtt-conn` only iterates the `Connection` (where
//! rumqttc's own current-thread runtime does the I/O), matches packet ids to what was sent, and
//! backs off between connection attempts. Their shared state is in [`link`].
//!
//! This module must never block `log()` for long while the broker is away, never count a
//! message delivered before the broker acknowledged it, and never log the password.

mod link;
pub mod spool;
pub mod tls;
pub mod topic;
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
    Client, Connection, Event, Incoming, LastWill, MqttOptions, MqttState, Outgoing, QoS,
    TlsConfiguration, Transport,
};

use self::link::Core;
use super::{Backend, Lane};
use crate::config::MqttConfig;
use crate::message::LogMessage;

/// Groups of messages (a reader's lines of one read, up to 64) waiting between `log_many()`
/// and the publisher: one send and one wake-up per group, not per message.
const CHANNEL: usize = 8;
/// Messages the publisher takes in under one lock.
const INTAKE: usize = 256;
/// rumqttc's own in-flight window (packet ids 1..N): more than ours, with room for the status.
const CLIENT_INFLIGHT: u16 = 200;
const _: () = assert!(link::MAX_INFLIGHT_UNITS + 4 <= CLIENT_INFLIGHT as usize);
/// The client's request channel: more than our window, the status and the disconnect.
const REQUEST_CAP: usize = link::MAX_INFLIGHT_UNITS + 16;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for acknowledgements before spooling the rest.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// How long a disconnect may last before `healthy()` says so.
const GRACE: Duration = Duration::from_secs(3);
/// Connected with publishes in flight and no acknowledgement for this long: the connection is
/// dropped and made again, and what was in flight is sent again. A broker that answers pings
/// but no publishes, or a client that stopped sending, must not hold the logs back for good
/// (`make bench` saw the window stall that way, about once in ten runs of 20 flat-out
/// containers at QoS 1, with nothing on the wire either way).
const ACK_STALL: Duration = Duration::from_secs(10);
/// How often the connection thread looks for such a stall when rumqttc has nothing to say, while
/// connected. Longer than rumqttc's own network timeout (5 s), so the wait it cuts short is
/// never one for a connect or a flush; while not connected, rumqttc is never cut short.
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
    core: Mutex<Core>,
    /// Wakes the publisher when the connection state changes or the in-flight window frees.
    wake: Sender<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
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
        let transport = if cfg.tls {
            let config = tls::client_config(cfg)?;
            Some(Transport::tls_with_config(TlsConfiguration::Rustls(config)))
        } else {
            None
        };
        let spool_dir = state_dir.join("spool");
        let spool =
            spool::Spool::open(&spool_dir, cfg.spool_max_bytes).map_err(|err| Error::Spool {
                path: spool_dir.clone(),
                err,
            })?;
        if spool.pending() > 0 {
            log::info!(
                "mqtt spool holds {} messages from before, sending them first",
                spool.pending()
            );
        }

        let online = topic::status_payload("online", host, version);
        let offline = topic::status_payload("offline", host, version);
        let mut options = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        options
            .set_keep_alive(cfg.keepalive.max(Duration::from_secs(1)))
            .set_clean_session(true)
            .set_max_packet_size(link::MAX_PACKET, link::MAX_PACKET)
            .set_inflight(CLIENT_INFLIGHT)
            .set_last_will(LastWill::new(
                cfg.status_topic.clone(),
                offline.clone().into_bytes(),
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(user) = &cfg.username {
            let password = cfg.password.as_ref().map(|p| p.expose()).unwrap_or("");
            options.set_credentials(user.clone(), password);
        }
        if let Some(t) = transport {
            options.set_transport(t);
        }
        let (client, connection) = Client::new(options, REQUEST_CAP);

        let (wake_tx, wake_rx) = bounded(1);
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(cfg, spool, lane, online, offline)),
            wake: wake_tx,
        });
        let (tx, rx) = bounded(CHANNEL);
        let (stop_pub, stop_pub_rx) = bounded(1);
        let (stop_conn, stop_conn_rx) = bounded(1);

        let s = shared.clone();
        let pub_thread = thread::Builder::new()
            .name("mqtt-pub".into())
            .stack_size(PUB_STACK)
            .spawn(move || run_pub(&s, &client, &rx, &wake_rx, &stop_pub_rx))
            .map_err(Error::Thread)?;
        let s = shared.clone();
        let conn_thread = thread::Builder::new()
            .name("mqtt-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || run_conn(&s, connection, &stop_conn_rx))
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

/// The publisher: takes messages in, batches, spools and publishes until told to stop.
fn run_pub(
    shared: &Shared,
    client: &Client,
    rx: &Receiver<Vec<Arc<LogMessage>>>,
    wake_rx: &Receiver<()>,
    stop_rx: &Receiver<()>,
) {
    let mut got: Vec<Arc<LogMessage>> = Vec::with_capacity(INTAKE);
    loop {
        let now = Instant::now();
        let (accept, deadline) = {
            let core = shared.lock();
            (core.accepting(now), core.next_deadline())
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
        let now = Instant::now();
        let mut core = shared.lock();
        for m in got.drain(..) {
            core.intake(m, now);
        }
        core.step(client, now);
        drop(core);
        if stop {
            break;
        }
    }
    shutdown_pub(shared, client, rx, wake_rx);
}

/// Flushes batches, waits a little for acknowledgements, spools the rest, says offline and
/// disconnects.
fn shutdown_pub(
    shared: &Shared,
    client: &Client,
    rx: &Receiver<Vec<Arc<LogMessage>>>,
    wake_rx: &Receiver<()>,
) {
    let deadline = Instant::now() + ACK_WAIT;
    {
        let mut core = shared.lock();
        let now = Instant::now();
        while let Ok(msgs) = rx.try_recv() {
            for m in msgs {
                core.intake(m, now);
            }
        }
        core.close_batches(now, true);
        core.draining = true;
    }
    loop {
        {
            let mut core = shared.lock();
            core.step(client, Instant::now());
            if core.drained() || !core.connected || Instant::now() >= deadline {
                break;
            }
        }
        let _ = wake_rx.recv_timeout(Duration::from_millis(20));
    }
    let mut core = shared.lock();
    core.stopping = true;
    core.spool_everything();
    if let Err(e) = core.spool.save_cursor() {
        log::warn!("cannot save the mqtt spool cursor: {e}");
    }
    if core.connected {
        let _ = client.try_publish(
            core.status_topic.clone(),
            QoS::AtLeastOnce,
            true,
            core.offline.clone().into_bytes(),
        );
        let _ = client.try_disconnect();
    }
}

/// Drops what rumqttc still holds of the last connection; the core re-sends it, in order, after
/// the next CONNACK. Called under the core's lock, so the publisher cannot hand over more
/// requests meanwhile.
fn forget_session(connection: &mut Connection) {
    connection.eventloop.clean();
    connection.eventloop.pending.clear();
    connection.eventloop.state = MqttState::new(CLIENT_INFLIGHT, false);
}

/// The connection thread: drives rumqttc's event loop and reports what it sees to the core.
fn run_conn(shared: &Shared, mut connection: Connection, stop_rx: &Receiver<()>) {
    let mut backoff = BACKOFF_MIN;
    // Whether this spell without a connection was reported at warning level: once per spell,
    // the retries only at debug level (as the engine's own reconnect loop does).
    let mut reported = false;
    // This thread alone connects and disconnects, so it knows without asking the core.
    let mut connected = false;
    loop {
        let next = if connected {
            connection.recv_timeout(CONN_TICK)
        } else {
            connection
                .recv()
                .map_err(|_| rumqttc::RecvTimeoutError::Disconnected)
        };
        let event = match next {
            Ok(e) => e,
            Err(rumqttc::RecvTimeoutError::Timeout) => {
                let mut core = shared.lock();
                if core.ack_stalled(Instant::now(), ACK_STALL) {
                    let reason = format!(
                        "no acknowledgement for {} s with publishes in flight; reconnecting",
                        ACK_STALL.as_secs()
                    );
                    log::warn!("mqtt: {reason}");
                    core.on_disconnect(reason);
                    forget_session(&mut connection);
                    // The next poll connects afresh.
                    connection.eventloop.network = None;
                    connected = false;
                    drop(core);
                    shared.wake();
                }
                continue;
            }
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                let mut core = shared.lock();
                if core.stopping {
                    break;
                }
                core.on_connack();
                drop(core);
                connected = true;
                log::info!("mqtt connected");
                backoff = BACKOFF_MIN;
                reported = false;
                shared.wake();
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                shared.lock().on_sent(pkid);
                shared.wake();
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                shared.lock().on_ack(ack.pkid);
                shared.wake();
            }
            Ok(Event::Incoming(Incoming::PubComp(comp))) => {
                shared.lock().on_ack(comp.pkid);
                shared.wake();
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                if shared.lock().stopping {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let (was_connected, stopping) = {
                    let mut core = shared.lock();
                    let was = core.connected;
                    core.on_disconnect(e.to_string());
                    forget_session(&mut connection);
                    connected = false;
                    (was, core.stopping)
                };
                if stopping {
                    break;
                }
                if was_connected {
                    log::warn!("mqtt connection lost: {e}");
                    reported = true;
                } else if !reported {
                    // The first failed attempt since the start: a refused password or
                    // certificate must not be silent at the default log level.
                    log::warn!("mqtt cannot connect: {e}; retrying");
                    reported = true;
                } else {
                    log::debug!("mqtt connect failed: {e}");
                }
                shared.wake();
                match stop_rx.recv_timeout(backoff) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    let mut core = shared.lock();
    if core.connected {
        core.on_disconnect("stopped".into());
    }
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

    fn healthy(&self) -> bool {
        let core = self.shared.lock();
        let connected_enough =
            core.connected || core.disconnected_since.is_some_and(|t| t.elapsed() < GRACE);
        let recent_drop = core
            .last_drop
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        connected_enough && !recent_drop
    }

    fn health(&self) -> serde_json::Value {
        let core = self.shared.lock();
        let c = core.counters;
        serde_json::json!({
            "connected": core.connected,
            "broker": self.broker,
            "queue": core.queued(),
            "spoolBytes": core.spool.bytes(),
            "published": c.published,
            "acknowledged": c.acknowledged,
            "spooled": c.spooled,
            "dropped": c.dropped,
            "reconnects": c.reconnects,
            "lastError": core.last_error,
        })
    }

    fn metrics(&self, out: &mut String) {
        let core = self.shared.lock();
        let c = core.counters;
        let lines: [(&str, &str, &str, u64); 8] = [
            ("published_total", "counter", "Messages handed to the broker connection.", c.published),
            ("acknowledged_total", "counter", "Messages the broker acknowledged (QoS 1/2) or that were written to the socket (QoS 0).", c.acknowledged),
            ("spooled_total", "counter", "Messages written to the disk spool.", c.spooled),
            ("dropped_total", "counter", "Messages dropped because the spool was full or failed.", c.dropped),
            ("reconnects_total", "counter", "Connections to the broker after the first.", c.reconnects),
            ("connected", "gauge", "1 while connected to the broker.", u64::from(core.connected)),
            ("queue_messages", "gauge", "Messages waiting in memory.", core.queued() as u64),
            ("spool_bytes", "gauge", "Bytes in the disk spool.", core.spool.bytes()),
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
