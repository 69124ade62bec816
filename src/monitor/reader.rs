//! One reader per followed container (thread `logs-<name>`): opens the engine's log stream from
//! the resume point, feeds every line to its [`LineCore`] and carries out what the core made
//! (messages to the backends, `system` notes, counters, the container's view), and re-opens the
//! stream when it ends while the container still runs (restarts, engine restarts).
//!
//! Resume: the engine's `since` is inclusive, so a stream resumed at `(ts, seen)` first repeats
//! the lines at `ts`; the core skips the first `seen` of them and notes a gap when that boundary
//! line is no longer there (see `lines.rs`). This loop owns the socket, the clock and the
//! back-off; every decision about lines is the core's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SinceMode;
use crate::engine::{ContainerInfo, LogStream, Next, Since, StreamKind};
use crate::message::{Origin, Position};
use crate::monitor::lines::{LineCore, Out, Settings};
use crate::monitor::{cursor, meta, Backoff, Shared, Slot};
use crate::stats::Stats;

/// A stream that ends sooner than this after it opened counts as a failure: back off.
const SHORT_STREAM: Duration = Duration::from_secs(1);

/// The body of a `logs-<name>` thread: follows `slot`'s container until it is gone or the agent
/// stops.
pub fn follow(shared: Arc<Shared>, slot: Arc<Slot>) {
    let mut reader = Reader {
        shared: &shared,
        slot: &slot,
        last: None,
        backoff: Backoff::new(),
        drained: None,
    };
    while !shared.stopping() {
        let then = match reader.open() {
            Ok(run) => reader.read(run),
            Err(then) => then,
        };
        if let Then::Stop = then {
            break;
        }
    }
}

/// What the loop does next when no stream is being read.
enum Then {
    /// Open the stream again.
    Again,
    /// The reader is done: its container is gone, or the agent stops.
    Stop,
}

/// An opened log stream and what it was opened for.
struct Run {
    stream: LogStream,
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
    backoff: Backoff,
    /// The run (by its start time) whose stream was read to its end after it stopped.
    drained: Option<i64>,
}

impl Reader<'_> {
    /// Opens the container's log stream from its resume point.
    fn open(&mut self) -> Result<Run, Then> {
        let info = self.inspect()?;
        // A stopped container is read once more to its end: a short-lived one may have
        // stopped before we first looked, and its lines are still with the engine.
        if !info.running && self.drained == Some(info.started_at_ns) {
            return Err(self.detach());
        }
        let origin = self.origin(&info);
        let shared = self.shared;
        let resume = self.last.or_else(|| shared.cursors.get(&self.slot.id));
        let since = match resume {
            Some(p) => Since::At(p.ts_ns),
            None => first_since(shared, self.slot, info.started_at_ns),
        };
        let max = shared.cfg.max_line_bytes;
        let stream = match shared.engine.logs(&self.slot.id, info.tty, since, max) {
            Ok(s) => s,
            Err(e) => {
                set_state(self.slot, "reconnecting");
                if !e.is_not_found() {
                    log::warn!("cannot open the log stream of {}: {e}", origin.name);
                    Stats::add(&shared.stats.engine_errors, 1);
                }
                return Err(self.retry());
            }
        };
        self.slot.set_closer(Some(stream.closer()));
        if shared.stopping() {
            return Err(Then::Stop);
        }
        set_state(self.slot, "following");
        Ok(Run {
            stream,
            origin,
            resume,
            info,
        })
    }

    fn inspect(&mut self) -> Result<ContainerInfo, Then> {
        match self.shared.engine.inspect(&self.slot.id) {
            Ok(i) => Ok(i),
            Err(e) if e.is_not_found() => Err(self.detach()),
            Err(e) => {
                set_state(self.slot, "reconnecting");
                log::debug!("cannot inspect {}: {e}", self.slot.id);
                Err(self.retry())
            }
        }
    }

    /// The container's origin, also shown in its view.
    fn origin(&self, info: &ContainerInfo) -> Arc<Origin> {
        let s = self.shared;
        let origin = Arc::new(meta::origin(
            &s.cfg,
            &s.host,
            &info.id,
            &info.name,
            &info.labels,
        ));
        let mut v = self.slot.view.lock().unwrap_or_else(|p| p.into_inner());
        v.name = origin.name.clone();
        v.app_id = origin.app_id.as_str().to_string();
        v.service_name = origin.service_name.clone();
        origin
    }

    /// The container is gone: end, unless a restart is pending.
    fn detach(&self) -> Then {
        if self.shared.detach(self.slot) {
            Then::Stop
        } else {
            Then::Again
        }
    }

    /// Waits the next back-off delay, unless the agent stops first.
    fn retry(&mut self) -> Then {
        if self.shared.sleep(self.backoff.next_delay()) {
            Then::Again
        } else {
            Then::Stop
        }
    }

    /// Reads the stream to its end, then decides how soon to open it again.
    fn read(&mut self, mut run: Run) -> Then {
        let opened = Instant::now();
        let settings = Settings::of(&self.shared.cfg);
        let mut core = LineCore::new(settings, run.origin.clone(), run.resume, opened);
        self.pump(&mut run.stream, &mut core, &run.origin);
        set_state(self.slot, "reconnecting");
        self.slot.set_closer(None);
        if !run.info.running {
            self.drained = Some(run.info.started_at_ns);
        }
        self.last = core.last().or(self.last);
        if self.shared.stopping() {
            return Then::Stop;
        }
        Stats::add(&self.shared.stats.engine_reconnects, 1);
        // A stream that ends at once while the container runs must not spin.
        if opened.elapsed() < SHORT_STREAM {
            self.retry()
        } else {
            self.backoff.reset();
            Then::Again
        }
    }

    /// Feeds every line to the core and hands over what it made, one read at a time.
    fn pump(&self, stream: &mut LogStream, core: &mut LineCore, origin: &Arc<Origin>) {
        let stats = &self.shared.stats;
        loop {
            match stream.next(core.idle()) {
                Ok(Next::Line(l)) if l.stream == StreamKind::EngineError => {
                    Stats::add(&stats.engine_errors, 1);
                    log::warn!(
                        "engine error in the log stream of {}: {}",
                        origin.name,
                        String::from_utf8_lossy(&l.bytes)
                    );
                }
                Ok(Next::Line(l)) => core.line(l, Instant::now),
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
            if !stream.has_buffered() || core.is_full() {
                self.hand_over(core, origin);
            }
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
            let mut v = self.slot.view.lock().unwrap_or_else(|p| p.into_inner());
            v.lines += c.lines;
            v.last_line_ms = c.last_line_ms;
        }
    }
}

fn set_state(slot: &Slot, state: &'static str) {
    slot.view.lock().unwrap_or_else(|p| p.into_inner()).state = state;
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
    let id: Arc<str> = Arc::from(slot.id.as_str());
    shared
        .progress
        .taken_by_all(&id, Position { ts_ns, seen: 0 });
    since
}
