//! The monitor: decides which containers to follow, runs one
//! reader thread per followed container and one thread on `/events`, turns lifecycle events into
//! `system` messages and the agent's own warnings into `manager` messages, and hands every
//! message to all backends.
//!
//! Threads: `events` (the engine's event stream; re-lists containers on every reconnect, since
//! the engine keeps only 256 past events), `logs-<name>` (see `reader`), `manager`.
//! Invariant: at most one reader per container id; a reader is made at the container's `create`
//! (so a short-lived one is read before `--rm` removes its log) and ends when its container is
//! gone or stopped; the container's `start`, `die`, `stop` and `destroy` events wake it from any
//! wait; a `start` event for a container whose reader is still winding down makes it re-attach.

mod attach_retry;
pub mod cursor;
pub mod level;
pub mod lines;
pub mod meta;
pub mod reader;
pub mod retry;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::agentlog::Note;
use crate::backend::{Backend, Progress};
use crate::config::Config;
use crate::engine::{Closer, ContainerInfo, Engine, Event};
use crate::message::{event_id, manager_id, Draft, Id, Level, LogMessage, Origin, SourceKind};
use crate::stats::Stats;
use cursor::CursorStore;

/// What `/api/v1/containers` shows of a followed container.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub id: String,
    pub name: String,
    pub app_id: String,
    pub service_name: String,
    /// `following`, `reconnecting` or `starting`.
    pub state: &'static str,
    pub lines: u64,
    /// Engine time of the last line, ms since the epoch.
    pub last_line_ms: Option<i64>,
}

/// One followed container.
pub struct Slot {
    /// Full container id: its origin's, which the registry, the backends' lanes and the cursors
    /// share, one allocation for all.
    pub id: Arc<str>,
    /// Seen first through a `start` event, i.e. started while we run: read all it has.
    from_event: bool,
    /// A `start` came while the reader was ending; it must attach again.
    restart_pending: AtomicBool,
    /// Set by the container's events that matter to its reader (`retry::wakes`), which end the
    /// reader's wait at once (its thread is unparked). One flag is enough: a woken reader looks
    /// at the container afresh. A channel did the same for 0.6 KiB a container.
    woken: AtomicBool,
    closer: Mutex<Option<Closer>>,
    handle: Mutex<Option<JoinHandle<()>>>,
    live: Mutex<Live>,
}

/// What its reader makes of a followed container, and what the API shows of it ([`View`]).
struct Live {
    /// The container's messages' origin, its `system` messages' too: made at the attach, made
    /// again when a stream opens after a rename (labels are fixed when a container is created).
    origin: Arc<Origin>,
    /// `following`, `reconnecting` or `starting`.
    state: &'static str,
    lines: u64,
    /// Engine time of the last line, ms since the epoch.
    last_line_ms: Option<i64>,
}

impl Slot {
    fn new(origin: Arc<Origin>, from_event: bool) -> Slot {
        Slot {
            id: origin.container_id.clone(),
            from_event,
            restart_pending: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            closer: Mutex::new(None),
            handle: Mutex::new(None),
            live: Mutex::new(Live {
                origin,
                state: "starting",
                lines: 0,
                last_line_ms: None,
            }),
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container as the API shows it.
    fn view(&self) -> View {
        let l = self.live();
        View {
            id: self.id.to_string(),
            name: l.origin.name.clone(),
            app_id: l.origin.app_id.as_str().to_string(),
            service_name: l.origin.service_name.clone(),
            state: l.state,
            lines: l.lines,
            last_line_ms: l.last_line_ms,
        }
    }

    fn set_closer(&self, c: Option<Closer>) {
        *self.closer.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }

    /// Ends the reader's wait, now or at its next one.
    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.unpark();
    }

    /// Ends the reader's wait now, should it wait, so that it looks at `woken` and the agent's
    /// stop. Its thread may be parked elsewhere (a channel's blocking send): that wait checks
    /// its own condition and parks again.
    fn unpark(&self) {
        if let Some(h) = self
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            h.thread().unpark();
        }
    }
}

