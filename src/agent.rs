//! The agent's life: builds the pipeline from a [`Config`] (backends, monitor, API), tells
//! systemd how it goes, saves resume cursors, and takes it down in a known order on SIGTERM or
//! SIGINT: readers first, then backends (flushing files, acknowledging or spooling MQTT), then
//! the final cursors, within the contract's 5 s (docs/CONTRACT.md §2).
//!
//! Thread `housekeeping` saves cursors soon after a container's first line is taken and then
//! every [`SAVE_EVERY`], and pings the systemd
//! watchdog only while the file writer still answers.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::agentlog::Note;
use crate::api::{self, Api};
use crate::backend::local::files::Settings;
use crate::backend::local::LocalBackend;
use crate::backend::mqtt::MqttBackend;
use crate::backend::{Backend, Progress};
use crate::config::Config;
use crate::engine::Engine;
use crate::monitor::cursor::{CursorStore, SaveSchedule};
use crate::monitor::{Backoff, Monitor, Shared};
use crate::notify;
use crate::stats::Stats;

/// How often resume cursors are written (when they moved).
pub const SAVE_EVERY: Duration = Duration::from_secs(2);
/// How soon a container's first cursor is written (firsts within it are written together).
const SAVE_FIRST: Duration = Duration::from_millis(50);
/// The rounds' interval while nothing moves (no line read, no container come or gone, the
/// engine as it was): an idle agent wakes for them; the next line read is saved within
/// [`SAVE_FIRST`], and the MQTT status's health follows other changes within this time (it goes
/// out at most every 10 s anyway). A round after a sleep cost 2.4 to 8 ms of CPU on the bench's
/// machine, where memory touched after a sleep is slow (README, Performance).
const QUIET_EVERY: Duration = Duration::from_secs(10);
/// How long the agent must have been quiet (no line read, no container come or gone) before the
/// allocator's free pages go back to the kernel.
const TRIM_QUIET: Duration = Duration::from_secs(2);
/// And at least this often, busy or idle: the heap's small comings and goings (cursor saves,
/// keep-alives) touch freed pages again, so an idle agent's memory creeps back up
/// (~3 KiB/s with 200 containers followed).
const TRIM_EVERY: Duration = Duration::from_secs(30);

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

/// Runs the agent until SIGTERM or SIGINT: start, READY=1, follow (once the engine answers),
/// wait, stop. READY=1 never waits for the engine, so installing the agent before the engine,
/// or with `DOCKER_HOST` wrong, does not hold up systemd (and `apt install`).
pub fn run(cfg: Config) -> Result<(), Error> {
    allocator::configure();
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(Error::Signals)?;
    let mut pipeline = Pipeline::new(cfg);
    let started = pipeline.start().and_then(|()| {
        notify::notify("READY=1");
        pipeline.follow(&mut signals)
    });
    if let Ok(Started::Running) = started {
        pipeline.wait(&mut signals);
    }
    pipeline.stop();
    started.map(|_| ())
}

/// How [`Pipeline::follow`] ended without an error.
enum Started {
    Running,
    /// A stop signal came while the engine was still awaited.
    StoppedEarly,
}

