//! The reader's lifecycle decisions as a value: after each look at its container (an inspect),
//! whether to open the log stream now, wait, or end. [`Retry`] has no socket, no clock and no
//! channel: the `logs-<name>` thread (`reader.rs`) tells it what it found and how long the last
//! stream lasted, and carries out the [`Step`] it returns. Table tests below drive it one look at
//! a time.
//!
//! What it decides:
//! - a container that is gone ends the reader; one that stopped is read once more to its end
//!   (a short-lived one may have stopped before the first look, and its lines are still there),
//!   then the reader ends;
//! - a container that was created but not started, or that waits between two runs of its restart
//!   policy, is waited for: its next event (`start`, `stop`, `die`, `destroy`) wakes the reader
//!   at once, so no back-off delays the next run's lines. The wait is capped at
//!   [`UNTIL_EVENT`] in case the event was missed;
//! - a stream that ended while its container kept running (the same run) was cut by the engine
//!   or the connection: that is a reconnect, counted, and opened again at once, or after a
//!   back-off when the stream lasted less than [`SHORT_STREAM`] (it must not spin);
//! - an engine that cannot be asked is retried with the capped back-off.
//!
//! A stream that ended because its container stopped or restarted is not a reconnect.

use std::time::Duration;

use crate::engine::ContainerInfo;
use crate::monitor::Backoff;

/// A stream that ends sooner than this after it opened, while its container runs on, is backed
/// off from.
pub const SHORT_STREAM: Duration = Duration::from_secs(1);
/// The longest wait for a container's next event (created, or restarting); a missed event costs
/// at most this.
pub const UNTIL_EVENT: Duration = Duration::from_secs(30);

/// What a look at the container found. `run` is the container's `State.StartedAt` (ns), which
/// names one run of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No such container, or it is being removed (404, 409).
    Gone,
    /// The engine did not answer, or answered with an error.
    EngineError,
    /// Created and never started.
    Created,
    /// Created, then woken by its `start`: not looked at again, since a container that prints
    /// and exits within milliseconds is removed (`--rm`) within a few more, and an inspect
    /// would cost one of the round trips left before that.
    Started,
    /// Between two runs of its restart policy: a stream opened now would end at once.
    Restarting,
    /// Exited or dead.
    Stopped {
        run: i64,
    },
    Running {
        run: i64,
    },
}

impl Found {
    /// What an inspect of the container says.
    pub fn of(info: &ContainerInfo) -> Found {
        let run = info.started_at_ns;
        if info.restarting {
            Found::Restarting
        } else if info.running {
            Found::Running { run }
        } else if run == 0 {
            // A container that never started has no start time.
            Found::Created
        } else {
            Found::Stopped { run }
        }
    }
}

/// What the reader does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Open the log stream now, with what the look found.
    Open,
    /// Wait this long, unless the container's next event or the agent's stop comes first; then
    /// look again.
    Wait(Duration),
    /// The container is done with: end, unless a `start` came meanwhile.
    Detach,
}

/// The last stream that ended: its run, and whether it lasted less than [`SHORT_STREAM`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ended {
    run: i64,
    short: bool,
}

/// One reader's retry state, across the streams it opens. See the module documentation.
#[derive(Default)]
pub struct Retry {
    backoff: Backoff,
    ended: Option<Ended>,
    /// `ended` has not been looked at yet: if its run goes on, its stream was cut.
    cut: bool,
    /// The run whose stream was opened after it stopped and read to its end.
    drained: Option<i64>,
    reconnects: u64,
}

impl Retry {
    pub fn new() -> Retry {
        Retry::default()
    }

    /// The next step after a look that found `found`.
    pub fn next(&mut self, found: Found) -> Step {
        match found {
            Found::Gone => Step::Detach,
            Found::EngineError => Step::Wait(self.backoff.next_delay()),
            Found::Created | Found::Restarting => Step::Wait(UNTIL_EVENT),
            Found::Stopped { run } if self.drained == Some(run) => Step::Detach,
            Found::Stopped { .. } => Step::Open,
            Found::Started => Step::Open,
            Found::Running { run } => self.running(run),
        }
    }

