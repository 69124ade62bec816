//! One reader per followed container (thread `logs-<name>`): looks at its container, opens the
//! engine's log stream from the resume point, feeds every line to its [`LineCore`] and carries
//! out what the core made (messages to the backends, `system` notes, counters, the container's
//! view), and opens the stream again for the container's next run, or when the engine cut it.
//!
//! Resume: the engine's `since` is inclusive, so a stream resumed at `(ts, seen)` first repeats
//! the lines at `ts`; the core skips the first `seen` of them and notes a gap when that boundary
//! line is no longer there (see `lines.rs`). This loop owns the socket, the clock and the waits
//! (on the slot's wake channel and the agent's stop); every decision about lines is the
//! `LineCore`'s, and every decision about opening, waiting and ending is the [`Retry`]'s.
//!
//! Stack: a page of a thread's stack, once touched, stays resident for the thread's life, so
//! every followed container costs all the pages its reader's deepest path ever reached (glibc
//! puts its thread block and static TLS at the top: about 3.8 KiB with the unit's
//! `GLIBC_TUNABLES`, 4.3 KiB without in the static build, 5.2 KiB in the dynamically linked
//! one). The stream, its decoder and the core live on the heap, and the functions that open,
//! read, inspect and wait have frames of their own (never inlined), so their locals do not add
//! up on the path that opens and follows a running container: about 3.4 KiB deep, it stays
//! within two pages (`make bench`'s idle cost per followed container; an inspect after a stream
//! ended can take a third).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SinceMode;
use crate::engine::{ContainerInfo, LineRef, LogStream, Next, Since, StreamKind};
use crate::message::{Origin, Position};
use crate::monitor::lines::{LineCore, Out, Settings};
use crate::monitor::retry::{Found, Retry, Step};
use crate::monitor::{cursor, meta, Shared, Slot};
use crate::stats::Stats;

/// The body of a `logs-<name>` thread: follows `slot`'s container until it is gone or the agent
/// stops. `info` is the container as the attach inspected it a moment ago: the first turn goes
/// by it rather than ask the engine again.
pub fn follow(shared: Arc<Shared>, slot: Arc<Slot>, info: ContainerInfo) {
    let mut reader = Reader {
        shared: &shared,
        slot: &slot,
        last: None,
        retry: Retry::new(),
        looked: Some(info),
        created: None,
        started: None,
    };
    while !shared.stopping() && reader.turn() {}
}

/// An opened log stream and what it was opened for.
struct Run {
    /// On the heap (stack pages: see the module documentation).
    stream: Box<LogStream>,
    origin: Arc<Origin>,
    resume: Option<Position>,
    info: ContainerInfo,
}

/// One container's reader, across the streams it opens.
struct Reader<'a> {
    shared: &'a Shared,
    slot: &'a Slot,
    /// The position of the last line read, where the next stream resumes.
    last: Option<Position>,
    /// When to open, wait or end: the decisions, made by a pure core.
    retry: Retry,
    /// The container as inspected just before the reader started, for its first turn.
    looked: Option<ContainerInfo>,
    /// The container as inspected while it was created and not started.
    created: Option<ContainerInfo>,
    /// Set when a created container's event woke the reader: its stream is opened at once.
    started: Option<ContainerInfo>,
}