/// The agent's parts, started in dependency order (state, engine client, backends, API; then,
/// once the engine answers, readers and housekeeping) and stopped in one order on every path,
/// whatever was started.
struct Pipeline {
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    progress: Arc<Progress>,
    notes: Option<Receiver<Note>>,
    /// Told when a container is taken for the first time.
    firsts: Option<Receiver<()>>,
    cursors: Option<Arc<CursorStore>>,
    /// The monitor's state, made before the engine answers (the API shows it).
    shared: Option<Arc<Shared>>,
    local: Option<Arc<LocalBackend>>,
    mqtt: Option<Arc<MqttBackend>>,
    /// The fleet's broker connection: queries (`MQTT_QUERY`), Home Assistant (`HA_DISCOVERY`).
    fleet: Option<crate::fleet::link::FleetLink>,
    discovery: Option<crate::fleet::discovery::Shared>,
    backends: Vec<Arc<dyn Backend>>,
    monitor: Option<Monitor>,
    api: Option<Api>,
    housekeeping: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Pipeline {
    fn new(cfg: Config) -> Pipeline {
        Pipeline {
            cfg: Arc::new(cfg),
            stats: Arc::new(Stats::default()),
            progress: Arc::new(Progress::new()),
            notes: None,
            firsts: None,
            cursors: None,
            shared: None,
            local: None,
            mqtt: None,
            fleet: None,
            discovery: None,
            backends: Vec::new(),
            monitor: None,
            api: None,
            housekeeping: None,
        }
    }

    /// Starts what needs no engine: state, backends, the monitor's state and the API.
    fn start(&mut self) -> Result<(), Error> {
        let (notes_tx, notes_rx) = crossbeam_channel::bounded(256);
        crate::agentlog::forward_to(notes_tx);
        self.notes = Some(notes_rx);
        let (firsts_tx, firsts_rx) = crossbeam_channel::bounded(1);
        self.progress.tell_first(firsts_tx);
        self.firsts = Some(firsts_rx);
        let cursors = CursorStore::load(&self.cfg.state_dir).map_err(state_error("STATE_DIR"))?;
        self.stats.cursors_saved(cursors.save_alive());
        let cursors = Arc::new(cursors);
        self.cursors = Some(cursors.clone());
        let engine = Engine::new(&self.cfg.docker_host).map_err(Error::Engine)?;
        self.start_backends()?;
        self.shared = Some(Shared::new(
            self.cfg.clone(),
            engine,
            self.backends.clone(),
            self.stats.clone(),
            cursors,
            self.progress.clone(),
        ));
        self.start_api()
    }

    /// Awaits the engine, then follows its containers and starts housekeeping.
    fn follow(&mut self, signals: &mut Signals) -> Result<Started, Error> {
        if !self.await_engine(signals) {
            return Ok(Started::StoppedEarly);
        }
        self.start_monitor()?;
        self.start_housekeeping()?;
        Ok(Started::Running)
    }

    fn start_backends(&mut self) -> Result<(), Error> {
        let cfg = self.cfg.clone();
        let files = cfg.log_file_persistence.then(|| Settings {
            dir: cfg.log_dir.clone(),
            max_bytes: cfg.log_file_max_bytes,
            keep: cfg.log_file_keep,
        });
        let local = LocalBackend::start(cfg.log_max_memory, files, self.progress.lane())
            .map_err(state_error("LOG_DIR"))?;
        self.local = Some(local.clone());
        self.backends.push(local.clone());
        if let Some(m) = &cfg.mqtt {
            let mqtt = MqttBackend::start(
                m,
                &cfg.state_dir,
                self.progress.lane(),
                &cfg.hostname,
                env!("CARGO_PKG_VERSION"),
            )
            .map_err(|e| Error::Mqtt(e.to_string()))?;
            self.mqtt = Some(mqtt.clone());
            self.backends.push(mqtt.clone());
            if m.query || m.ha_discovery {
                self.start_fleet(m, &mqtt, &local)?;
            }
        }
        Ok(())
    }

    /// Starts `mqtt-fleet` (docs/CONTRACT.md §10): queries over the ring and the files, and
    /// Home Assistant discovery fed by a tap among the backends.
    fn start_fleet(
        &mut self,
        m: &crate::config::MqttConfig,
        mqtt: &MqttBackend,
        local: &LocalBackend,
    ) -> Result<(), Error> {
        use crate::fleet::{discovery, link, query};
        let cfg = &self.cfg;
        let options = crate::backend::mqtt::options(m, &cfg.hostname, "")
            .map_err(|e| Error::Mqtt(e.to_string()))?;
        let query = m.query.then(|| {
            let sources = query::Sources {
                ring: local.ring().clone(),
                log_dir: cfg.log_file_persistence.then(|| cfg.log_dir.clone()),
            };
            (m.query_topic.clone(), sources)
        });
        let discovery = m.ha_discovery.then(|| {
            Arc::new(std::sync::Mutex::new(discovery::Discovery::new(
                &m.ha_prefix,
                &cfg.hostname,
                env!("CARGO_PKG_VERSION"),
                &m.status_topic,
                m.ha_expiry,
                Instant::now(),
            )))
        });
        if let Some(d) = &discovery {
            self.backends.push(Arc::new(discovery::Tap(d.clone())));
        }
        self.discovery = discovery.clone();
        let duties = link::Duties { query, discovery };
        let fleet = link::FleetLink::start(options, duties).map_err(state_error("threads"))?;
        if m.query {
            mqtt.show_query(fleet.stats.clone());
        }
        self.fleet = Some(fleet);
        Ok(())
    }

    /// Waits until the engine answers, after READY=1: says so in systemd's status and pings
    /// the watchdog meanwhile (housekeeping, which pings it later, is not running yet); false
    /// when a stop signal came first.
    fn await_engine(&mut self, signals: &mut Signals) -> bool {
        let Some(shared) = self.shared.as_ref() else {
            return false;
        };
        let host = &self.cfg.docker_host;
        let watchdog = notify::watchdog_interval();
        let mut backoff = Backoff::new();
        let mut next_try = Instant::now();
        // Said once per kind of failure (no socket yet, then one that refuses the user, …).
        let mut told = String::new();
        let version = loop {
            if Instant::now() >= next_try {
                match shared.engine.negotiate() {
                    Ok(v) => break v,
                    Err(e) if e.to_string() != told => {
                        told = e.to_string();
                        log::error!("engine at {host} unreachable: {e}; retrying{}", hint(&e));
                    }
                    Err(_) => {}
                }
                next_try = Instant::now() + backoff.next_delay();
            }
            if watchdog.is_some() {
                notify::notify("WATCHDOG=1");
            }
            notify::notify(&format!("STATUS=waiting for the engine at {host}"));
            let until_try = next_try.saturating_duration_since(Instant::now());
            if wait_for_stop(signals, until_try.min(watchdog.unwrap_or(Duration::MAX))) {
                return false;
            }
        };
        self.stats.docker_up.store(true, Ordering::Relaxed);
        if let Ok(mut v) = self.stats.api_version.lock() {
            *v = version.clone();
        }
        // Until housekeeping's first status: no longer "waiting".
        notify::notify(&format!(
            "STATUS=following the containers of the engine at {host} (API {version})"
        ));
        log::info!(
            "container-logd {} started: engine {host} (API {version}), mqtt {}",
            env!("CARGO_PKG_VERSION"),
            self.cfg
                .mqtt
                .as_ref()
                .map(|m| format!("{}:{}", m.host, m.port))
                .unwrap_or_else(|| "off".into())
        );
        true
    }

    fn start_monitor(&mut self) -> Result<(), Error> {
        let (Some(shared), Some(notes)) = (self.shared.clone(), self.notes.take()) else {
            return Ok(());
        };
        let monitor = Monitor::start(shared, notes).map_err(state_error("threads"))?;
        self.monitor = Some(monitor);
        Ok(())
    }

    fn start_api(&mut self) -> Result<(), Error> {
        let (Some(addr), Some(local), Some(shared)) = (
            self.cfg.api_listen,
            self.local.as_ref(),
            self.shared.as_ref(),
        ) else {
            return Ok(());
        };
        let ctx = api::Context {
            ring: local.ring().clone(),
            monitor: shared.clone(),
            backends: self.backends.clone(),
            stats: self.stats.clone(),
            token: self.cfg.api_token.clone(),
        };
        let limits = api::server::Limits {
            max_connections: self.cfg.api_max_connections,
            header_timeout: self.cfg.api_header_timeout,
            idle_timeout: self.cfg.api_idle_timeout,
        };
        let api = Api::start(addr, ctx, limits).map_err(Error::Api)?;
        log::info!("API listening on http://{}", api.addr);
        self.api = Some(api);
        Ok(())
    }

    fn start_housekeeping(&mut self) -> Result<(), Error> {
        let (Some(cursors), Some(local), Some(monitor), Some(firsts)) = (
            self.cursors.clone(),
            self.local.clone(),
            self.monitor.as_ref(),
            self.firsts.take(),
        ) else {
            return Ok(());
        };
        let hk = Housekeeping {
            cursors,
            progress: self.progress.clone(),
            local,
            stats: self.stats.clone(),
            monitor: monitor.shared().clone(),
            mqtt: self.mqtt.clone(),
            backends: self.backends.clone(),
            discovery: self.discovery.clone(),
        };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let handle = std::thread::Builder::new()
            .name("housekeeping".into())
            .stack_size(128 * 1024)
            .spawn(move || hk.run(&stop_rx, &firsts))
            .map_err(state_error("threads"))?;
        self.housekeeping = Some((stop_tx, handle));
        Ok(())
    }

    /// Until SIGTERM or SIGINT; SIGHUP reopens the log files.
    fn wait(&self, signals: &mut Signals) {
        for sig in signals.forever() {
            if sig != SIGHUP {
                break;
            }
            log::info!("SIGHUP: reopening log files");
            if let Some(local) = &self.local {
                local.reopen();
            }
        }
    }

    /// Stops what was started: readers first, then housekeeping, the backends (flushing files,
    /// acknowledging or spooling MQTT), the final cursors, the API; within the contract's 5 s (docs/CONTRACT.md §2).
    fn stop(&mut self) {
        let t0 = Instant::now();
        notify::notify("STOPPING=1");
        log::info!("stopping");
        // Cursors are saved only when readers ran: an agent stopped while it waited for the
        // engine leaves the last run's cursors (and its time alive) as they were.
        let read = self.monitor.is_some();
        if let Some(mut monitor) = self.monitor.take() {
            monitor.stop();
        }
        if let Some((stop, handle)) = self.housekeeping.take() {
            drop(stop);
            let _ = handle.join();
        }
        if let Some(mut fleet) = self.fleet.take() {
            fleet.stop();
        }
        for b in self.backends.drain(..) {
            b.shutdown();
        }
        if let Some(cursors) = self.cursors.take().filter(|_| read) {
            cursors.advance(&self.progress.safe());
            if let Err(e) = cursors.save(true) {
                log::error!("cannot save resume cursors: {e}");
            }
        }
        if let Some(mut api) = self.api.take() {
            api.stop();
        }
        // The process ends next and the kernel takes its memory back whole: freeing the ring's
        // messages one by one (10,000 by default) would cost as much as reading a thousand
        // lines. Every thread that shared them has been joined.
        std::mem::forget(self.local.take());
        log::info!("stopped in {} ms", t0.elapsed().as_millis());
    }
}

fn state_error(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |err| Error::State { what, err }
}

/// What to do when the engine's socket refuses the agent's user.
fn hint(e: &crate::engine::Error) -> &'static str {
    match e {
        crate::engine::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            " (the agent's user is not in the socket's group: sudo adduser container-logd \
             docker, or the socket's group, then sudo systemctl restart container-logd)"
        }
        _ => "",
    }
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