    fn running(&mut self, run: i64) -> Step {
        let Some(ended) = self.ended else {
            return Step::Open;
        };
        if ended.run != run {
            // A new run: its stream is opened at once, and was not cut.
            self.ended = None;
            self.backoff.reset();
            return Step::Open;
        }
        if !std::mem::take(&mut self.cut) {
            // After the wait below: the back-off goes on growing until a stream lasts.
            return Step::Open;
        }
        // The same run goes on: the engine or the connection cut the stream.
        self.reconnects += 1;
        if ended.short {
            Step::Wait(self.backoff.next_delay())
        } else {
            self.backoff.reset();
            Step::Open
        }
    }

    /// The log stream could not be opened (other than the container being gone).
    pub fn open_failed(&mut self) -> Step {
        Step::Wait(self.backoff.next_delay())
    }

    /// A stream of `run` ended after `lasted`; `running` is whether the container ran when
    /// the stream was opened (if not, that run has now been read to its end).
    pub fn stream_ended(&mut self, run: i64, running: bool, lasted: Duration) {
        if !running {
            self.drained = Some(run);
        }
        self.ended = Some(Ended {
            run,
            short: lasted < SHORT_STREAM,
        });
        self.cut = true;
    }

    /// The container's event woke the reader during a wait: something changed, so the next
    /// failure starts its back-off afresh.
    pub fn woken(&mut self) {
        self.backoff.reset();
    }

    /// Streams re-opened because they were cut while their container ran, since the last call.
    pub fn take_reconnects(&mut self) -> u64 {
        std::mem::take(&mut self.reconnects)
    }
}

