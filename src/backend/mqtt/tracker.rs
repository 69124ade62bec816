//! Which container positions the MQTT backend may report to `Progress`: a container's position
//! is reported only once every earlier message of that container (in intake order) is
//! acknowledged or spooled.
//!
//! One lane per container, so a batch that waits for its interval holds back its own container's
//! cursor only, and the lanes hold no more than what is waiting or in flight. This module never
//! talks to `Progress` itself: [`Tracker::report`] hands the positions to its caller.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::message::Position;

/// Empty lanes are dropped once there are more than this many (containers come and go).
const IDLE_LANES: usize = 64;

pub(super) struct Tracker {
    lanes: FxHashMap<Arc<str>, Lane>,
    /// Lanes whose front may have been taken since the last report.
    dirty: Vec<Arc<str>>,
    /// Empty lanes are dropped when there are more lanes than this.
    prune_at: usize,
}

#[derive(Default)]
struct Lane {
    /// The seq of the first slot.
    base: u64,
    /// Positions in intake order, and whether each is taken.
    slots: VecDeque<(Position, bool)>,
}

/// A container message's place in the tracker.
#[derive(Clone)]
pub(super) struct Seq {
    container: Arc<str>,
    n: u64,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            lanes: FxHashMap::default(),
            dirty: Vec::new(),
            prune_at: IDLE_LANES,
        }
    }
}

impl Tracker {
    pub(super) fn push(&mut self, container: Arc<str>, pos: Position) -> Seq {
        let lane = self.lanes.entry(container.clone()).or_default();
        lane.slots.push_back((pos, false));
        Seq {
            container,
            n: lane.base + lane.slots.len() as u64 - 1,
        }
    }

    pub(super) fn take(&mut self, seq: &Seq) {
        let Some(lane) = self.lanes.get_mut(&seq.container) else {
            return;
        };
        let Some(i) = seq.n.checked_sub(lane.base) else {
            return;
        };
        if let Some(s) = lane.slots.get_mut(i as usize) {
            s.1 = true;
            if i == 0 && self.dirty.last() != Some(&seq.container) {
                self.dirty.push(seq.container.clone());
            }
        }
    }

    /// Messages tracked, over all containers.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lanes.values().map(|l| l.slots.len()).sum()
    }

    /// Hands `out` the furthest position of every container whose front moved since the last
    /// report.
    pub(super) fn report(&mut self, mut out: impl FnMut(Arc<str>, Position)) {
        for c in self.dirty.drain(..) {
            let Some(lane) = self.lanes.get_mut(&c) else {
                continue;
            };
            let mut last = None;
            while lane.slots.front().is_some_and(|s| s.1) {
                last = lane.slots.pop_front().map(|s| s.0);
                lane.base += 1;
            }
            if let Some(p) = last {
                out(c, p);
            }
            // After a burst, give back what it grew to.
            if lane.slots.capacity() > 1024 && lane.slots.len() < lane.slots.capacity() / 4 {
                lane.slots.shrink_to(lane.slots.len() * 2);
            }
        }
        if self.lanes.len() > self.prune_at {
            // No seq of an empty lane is outstanding, so a new lane may start again at 0.
            self.lanes.retain(|_, l| !l.slots.is_empty());
            self.prune_at = IDLE_LANES.max(2 * self.lanes.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Lane, Progress};

    fn report(t: &mut Tracker, lane: &Lane) {
        t.report(|c, pos| lane.taken(&c, pos));
    }

    #[test]
    fn tracker_reports_in_order() {
        let p = Progress::new();
        let lane = p.lane();
        let mut t = Tracker::default();
        let c: Arc<str> = Arc::from("c");
        let d: Arc<str> = Arc::from("d");
        let pos = |n| Position { ts_ns: n, seen: 1 };
        let a = t.push(c.clone(), pos(1));
        let b = t.push(c.clone(), pos(2));
        let other: Vec<Seq> = (10..20).map(|n| t.push(d.clone(), pos(n))).collect();
        t.take(&b);
        for s in &other {
            t.take(s);
        }
        report(&mut t, &lane);
        assert_eq!(p.safe().get(&c), None, "1 is still only in memory");
        assert_eq!(
            p.safe().get(&d),
            Some(&pos(19)),
            "another container's cursor is not held back"
        );
        assert_eq!(t.len(), 2);
        t.take(&a);
        report(&mut t, &lane);
        assert_eq!(p.safe().get(&c), Some(&pos(2)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn tracker_forgets_empty_lanes_of_gone_containers() {
        let p = Progress::new();
        let lane = p.lane();
        let mut t = Tracker::default();
        for i in 0..=IDLE_LANES {
            let s = t.push(Arc::from(format!("c{i}")), Position { ts_ns: 1, seen: 1 });
            t.take(&s);
        }
        let held = t.push(Arc::from("busy"), Position { ts_ns: 1, seen: 1 });
        report(&mut t, &lane);
        assert_eq!(
            t.lanes.len(),
            1,
            "only the lane with a message waiting is kept"
        );
        t.take(&held);
        report(&mut t, &lane);
        assert_eq!(p.safe().len(), IDLE_LANES + 2);
    }
}