/// When to hand the allocator's free pages back: once the agent has been quiet for
/// [`TRIM_QUIET`] after doing something (lines read, containers come or gone), and every
/// [`TRIM_EVERY`] anyway. A burst (a backlog, a hundred containers attached at once) leaves the
/// heap as large as its peak; glibc gives back only the top of the heap by itself, and the free
/// pages it keeps count in the agent's memory.
struct TrimSchedule {
    /// Activity (lines read, containers followed) as last seen, and since when.
    seen: (u64, usize),
    changed: Instant,
    /// Activity at the last trim, and when that was.
    trimmed: (u64, usize),
    last: Instant,
}

impl TrimSchedule {
    fn new(now: Instant) -> TrimSchedule {
        TrimSchedule {
            seen: (0, 0),
            changed: now,
            trimmed: (0, 0),
            last: now,
        }
    }

    /// Whether to trim now, given the activity counters.
    fn due(&mut self, activity: (u64, usize), now: Instant) -> bool {
        if activity != self.seen {
            self.seen = activity;
            self.changed = now;
        }
        let settled =
            self.seen != self.trimmed && now.saturating_duration_since(self.changed) >= TRIM_QUIET;
        if settled || now.saturating_duration_since(self.last) >= TRIM_EVERY {
            self.trimmed = self.seen;
            self.last = now;
            return true;
        }
        false
    }
}

