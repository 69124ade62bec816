//! The agent's life: builds the pipeline from a [`Config`] (backends, monitor, API), tells
//! systemd how it goes, saves resume cursors, and takes it down in a known order on SIGTERM or
//! SIGINT: readers first, then backends (flushing files, acknowledging or spooling MQTT), then
//! the final cursors, within SPEC's 5 s.
//!
//! Thread `housekeeping` moves cursors forward every [`SAVE_EVERY`] and pings the systemd
//! watchdog only while the file writer still answers.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::api::{self, Api};
use crate::backend::local::files::Settings;
use crate::backend::local::LocalBackend;
use crate::backend::mqtt::MqttBackend;
use crate::backend::{Backend, Progress};
use crate::config::Config;
use crate::engine::Engine;
use crate::monitor::cursor::CursorStore;
use crate::monitor::{Backoff, Monitor};
use crate::notify;
use crate::stats::Stats;

/// How often resume cursors are written (when they moved).
pub const SAVE_EVERY: Duration = Duration::from_secs(2);

/// A fatal start-up problem (exit code 1).
#[derive(Debug)]
pub enum Error {
    /// A directory or file of ours could not be made or read.
    State {
        what: &'static str,
        err: std::io::Error,
    },
    /// `DOCKER_HOST` cannot be used.
    Engine(crate::engine::Error),
    /// The MQTT backend could not start (bad TLS files, spool).
    Mqtt(String),
    /// The API address could not be bound.
    Api(std::io::Error),
    /// Signal handlers could not be installed.
    Signals(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::State { what, err } => write!(f, "{what}: {err}"),
            Error::Engine(e) => write!(f, "{e}"),
            Error::Mqtt(e) => write!(f, "mqtt: {e}"),
            Error::Api(e) => write!(f, "api: {e}"),
            Error::Signals(e) => write!(f, "signal handlers: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> Result<(), Error> {
    let cfg = Arc::new(cfg);
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(Error::Signals)?;
    let stats = Arc::new(Stats::default());
    let (notes_tx, notes_rx) = crossbeam_channel::bounded(256);
    crate::agentlog::forward_to(notes_tx);

    let cursors = Arc::new(
        CursorStore::load(&cfg.state_dir).map_err(|err| Error::State {
            what: "STATE_DIR",
            err,
        })?,
    );
    let n = 1 + usize::from(cfg.mqtt.is_some());
    let progress = Arc::new(Progress::new(n));
    let files = cfg.log_file_persistence.then(|| Settings {
        dir: cfg.log_dir.clone(),
        max_bytes: cfg.log_file_max_bytes,
        keep: cfg.log_file_keep,
    });
    let local =
        LocalBackend::start(cfg.log_max_memory, files, progress.clone(), 0).map_err(|err| {
            Error::State {
                what: "LOG_DIR",
                err,
            }
        })?;
    let mut backends: Vec<Arc<dyn Backend>> = vec![local.clone()];
    if let Some(m) = &cfg.mqtt {
        let mqtt = MqttBackend::start(
            m,
            &cfg.state_dir,
            progress.clone(),
            1,
            &cfg.hostname,
            env!("CARGO_PKG_VERSION"),
        )
        .map_err(|e| Error::Mqtt(e.to_string()))?;
        backends.push(mqtt);
    }

    let mut engine = Engine::new(&cfg.docker_host).map_err(Error::Engine)?;
    let mut backoff = Backoff::new();
    let mut told = false;
    // READY=1 waits for the engine; a stop signal meanwhile still stops cleanly.
    let version = loop {
        match engine.negotiate() {
            Ok(v) => break Some(v),
            Err(e) => {
                if !told {
                    log::error!("engine at {} unreachable: {e}; retrying", cfg.docker_host);
                    told = true;
                }
                notify::notify(&format!(
                    "STATUS=waiting for the engine at {}",
                    cfg.docker_host
                ));
                if wait_for_stop(&mut signals, backoff.next_delay()) {
                    break None;
                }
            }
        }
    };
    let Some(version) = version else {
        for b in &backends {
            b.shutdown();
        }
        return Ok(());
    };
    stats.docker_up.store(true, Ordering::Relaxed);
    if let Ok(mut v) = stats.api_version.lock() {
        *v = version.clone();
    }
    log::info!(
        "container-logd {} started: engine {} (API {version}), mqtt {}",
        env!("CARGO_PKG_VERSION"),
        cfg.docker_host,
        cfg.mqtt
            .as_ref()
            .map(|m| format!("{}:{}", m.host, m.port))
            .unwrap_or_else(|| "off".into())
    );

    let mut monitor = Monitor::start(
        cfg.clone(),
        engine,
        backends.clone(),
        stats.clone(),
        cursors.clone(),
        progress.clone(),
        notes_rx,
    )
    .map_err(|err| Error::State {
        what: "threads",
        err,
    })?;

    let mut api = match cfg.api_listen {
        Some(addr) => {
            let ctx = api::Context {
                ring: local.ring().clone(),
                monitor: monitor.shared().clone(),
                backends: backends.clone(),
                stats: stats.clone(),
                token: cfg.api_token.clone(),
            };
            match Api::start(addr, ctx) {
                Ok(a) => {
                    log::info!("API listening on http://{}", a.addr);
                    Some(a)
                }
                Err(e) => {
                    monitor.stop();
                    for b in &backends {
                        b.shutdown();
                    }
                    return Err(Error::Api(e));
                }
            }
        }
        None => None,
    };

    let (hk_stop_tx, hk_stop_rx) = crossbeam_channel::bounded::<()>(0);
    let hk = {
        let (cursors, progress, local, stats) = (
            cursors.clone(),
            progress.clone(),
            local.clone(),
            stats.clone(),
        );
        let shared = monitor.shared().clone();
        std::thread::Builder::new()
            .name("housekeeping".into())
            .stack_size(128 * 1024)
            .spawn(move || housekeeping(hk_stop_rx, &cursors, &progress, &local, &stats, &shared))
            .map_err(|err| Error::State {
                what: "threads",
                err,
            })?
    };
    notify::notify("READY=1");

    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                log::info!("SIGHUP: reopening log files");
                local.reopen();
            }
            _ => break,
        }
    }

    let t0 = Instant::now();
    notify::notify("STOPPING=1");
    log::info!("stopping");
    monitor.stop();
    stop_thread(hk_stop_tx, hk);
    for b in &backends {
        b.shutdown();
    }
    cursors.advance(&progress.safe());
    if let Err(e) = cursors.save(true) {
        log::error!("cannot save resume cursors: {e}");
    }
    if let Some(a) = api.as_mut() {
        a.stop();
    }
    log::info!("stopped in {} ms", t0.elapsed().as_millis());
    Ok(())
}