/// Everything the monitor's threads share.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub engine: Engine,
    pub backends: Vec<Arc<dyn Backend>>,
    pub stats: Arc<Stats>,
    pub cursors: Arc<CursorStore>,
    pub progress: Arc<Progress>,
    pub host: Arc<str>,
    pub own_id: Option<String>,
    stopping: AtomicBool,
    /// Never sent on; dropped on stop so every interruptible sleep wakes at once.
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    registry: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
    /// Container ids with an attach retry under way (`attach_retry`).
    retrying: Mutex<BTreeSet<String>>,
    events_closer: Mutex<Option<Closer>>,
    manager_origin: Arc<Origin>,
    manager_seq: AtomicU64,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Sleeps `d` unless the agent stops first; true when it should go on.
    pub fn sleep(&self, d: Duration) -> bool {
        let _ = self.stop_rx.recv_timeout(d);
        !self.stopping()
    }

    /// Hands a message to every backend, in order.
    pub fn deliver(&self, msg: LogMessage) {
        self.deliver_many(&[Arc::new(msg)]);
    }

    /// Hands messages to every backend, in order, each backend taking them all at once.
    pub fn deliver_many(&self, msgs: &[Arc<LogMessage>]) {
        if msgs.is_empty() {
            return;
        }
        for b in &self.backends {
            b.log_many(msgs);
        }
    }

    /// A `system` message about a container.
    pub fn system(
        &self,
        origin: &Arc<Origin>,
        ts_ns: i64,
        level: Level,
        action: &str,
        text: String,
    ) {
        self.deliver(LogMessage::new(Draft {
            id: Id::Given(event_id(origin, ts_ns, action)),
            text: &text,
            ts_ns,
            level,
            kind: SourceKind::System,
            origin: origin.clone(),
            is_stderr: false,
            truncated: false,
            position: None,
        }));
    }

    fn manager(&self, note: Note) {
        let ts_ns = cursor::now_ns();
        let level = match note.level {
            log::Level::Error => Level::Error,
            _ => Level::Warn,
        };
        let seq = self.manager_seq.fetch_add(1, Ordering::Relaxed);
        self.deliver(LogMessage::new(Draft {
            id: Id::Given(manager_id(ts_ns, seq)),
            text: &note.text,
            ts_ns,
            level,
            kind: SourceKind::Manager,
            origin: self.manager_origin.clone(),
            is_stderr: false,
            truncated: false,
            position: None,
        }));
    }

    /// The followed containers, for the API.
    pub fn views(&self) -> Vec<View> {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<View> = reg.values().map(|s| s.view()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Starts following `id` unless a reader already does; `from_event` for a `start` event.
    /// A failure that passes (no descriptor for the engine socket, no thread) is retried by
    /// [`attach_retry`] until the container is followed or gone.
    fn attach(self: &Arc<Self>, id: &str, from_event: bool) {
        if let Err(why) = self.try_attach(id, from_event) {
            attach_retry::later(self, id, from_event, &why);
        }
    }

    /// [`Shared::attach`], once; `Err` says why it failed for a reason worth retrying.
    fn try_attach(self: &Arc<Self>, id: &str, from_event: bool) -> Result<(), String> {
        if self.stopping() {
            return Ok(());
        }
        let Some(info) = self.followed_info(id)? else {
            return Ok(());
        };
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock: a stop either finds this reader in the registry (and wakes it) or
        // keeps it from starting.
        if self.stopping() {
            return Ok(());
        }
        if let Some(slot) = reg.get(info.id.as_str()) {
            slot.restart_pending.store(true, Ordering::Release);
            slot.wake();
            return Ok(());
        }
        let origin = meta::origin(&self.cfg, &self.host, &info.id, &info.name, &info.labels);
        let slot = Arc::new(Slot::new(Arc::new(origin), from_event));
        let shared = self.clone();
        let s = slot.clone();
        // Boxed: the thread's closure stays allocated for the thread's life, the box only
        // until the reader has taken it.
        let looked = Box::new(info.clone());
        let spawned = std::thread::Builder::new()
            .name(thread_name(&info.name))
            .stack_size(192 * 1024)
            .spawn(move || reader::follow(shared, s, *looked));
        match spawned {
            Ok(h) => {
                *slot.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
                reg.insert(slot.id.clone(), slot);
                log::info!("following {} ({})", info.name, short(&info.id));
                Ok(())
            }
            Err(e) => Err(format!("cannot start a reader for {}: {e}", info.name)),
        }
    }

    /// How many containers are followed.
    pub fn followed(&self) -> usize {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether a reader follows the container with this full id.
    fn is_followed(&self, id: &str) -> bool {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        reg.contains_key(id)
    }

    /// The container, if it exists and is one we follow; `Err` when the engine could not say.
    fn followed_info(&self, id: &str) -> Result<Option<ContainerInfo>, String> {
        let info = match self.engine.inspect(id) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(format!("cannot inspect container {id}: {e}")),
        };
        let own = self.own_id.as_deref();
        if !meta::followed(&self.cfg, own, &info.id, &info.name, &info.labels) {
            log::debug!("not following {} ({})", info.name, short(&info.id));
            return Ok(None);
        }
        Ok(Some(info))
    }

    /// Wakes the reader of `id`, if there is one; for a `start`, also tells it to re-attach
    /// should it be ending. False when no reader follows `id`.
    fn wake(&self, id: &str, start: bool) -> bool {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = reg.get(id) else {
            return false;
        };
        if start {
            slot.restart_pending.store(true, Ordering::Release);
        }
        slot.wake();
        true
    }

    /// Called by a reader whose container stopped: removes its slot unless a restart is
    /// pending, in which case the reader goes on (returns false).
    fn detach(&self, slot: &Slot) -> bool {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if slot.restart_pending.swap(false, Ordering::AcqRel) && !self.stopping() {
            return false;
        }
        reg.remove(&*slot.id);
        true
    }

    /// The origin of a container's `system` message: its reader's when the event says the same
    /// of it, so that the ring holds one origin per container, not one per message.
    fn event_origin(&self, ev: &Event, name: &str) -> Arc<Origin> {
        let made = meta::origin(&self.cfg, &self.host, &ev.id, name, &ev.attributes);
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        match reg.get(ev.id.as_str()).map(|s| s.live().origin.clone()) {
            Some(o) if *o == made => o,
            _ => Arc::new(made),
        }
    }

    fn on_event(self: &Arc<Self>, ev: Event) {
        let name = ev.attributes.get("name").cloned().unwrap_or_default();
        if !meta::followed(
            &self.cfg,
            self.own_id.as_deref(),
            &ev.id,
            &name,
            &ev.attributes,
        ) {
            return;
        }
        let action = ev.action.as_str();
        // The reader's wake comes first: no inspect stands between a `start` and its stream.
        let woken = retry::wakes(action) && self.wake(&ev.id, action == "start");
        match action {
            "destroy" => {
                self.cursors.forget(&ev.id);
                self.progress.forget(&ev.id);
            }
            _ => {
                if let Some((level, kind, text)) = lifecycle(action, &name, &ev.attributes) {
                    let origin = self.event_origin(&ev, &name);
                    self.system(&origin, ev.time_nano, level, kind, text);
                }
                // A reader waits from `create` on, so that a container that prints and exits
                // within milliseconds is read before the engine removes it (`--rm`).
                if (action == "create" || action == "start") && !woken {
                    self.attach(&ev.id, true);
                }
            }
        }
    }
}

/// What a container's lifecycle event tells a user, as a `system` message: its level, kind
/// (part of the message id) and text. None for events that tell a user nothing.
fn lifecycle(
    action: &str,
    name: &str,
    attributes: &BTreeMap<String, String>,
) -> Option<(Level, &'static str, String)> {
    Some(match action {
        "start" => (Level::Info, "start", format!("container {name} started")),
        "die" => match attributes.get("exitCode").map_or("?", String::as_str) {
            "0" => (
                Level::Info,
                "die",
                format!("container {name} exited with code 0"),
            ),
            code => (
                Level::Error,
                "die",
                format!("container {name} died with exit code {code}"),
            ),
        },
        "oom" => (
            Level::Error,
            "oom",
            format!("container {name} was killed: out of memory"),
        ),
        "restart" => (
            Level::Warn,
            "restart",
            format!("container {name} restarting"),
        ),
        "pause" => (Level::Info, "pause", format!("container {name}: pause")),
        "unpause" => (Level::Info, "unpause", format!("container {name}: unpause")),
        a if a.starts_with("health_status") => {
            let status = a.rsplit(' ').next().unwrap_or(a);
            let level = if status == "unhealthy" {
                Level::Warn
            } else {
                Level::Info
            };
            (level, "health", format!("container {name} is {status}"))
        }
        _ => return None,
    })
}

/// Thread `manager`: turns the agent's own warnings into `manager` messages until stopped.
fn manager_loop(shared: &Shared, notes: &Receiver<Note>) {
    loop {
        crossbeam_channel::select! {
            recv(notes) -> n => match n {
                Ok(note) => shared.manager(note),
                Err(_) => break,
            },
            recv(shared.stop_rx) -> _ => break,
        }
    }
}

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn thread_name(container: &str) -> String {
    let mut n = String::from("logs-");
    n.extend(container.chars().take(32));
    n
}

/// The running monitor; [`Monitor::stop`] ends every thread it started.
pub struct Monitor {
    shared: Arc<Shared>,
    events: Option<JoinHandle<()>>,
    manager: Option<JoinHandle<()>>,
}

impl Shared {
    /// The monitor's state before any of its threads: the API can show it (no container yet)
    /// while the engine is awaited.
    pub fn new(
        cfg: Arc<Config>,
        engine: Engine,
        backends: Vec<Arc<dyn Backend>>,
        stats: Arc<Stats>,
        cursors: Arc<CursorStore>,
        progress: Arc<Progress>,
    ) -> Arc<Shared> {
        let host: Arc<str> = Arc::from(cfg.hostname.as_str());
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        Arc::new(Shared {
            manager_origin: Arc::new(Origin::manager(host.clone())),
            cfg,
            engine,
            backends,
            stats,
            cursors,
            progress,
            host,
            own_id: meta::own_container_id(),
            stopping: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            registry: Mutex::new(HashMap::new()),
            retrying: Mutex::new(BTreeSet::new()),
            events_closer: Mutex::new(None),
            manager_seq: AtomicU64::new(0),
        })
    }
}

impl Monitor {
    /// Starts the `manager` and `events` threads on `shared`, whose engine has answered.
    pub fn start(shared: Arc<Shared>, notes: Receiver<Note>) -> std::io::Result<Monitor> {
        let s = shared.clone();
        let manager = std::thread::Builder::new()
            .name("manager".into())
            .stack_size(128 * 1024)
            .spawn(move || manager_loop(&s, &notes))?;
        let mut monitor = Monitor {
            shared: shared.clone(),
            events: None,
            manager: Some(manager),
        };
        match std::thread::Builder::new()
            .name("events".into())
            .stack_size(192 * 1024)
            .spawn(move || events_loop(shared))
        {
            Ok(events) => monitor.events = Some(events),
            Err(e) => {
                monitor.stop();
                return Err(e);
            }
        }
        Ok(monitor)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops reading: closes every stream and joins every thread. Backends are not touched.
    pub fn stop(&mut self) {
        let s = &self.shared;
        s.stopping.store(true, Ordering::Release);
        drop(s.stop_tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(c) = s
            .events_closer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            c.close();
        }
        let slots: Vec<Arc<Slot>> = s
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in &slots {
            // A reader waiting between two streams.
            slot.unpark();
            if let Some(c) = slot
                .closer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                c.close();
            }
        }
        if let Some(h) = self.events.take() {
            let _ = h.join();
        }
        for slot in &slots {
            if let Some(h) = slot.handle.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = h.join();
            }
        }
        if let Some(h) = self.manager.take() {
            let _ = h.join();
        }
    }
}