/// glibc's allocator (the builds for the Pi link glibc statically).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod allocator {
    use std::ffi::c_int;

    extern "C" {
        fn malloc_trim(pad: usize) -> c_int;
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }

    /// `mallopt(3)`'s bound on the number of malloc pools (`<malloc.h>`).
    const M_ARENA_MAX: c_int = -8;

    /// One malloc pool for all threads, as `MALLOC_ARENA_MAX=1` in the unit, wherever the agent
    /// runs: glibc would otherwise make up to eight per core as threads contend, and each keeps
    /// its own free pages (the unit's comment has the figures). An arena bound given in the
    /// environment is left as it is. Called before the agent starts its threads.
    pub fn configure() {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if tuned || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        // SAFETY: takes no pointer; glibc sets a parameter under its own lock.
        unsafe {
            mallopt(M_ARENA_MAX, 1);
        }
    }

    /// Hands the free pages of every arena back to the kernel (`malloc_trim(3)`), those in the
    /// middle of the heap too.
    pub fn trim() {
        // SAFETY: takes no pointer; glibc walks its own free lists under the arenas' locks.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Other allocators give their free pages back by themselves, or not at all, and have no pools
/// to bound.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod allocator {
    pub fn configure() {}

    pub fn trim() {}
}

/// Thread `housekeeping`: moves the cursors forward every [`SAVE_EVERY`], pings the systemd
/// watchdog while the file writer still answers, and keeps systemd's status line current.
struct Housekeeping {
    cursors: Arc<CursorStore>,
    progress: Arc<Progress>,
    local: Arc<LocalBackend>,
    stats: Arc<Stats>,
    monitor: Arc<crate::monitor::Shared>,
    /// Given the health for its retained status at every round.
    mqtt: Option<Arc<MqttBackend>>,
    backends: Vec<Arc<dyn Backend>>,
    /// Told which services are followed, for Home Assistant discovery.
    discovery: Option<crate::fleet::discovery::Shared>,
}