impl Reader<'_> {
    /// One look at the container and what follows it (a stream read, a wait, the end); false
    /// when the reader ends.
    fn turn(&mut self) -> bool {
        let (found, info) = match (self.started.take(), self.looked.take()) {
            (Some(info), _) => (Found::Started, Some(info)),
            (None, Some(info)) => (self.found(&info), Some(info)),
            (None, None) => self.look(),
        };
        if found == Found::Created {
            self.created = info.clone();
        }
        let mut step = self.retry.next(found);
        let reconnects = self.retry.take_reconnects();
        if reconnects > 0 {
            Stats::add(&self.shared.stats.engine_reconnects, reconnects);
        }
        if let (Step::Open, Some(info)) = (step, info) {
            match self.open(info) {
                Ok(run) => {
                    self.read(run);
                    return true;
                }
                Err(s) => step = s,
            }
        }
        match step {
            Step::Open => true,
            Step::Wait(d) => self.wait(d),
            Step::Detach => !self.shared.detach(self.slot),
        }
    }

    /// Inspects the container. Never inlined (stack pages: see the module documentation).
    #[inline(never)]
    fn look(&self) -> (Found, Option<ContainerInfo>) {
        match self.shared.engine.inspect(&self.slot.id) {
            Ok(info) => (self.found(&info), Some(info)),
            Err(e) if e.is_not_found() => (Found::Gone, None),
            Err(e) => {
                set_state(self.slot, "reconnecting");
                log::debug!("cannot inspect {}: {e}", self.slot.id);
                (Found::EngineError, None)
            }
        }
    }

    /// What the container's state says, shown in its view too.
    fn found(&self, info: &ContainerInfo) -> Found {
        let found = Found::of(info);
        if found == Found::Restarting {
            set_state(self.slot, "reconnecting");
        }
        found
    }

    /// Waits `d`, or until the container's next event wakes the reader; false when the agent
    /// stops first. Both unpark the thread after setting their flag, and a park returns at once
    /// when the unpark came before it. Never inlined (stack pages).
    #[inline(never)]
    fn wait(&mut self, d: Duration) -> bool {
        let until = Instant::now().checked_add(d);
        while !self.shared.stopping() {
            if self.slot.woken.swap(false, Ordering::AcqRel) {
                self.retry.woken();
                self.started = self.created.take().map(|mut info| {
                    // Its `start` (or `destroy`, which the stream then finds) woke us.
                    info.running = true;
                    info
                });
                break;
            }
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                break;
            }
            match left {
                Some(left) => std::thread::park_timeout(left),
                None => std::thread::park(),
            }
        }
        !self.shared.stopping()
    }

    /// Opens the container's log stream from its resume point; on failure, the step to take.
    /// Never inlined (stack pages).
    #[inline(never)]
    fn open(&mut self, mut info: ContainerInfo) -> Result<Run, Step> {
        let origin = self.origin(&info);
        // The origin holds what the labels say; the stream's run needs only the state.
        info.labels.clear();
        let shared = self.shared;
        let resume = self.last.or_else(|| shared.cursors.get(&self.slot.id));
        let since = match resume {
            Some(p) => Since::At(p.ts_ns),
            None => first_since(shared, self.slot, info.started_at_ns),
        };
        let max = shared.cfg.max_line_bytes;
        let stream = match shared.engine.logs(&self.slot.id, info.tty, since, max) {
            Ok(s) => Box::new(s),
            Err(e) if e.is_not_found() => {
                // A `--rm` container is removed, its log with it, right after it exits.
                log::debug!("log of {} gone before it was opened: {e}", origin.name);
                return Err(self.retry.next(Found::Gone));
            }
            Err(e) => {
                set_state(self.slot, "reconnecting");
                log::warn!("cannot open the log stream of {}: {e}", origin.name);
                Stats::add(&shared.stats.engine_errors, 1);
                return Err(self.retry.open_failed());
            }
        };
        self.slot.set_closer(Some(stream.closer()));
        set_state(self.slot, "following");
        Ok(Run {
            stream,
            origin,
            resume,
            info,
        })
    }

    /// The container's origin, the slot's (also shown in its view): made again only when the
    /// container was renamed, its labels being fixed at its creation.
    fn origin(&self, info: &ContainerInfo) -> Arc<Origin> {
        let mut live = self.slot.live();
        if live.origin.name != info.name.trim_start_matches('/') {
            let s = self.shared;
            let made = meta::origin(&s.cfg, &s.host, &info.id, &info.name, &info.labels);
            live.origin = Arc::new(made);
        }
        live.origin.clone()
    }

    /// Reads the stream to its end and tells the retry core how it went. Never inlined (stack
    /// pages).
    #[inline(never)]
    fn read(&mut self, mut run: Run) {
        let opened = Instant::now();
        let settings = Settings::of(&self.shared.cfg);
        let mut core = new_core(settings, run.origin.clone(), run.resume, opened);
        // A stop that came while the stream opened closed no socket yet: do not block on it.
        if !self.shared.stopping() {
            self.pump(&mut run.stream, &mut core, &run.origin);
        }
        set_state(self.slot, "reconnecting");
        self.slot.set_closer(None);
        self.last = core.last().or(self.last);
        let info = &run.info;
        self.retry
            .stream_ended(info.started_at_ns, info.running, opened.elapsed());
    }

    /// Feeds every line to the core and hands over what it made, one read at a time (a batch
    /// at most). The lines are borrowed from the stream's buffers for the time of the call.
    fn pump(&self, stream: &mut LogStream, core: &mut LineCore, origin: &Arc<Origin>) {
        let stats = &self.shared.stats;
        loop {
            let idle = core.idle();
            let mut each = |l: LineRef<'_>| {
                if l.stream == StreamKind::EngineError {
                    Stats::add(&stats.engine_errors, 1);
                    log::warn!(
                        "engine error in the log stream of {}: {}",
                        origin.name,
                        String::from_utf8_lossy(l.bytes)
                    );
                    return;
                }
                core.line(l, Instant::now);
                if core.is_full() {
                    self.hand_over(core, origin);
                }
            };
            match stream.next(idle, &mut each) {
                Ok(Next::Lines) => {}
                Ok(Next::Idle) => core.tick(Instant::now()),
                Ok(Next::End) => break,
                Err(e) => {
                    if !self.shared.stopping() {
                        log::warn!("log stream of {} broke: {e}", origin.name);
                        Stats::add(&stats.engine_errors, 1);
                    }
                    break;
                }
            }
            // Lines decoded from one read go to the backends together.
            self.hand_over(core, origin);
        }
        core.finish(Instant::now());
        self.hand_over(core, origin);
    }

    /// Carries out what the core made: messages and notes in order, then the counters.
    fn hand_over(&self, core: &mut LineCore, origin: &Arc<Origin>) {
        let shared = self.shared;
        core.drain(|out| match out {
            Out::Messages(msgs) => shared.deliver_many(msgs),
            Out::Note(n) => {
                let ts = n.ts_ns().unwrap_or_else(cursor::now_ns);
                shared.system(origin, ts, n.level(), n.action(), n.text(&origin.name));
            }
        });
        let c = core.take_counts();
        let stats = &shared.stats;
        if c.gaps > 0 {
            Stats::add(&stats.gaps, c.gaps);
        }
        if c.suppressed > 0 {
            Stats::add(&stats.suppressed, c.suppressed);
        }
        if c.lines > 0 {
            Stats::add(&stats.lines_read, c.lines);
            Stats::add(&stats.bytes_read, c.bytes);
            Stats::add(&stats.truncated, c.truncated);
            Stats::add(&stats.invalid_utf8, c.invalid_utf8);
            let mut live = self.slot.live();
            live.lines += c.lines;
            live.last_line_ms = c.last_line_ns.map(|ns| ns.div_euclid(1_000_000));
        }
    }
}