/// Capped exponential back-off: 0.5 s, 1 s, 2 s … 30 s.
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

fn events_loop(s: Arc<Shared>) {
    let mut backoff = Backoff::new();
    let mut was_up = true;
    while !s.stopping() {
        match s.engine.events() {
            Ok(mut stream) => {
                *s.events_closer.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream.closer());
                if s.stopping() {
                    break;
                }
                s.stats.docker_up.store(true, Ordering::Relaxed);
                if !was_up {
                    log::warn!("engine at {} is back", s.cfg.docker_host);
                    was_up = true;
                }
                // Listing after subscribing: a container started in between is seen twice, not never.
                match s.engine.list_running() {
                    Ok(ids) => {
                        for id in ids {
                            s.attach(&id, false);
                        }
                    }
                    Err(e) => log::warn!("cannot list containers: {e}"),
                }
                loop {
                    match stream.next_event() {
                        Ok(Some(ev)) => {
                            backoff.reset();
                            s.on_event(ev);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            if !s.stopping() {
                                log::warn!("event stream broke: {e}");
                                Stats::add(&s.stats.engine_errors, 1);
                            }
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                s.stats.docker_up.store(false, Ordering::Relaxed);
                if was_up {
                    log::error!("engine at {} unreachable: {e}; retrying", s.cfg.docker_host);
                    was_up = false;
                }
            }
        }
        if s.stopping() {
            break;
        }
        Stats::add(&s.stats.engine_reconnects, 1);
        if !s.sleep(backoff.next_delay()) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (action, exit code, what a user reads).
    type Case = (
        &'static str,
        Option<&'static str>,
        Option<(Level, &'static str, &'static str)>,
    );
    const CASES: [Case; 10] = [
        (
            "start",
            None,
            Some((Level::Info, "start", "container web started")),
        ),
        (
            "die",
            Some("0"),
            Some((Level::Info, "die", "container web exited with code 0")),
        ),
        (
            "die",
            Some("137"),
            Some((Level::Error, "die", "container web died with exit code 137")),
        ),
        (
            "die",
            None,
            Some((Level::Error, "die", "container web died with exit code ?")),
        ),
        (
            "oom",
            None,
            Some((
                Level::Error,
                "oom",
                "container web was killed: out of memory",
            )),
        ),
        (
            "restart",
            None,
            Some((Level::Warn, "restart", "container web restarting")),
        ),
        (
            "pause",
            None,
            Some((Level::Info, "pause", "container web: pause")),
        ),
        (
            "health_status: unhealthy",
            None,
            Some((Level::Warn, "health", "container web is unhealthy")),
        ),
        (
            "health_status: healthy",
            None,
            Some((Level::Info, "health", "container web is healthy")),
        ),
        ("attach", None, None),
    ];

    #[test]
    fn lifecycle_events_as_users_read_them() {
        for (action, code, want) in CASES {
            let attrs: BTreeMap<String, String> = code
                .map(|c| ("exitCode".to_string(), c.to_string()))
                .into_iter()
                .collect();
            let got = lifecycle(action, "web", &attrs);
            let got = got.as_ref().map(|(l, k, t)| (*l, *k, t.as_str()));
            assert_eq!(got, want, "{action}");
        }
    }
}