impl Housekeeping {
    fn run(&self, stop: &Receiver<()>, firsts: &Receiver<()>) {
        let watchdog = notify::watchdog_interval();
        let mut schedule = SaveSchedule::new(SAVE_EVERY, SAVE_FIRST, QUIET_EVERY, Instant::now());
        let mut trim = TrimSchedule::new(Instant::now());
        let mut pinged = Instant::now();
        let mut rate = LineRate::since(self.stats.started);
        loop {
            let now = Instant::now();
            let ping_in = watchdog.map_or(Duration::MAX, |w| {
                w.saturating_sub(now.saturating_duration_since(pinged))
            });
            crossbeam_channel::select! {
                recv(stop) -> _ => return,
                recv(firsts) -> _ => schedule.first_taken(),
                default(schedule.wait(now).min(ping_in)) => {}
            }
            let now = Instant::now();
            let activity = (
                Stats::get(&self.stats.lines_read),
                self.monitor.followed(),
                self.stats.docker_up.load(Ordering::Relaxed),
            );
            if schedule.due(now) {
                // A watch still waiting: no backend took a line since the last round, so no
                // cursor moved.
                if !self.progress.watching() {
                    self.save_cursors();
                }
                self.report_health(&mut rate, now);
                if schedule.saw(activity) {
                    self.progress.watch_next();
                }
            }
            if watchdog.is_some_and(|w| now.saturating_duration_since(pinged) >= w) {
                pinged = now;
                self.tell_systemd();
            }
            if trim.due((activity.0, activity.1), now) {
                allocator::trim();
            }
        }
    }