/// Waits up to `d` for SIGTERM/SIGINT; true when one came.
fn wait_for_stop(signals: &mut Signals, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if signals.pending().any(|s| s == SIGTERM || s == SIGINT) {
            return true;
        }
        std::thread::sleep(
            Duration::from_millis(200).min(until.saturating_duration_since(Instant::now())),
        );
    }
    false
}

fn stop_thread(stop: Sender<()>, handle: JoinHandle<()>) {
    drop(stop);
    let _ = handle.join();
}

fn housekeeping(
    stop: Receiver<()>,
    cursors: &CursorStore,
    progress: &Progress,
    local: &LocalBackend,
    stats: &Stats,
    shared: &crate::monitor::Shared,
) {
    let watchdog = notify::watchdog_interval();
    let tick = watchdog.map_or(SAVE_EVERY, |w| w.min(SAVE_EVERY));
    let mut last_save = Instant::now();
    let mut save_failing = false;
    loop {
        if !matches!(
            stop.recv_timeout(tick),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        ) {
            return;
        }
        if last_save.elapsed() >= SAVE_EVERY {
            last_save = Instant::now();
            cursors.advance(&progress.safe());
            match cursors.save(false) {
                Ok(()) => save_failing = false,
                Err(e) if !save_failing => {
                    save_failing = true;
                    log::error!("cannot save resume cursors: {e}");
                }
                Err(_) => {}
            }
        }
        if watchdog.is_some() {
            // The writer answering means the pipeline behind the readers still moves.
            if local.sync(Duration::from_secs(5)) {
                notify::notify("WATCHDOG=1");
            }
            notify::notify(&format!(
                "STATUS=following {} containers, {} lines read, engine {}",
                shared.views().len(),
                Stats::get(&stats.lines_read),
                if stats.docker_up.load(Ordering::Relaxed) {
                    "up"
                } else {
                    "down"
                }
            ));
        }
    }
}