/// Whether a container event wakes its reader: those that change whether its log can be
/// followed. Others (health, exec, attach, …) leave it alone.
pub fn wakes(action: &str) -> bool {
    matches!(action, "start" | "die" | "stop" | "destroy")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(4);
    const BRIEF: Duration = Duration::from_millis(10);
    const FIRST: Duration = Duration::from_millis(500);

    /// One look, or a stream that ended, and what must follow.
    #[derive(Debug, Clone, Copy)]
    enum In {
        Look(Found),
        /// A stream of (run, running when opened, how long it lasted) ended.
        Stream(i64, bool, Duration),
        OpenFailed,
        Woken,
    }
    use In::*;

    /// Feeds `steps` to a fresh core; each look's step must be the one given, and the
    /// reconnects counted at the end must be `reconnects`.
    fn run(name: &str, steps: &[(In, Option<Step>)], reconnects: u64) {
        let mut r = Retry::new();
        for (i, (input, want)) in steps.iter().enumerate() {
            let got = match *input {
                Look(f) => Some(r.next(f)),
                Stream(run, running, lasted) => {
                    r.stream_ended(run, running, lasted);
                    None
                }
                OpenFailed => Some(r.open_failed()),
                Woken => {
                    r.woken();
                    None
                }
            };
            assert_eq!(got, *want, "{name}, step {i} ({input:?})");
        }
        assert_eq!(r.take_reconnects(), reconnects, "{name}: reconnects");
        assert_eq!(r.take_reconnects(), 0, "{name}: taken");
    }

    fn wait(ms: u64) -> Option<Step> {
        Some(Step::Wait(Duration::from_millis(ms)))
    }

    const OPEN: Option<Step> = Some(Step::Open);
    const DETACH: Option<Step> = Some(Step::Detach);
    const UNTIL: Option<Step> = Some(Step::Wait(UNTIL_EVENT));

    #[test]
    fn a_container_that_exits_is_read_to_its_end_then_left_without_a_reconnect() {
        run(
            "exit",
            &[
                (Look(Found::Running { run: 1 }), OPEN),
                (Stream(1, true, LONG), None),
                (Look(Found::Stopped { run: 1 }), OPEN),
                (Stream(1, false, BRIEF), None),
                (Look(Found::Stopped { run: 1 }), DETACH),
            ],
            0,
        );
    }

    #[test]
    fn a_short_lived_container_is_waited_for_from_its_creation() {
        run(
            "created",
            &[
                (Look(Found::Created), UNTIL),
                (Woken, None),
                (Look(Found::Started), OPEN),
                (Stream(0, true, BRIEF), None),
                // It ran and stopped before the stream opened: read it once.
                (Look(Found::Stopped { run: 1 }), OPEN),
                (Stream(1, false, BRIEF), None),
                (Look(Found::Gone), DETACH),
            ],
            0,
        );
    }

    #[test]
    fn a_crash_loop_waits_for_the_next_start_without_back_off() {
        run(
            "crash loop",
            &[
                (Look(Found::Running { run: 1 }), OPEN),
                (Stream(1, true, BRIEF), None),
                (Look(Found::Restarting), UNTIL),
                (Woken, None),
                (Look(Found::Running { run: 2 }), OPEN),
                (Stream(2, true, BRIEF), None),
                (Look(Found::Restarting), UNTIL),
                (Woken, None),
                (Look(Found::Running { run: 3 }), OPEN),
                (Stream(3, true, LONG), None),
                // `docker stop` while it restarts: the stop event wakes it; read, then end.
                (Look(Found::Restarting), UNTIL),
                (Woken, None),
                (Look(Found::Stopped { run: 3 }), OPEN),
                (Stream(3, false, BRIEF), None),
                (Look(Found::Stopped { run: 3 }), DETACH),
            ],
            0,
        );
    }

    #[test]
    fn a_stream_cut_while_its_container_runs_is_a_reconnect() {
        run(
            "cut",
            &[
                (Look(Found::Running { run: 1 }), OPEN),
                (Stream(1, true, LONG), None),
                (Look(Found::Running { run: 1 }), OPEN),
                // Streams that end at once while the container runs are backed off from.
                (Stream(1, true, BRIEF), None),
                (Look(Found::Running { run: 1 }), wait(500)),
                (Look(Found::Running { run: 1 }), OPEN),
                (Stream(1, true, BRIEF), None),
                (Look(Found::Running { run: 1 }), wait(1000)),
                (Look(Found::Running { run: 1 }), OPEN),
                (Stream(1, true, LONG), None),
                (Look(Found::Running { run: 1 }), OPEN),
                (Stream(1, true, BRIEF), None),
                (Look(Found::Running { run: 1 }), wait(500)),
            ],
            5,
        );
    }

    #[test]
    fn a_new_run_is_opened_at_once_and_resets_the_back_off() {
        run(
            "new run",
            &[
                (Look(Found::Running { run: 1 }), OPEN),
                (Stream(1, true, BRIEF), None),
                (Look(Found::Running { run: 1 }), wait(500)),
                (Look(Found::Running { run: 1 }), OPEN),
                (Stream(1, true, BRIEF), None),
                (Look(Found::Running { run: 1 }), wait(1000)),
                (Look(Found::Running { run: 2 }), OPEN),
                (Stream(2, true, BRIEF), None),
                (Look(Found::Running { run: 2 }), wait(500)),
            ],
            3,
        );
    }

    #[test]
    fn engine_errors_back_off_until_an_event_or_an_answer() {
        run(
            "engine",
            &[
                (Look(Found::EngineError), wait(500)),
                (Look(Found::EngineError), wait(1000)),
                (Look(Found::EngineError), wait(2000)),
                // An answer alone does not reset it: the stream may fail to open.
                (Look(Found::Running { run: 1 }), OPEN),
                (OpenFailed, wait(4000)),
                (Look(Found::EngineError), wait(8000)),
                (Woken, None),
                (Look(Found::EngineError), Some(Step::Wait(FIRST))),
                (Look(Found::Running { run: 1 }), OPEN),
            ],
            0,
        );
    }

    #[test]
    fn the_back_off_is_capped() {
        let mut r = Retry::new();
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            if let Step::Wait(d) = r.next(Found::EngineError) {
                last = d;
            }
        }
        assert_eq!(last, Duration::from_secs(30));
    }

    #[test]
    fn what_an_inspect_says() {
        let info = |running, restarting, started_at_ns| ContainerInfo {
            id: "c".into(),
            name: "c".into(),
            tty: false,
            labels: Default::default(),
            running,
            restarting,
            started_at_ns,
        };
        for (running, restarting, started, want) in [
            (true, false, 7, Found::Running { run: 7 }),
            (true, true, 7, Found::Restarting),
            (false, false, 7, Found::Stopped { run: 7 }),
            (false, false, 0, Found::Created),
        ] {
            assert_eq!(Found::of(&info(running, restarting, started)), want);
        }
    }

    #[test]
    fn events_that_wake_a_reader() {
        for (action, wakes_it) in [
            ("start", true),
            ("die", true),
            ("stop", true),
            ("destroy", true),
            ("create", false),
            ("restart", false),
            ("health_status: healthy", false),
            ("exec_start: sh", false),
            ("attach", false),
        ] {
            assert_eq!(wakes(action), wakes_it, "{action}");
        }
    }
}
