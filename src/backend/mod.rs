//! Backends: where messages go once made. Each sits behind [`Backend`], fed through its own
//! bounded channel.
//!
//! A backend reports what it has *taken* (safely written, acknowledged or spooled) to
//! [`Progress`]; the resume cursor of a container never passes a line some backend has not taken.

pub(crate) mod local;
pub mod mqtt;

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::Sender;

use crate::message::{LogMessage, Position};

/// What the agent's health sums up over its backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// False when the backend cannot currently do its job (broker away, disk full).
    pub ok: bool,
    /// Messages lost for good (a full spool, failed writes).
    pub dropped: u64,
    /// Bytes waiting in a disk spool.
    pub spool_bytes: u64,
}

/// One destination for log messages.
pub trait Backend: Send + Sync {
    /// Short name used in health, metrics and logs (`local`, `mqtt`).
    fn name(&self) -> &'static str;

    /// Hands one message over. Blocks while the backend's queue is full, which slows the
    /// container reader and leaves the log with the engine; never drops silently.
    fn log(&self, msg: &Arc<LogMessage>);

    /// Hands several messages over at once, in order: one wake-up of the backend's thread for
    /// all the lines a reader decoded from one read, not one per line.
    fn log_many(&self, msgs: &[Arc<LogMessage>]) {
        for m in msgs {
            self.log(m);
        }
    }

    /// Flushes what is queued and stops the backend's threads. Called once, after the readers
    /// stopped; returns within the backend's own deadline (well under the contract's 5 s (docs/CONTRACT.md §2)).
    fn shutdown(&self);

    /// What `/api/v1/health` sums up over the backends.
    fn summary(&self) -> Summary;

    /// This backend's own part of `/api/v1/health`, under its name.
    fn health(&self) -> serde_json::Value;

    /// Appends this backend's Prometheus lines to `out`.
    fn metrics(&self, out: &mut String);
}

/// What one backend has taken, per container: the last position; and whom to tell when a
/// container is taken for the first time.
struct Taken {
    /// Looked up at every batch a backend takes: FxHash, not SipHash (keys are engine ids).
    map: Mutex<FxHashMap<Arc<str>, Position>>,
    tell: Arc<Tell>,
}

/// Whom the lanes tell of news, and whether a move is news now: shared by [`Progress`] and
/// its lanes.
#[derive(Default)]
struct Tell {
    first: OnceLock<Sender<()>>,
    /// Set by [`Progress::watch_next`]: the next position any lane takes is told too.
    watch: AtomicBool,
}

/// Per backend, per container: the last position the backend has taken. Each backend holds
/// its own [`Lane`]; the saved cursor is the lowest position over all lanes.
#[derive(Default)]
pub struct Progress {
    lanes: Mutex<Vec<Arc<Taken>>>,
    tell: Arc<Tell>,
}

/// One backend's lane in [`Progress`]: where it reports what it has taken.
#[derive(Clone)]
pub struct Lane {
    taken: Arc<Taken>,
}

impl Lane {
    /// This backend has taken every line of `container` up to `pos`.
    pub fn taken(&self, container: &Arc<str>, pos: Position) {
        advance(&self.taken, container, pos);
    }
}