    /// Saves the cursors; a failure is said once per spell of failures and shown in health.
    fn save_cursors(&self) {
        self.cursors.advance(&self.progress.safe());
        self.stats.cursors_saved(self.cursors.save(false));
    }

    /// Gives the MQTT backend the health its retained status carries (docs/CONTRACT.md §10).
    fn report_health(&self, rate: &mut LineRate, now: Instant) {
        let Some(mqtt) = &self.mqtt else {
            return;
        };
        // The count only, unless discovery needs the services: views copy every container's
        // names, which made most of an idle round's cost.
        let containers = match &self.discovery {
            Some(d) => {
                let views = self.monitor.views();
                let followed = views
                    .iter()
                    .map(|v| (v.app_id.as_str(), v.service_name.as_str()));
                crate::fleet::discovery::lock(d).followed(followed, now);
                views.len()
            }
            None => self.monitor.followed(),
        };
        let (mut dropped, mut spool_bytes) = (0, 0);
        for b in &self.backends {
            let sum = b.summary();
            dropped += sum.dropped;
            spool_bytes += sum.spool_bytes;
        }
        mqtt.set_health(&crate::backend::mqtt::topic::Health {
            started_at: mqtt.started_at().to_string(),
            containers,
            spool_bytes,
            dropped,
            engine_up: self.stats.docker_up.load(Ordering::Relaxed),
            lines_per_min: rate.per_minute(Stats::get(&self.stats.lines_read), now),
        });
    }

    fn tell_systemd(&self) {
        // The writer answering means the pipeline behind the readers still moves.
        if self.local.sync(Duration::from_secs(5)) {
            notify::notify("WATCHDOG=1");
        }
        notify::notify(&format!(
            "STATUS=following {} containers, {} lines read, engine {}",
            self.monitor.views().len(),
            Stats::get(&self.stats.lines_read),
            if self.stats.docker_up.load(Ordering::Relaxed) {
                "up"
            } else {
                "down"
            }
        ));
    }
}

/// Lines read in the last minute, from samples of the running count.
struct LineRate {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl LineRate {
    /// Counting from `start`, when none had been read.
    fn since(start: Instant) -> LineRate {
        LineRate {
            samples: [(start, 0)].into(),
        }
    }

    /// Takes the count read by `now`; the lines read since the oldest sample of the last minute.
    fn per_minute(&mut self, read: u64, now: Instant) -> u64 {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > Duration::from_secs(60))
        {
            self.samples.pop_front();
        }
        self.samples.push_back((now, read));
        self.samples
            .front()
            .map_or(0, |(_, first)| read.saturating_sub(*first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the schedule one activity reading a second; returns the seconds it said "trim".
    fn trims(activity_at: impl Fn(u64) -> (u64, usize), seconds: u64) -> Vec<u64> {
        let t0 = Instant::now();
        let mut s = TrimSchedule::new(t0);
        (1..=seconds)
            .filter(|&t| s.due(activity_at(t), t0 + Duration::from_secs(t)))
            .collect()
    }

    #[test]
    fn trims_once_a_burst_has_settled_and_every_30_s() {
        // Idle throughout: every 30 s only.
        assert_eq!(trims(|_| (0, 0), 70), [30, 60]);
        // Lines until second 5: 2 s after the last change, then 30 s after that trim.
        assert_eq!(trims(|t| (t.min(5), 1), 40), [7, 37]);
        // Containers attached at 3 and 10, lines at 11: each burst settles on its own.
        let attach = |t: u64| {
            (
                u64::from(t >= 11),
                if t >= 10 { 2 } else { usize::from(t >= 3) },
            )
        };
        assert_eq!(trims(attach, 20), [5, 13]);
        // Lines every second, never quiet: every 30 s.
        assert_eq!(trims(|t| (t, 1), 65), [30, 60]);
    }
}