/// A core on the heap, made in a frame of its own (stack pages: see the module documentation).
#[inline(never)]
fn new_core(
    settings: Settings,
    origin: Arc<Origin>,
    resume: Option<Position>,
    now: Instant,
) -> Box<LineCore> {
    Box::new(LineCore::new(settings, origin, resume, now))
}

fn set_state(slot: &Slot, state: &'static str) {
    slot.live().state = state;
}

/// Where a container without a cursor starts (`SINCE`). That start is its first cursor, in
/// every backend's lane, saved at once (the housekeeping thread is told): an agent killed before
/// its first regular save must not, on its next start, read the container again from its
/// beginning, or from a later "now" (losing what came in between).
fn first_since(shared: &Shared, slot: &Slot, started_at_ns: i64) -> Since {
    let now = cursor::now_ns();
    let since = match shared.cfg.since {
        SinceMode::All => Since::All,
        SinceMode::Now => Since::At(now),
        SinceMode::Cursor => {
            let started_after_us = shared
                .cursors
                .last_alive_ns()
                .is_some_and(|t| started_at_ns > t);
            if slot.from_event || started_after_us {
                Since::All
            } else {
                Since::At(now)
            }
        }
    };
    let ts_ns = match since {
        Since::All => 0,
        Since::At(t) => t,
    };
    shared
        .progress
        .taken_by_all(&slot.id, Position { ts_ns, seen: 0 });
    since
}