/// Moves `container` forward to `pos` in one lane; never back.
fn advance(taken: &Taken, container: &Arc<str>, pos: Position) {
    let mut map = taken.map.lock().unwrap_or_else(|p| p.into_inner());
    let news = match map.get_mut(container) {
        Some(p) if *p >= pos => false,
        Some(p) => {
            *p = pos;
            // One load per batch; the swap only once a watch was asked for.
            let watch = &taken.tell.watch;
            watch.load(Ordering::Relaxed) && watch.swap(false, Ordering::Relaxed)
        }
        None => {
            map.insert(container.clone(), pos);
            true
        }
    };
    drop(map);
    if news {
        if let Some(tx) = taken.tell.first.get() {
            let _ = tx.try_send(());
        }
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    /// A new lane, for a backend that is being started: from now on the cursor waits for it.
    pub fn lane(&self) -> Lane {
        let lane = Lane {
            taken: Arc::new(Taken {
                map: Mutex::new(FxHashMap::default()),
                tell: self.tell.clone(),
            }),
        };
        self.lanes().push(lane.taken.clone());
        lane
    }

    /// From now on `tx` is told (without blocking) whenever a lane takes a container for the
    /// first time, so that its first cursor can be saved at once. Set once; later calls are
    /// ignored.
    pub fn tell_first(&self, tx: Sender<()>) {
        let _ = self.tell.first.set(tx);
    }

    /// The next position any lane takes is told too (once, as a first is): a housekeeping
    /// that sleeps long while nothing moves hears when lines flow again.
    pub fn watch_next(&self) {
        self.tell.watch.store(true, Ordering::Relaxed);
    }

    /// True while a watch asked for is still waiting: no lane has moved since.
    pub fn watching(&self) -> bool {
        self.tell.watch.load(Ordering::Relaxed)
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Taken>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every backend has taken `container` up to `pos` (a container read from "now" on: what
    /// was logged before it is not wanted).
    pub fn taken_by_all(&self, container: &Arc<str>, pos: Position) {
        for taken in self.lanes().iter() {
            advance(taken, container, pos);
        }
    }

    /// For each container every backend has taken something of: the lowest such position.
    pub fn safe(&self) -> HashMap<Arc<str>, Position> {
        let mut out: Option<HashMap<Arc<str>, Position>> = None;
        for taken in self.lanes().iter() {
            let map = taken.map.lock().unwrap_or_else(|p| p.into_inner());
            out = Some(match out {
                None => map.iter().map(|(k, p)| (k.clone(), *p)).collect(),
                Some(prev) => prev
                    .into_iter()
                    .filter_map(|(k, p)| map.get(&k).map(|q| (k, p.min(*q))))
                    .collect(),
            });
        }
        out.unwrap_or_default()
    }

    /// Forgets a container (removed from the engine) in every lane.
    pub fn forget(&self, container: &str) {
        for taken in self.lanes().iter() {
            taken
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(container);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ts_ns: i64, seen: u32) -> Position {
        Position { ts_ns, seen }
    }

    #[test]
    fn safe_is_the_slowest_backend() {
        let p = Progress::new();
        let (zero, one) = (p.lane(), p.lane());
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        zero.taken(&a, pos(10, 1));
        zero.taken(&b, pos(5, 1));
        one.taken(&a, pos(7, 2));
        let safe = p.safe();
        assert_eq!(safe.get(&a), Some(&pos(7, 2)));
        assert_eq!(safe.get(&b), None, "backend 1 took nothing of b yet");
        one.taken(&a, pos(6, 1));
        assert_eq!(p.safe().get(&a), Some(&pos(7, 2)), "never moves back");
        one.taken(&b, pos(9, 1));
        assert_eq!(p.safe().get(&b), Some(&pos(5, 1)));
    }

    #[test]
    fn a_container_taken_for_the_first_time_is_told() {
        let p = Progress::new();
        let lane = p.lane();
        let (tx, rx) = crossbeam_channel::bounded(1);
        p.tell_first(tx);
        let a: Arc<str> = Arc::from("a");
        lane.taken(&a, pos(1, 1));
        assert!(rx.try_recv().is_ok(), "first position of a");
        lane.taken(&a, pos(2, 1));
        assert!(rx.try_recv().is_err(), "a moving on is not news");
        p.taken_by_all(&Arc::from("b"), pos(3, 0));
        assert!(rx.try_recv().is_ok(), "b read from now on");
        p.watch_next();
        lane.taken(&a, pos(2, 1));
        assert!(rx.try_recv().is_err(), "no move, no news");
        assert!(p.watching());
        lane.taken(&a, pos(3, 1));
        assert!(rx.try_recv().is_ok(), "watched: the next move is told");
        assert!(!p.watching());
        lane.taken(&a, pos(4, 1));
        assert!(rx.try_recv().is_err(), "once");
    }
}
