//! Which container positions the MQTT backend may report to `Progress`: a container's position
//! is reported only once every earlier message of that container (in intake order) is
//! acknowledged or spooled.
//!
//! One lane per container, so a batch that waits for its interval holds back its own container's
//! cursor only, and the lanes hold no more than what is waiting or in flight. This module never
//! talks to `Progress` itself: [`Tracker::report`] hands the positions to its caller.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::message::Position;

/// Empty lanes are dropped once there are more than this many (containers come and go).
const IDLE_LANES: usize = 64;

pub(super) struct Tracker {
    /// The lanes, found by container through `index`.
    lanes: Vec<Lane>,
    index: FxHashMap<Arc<str>, usize>,
    /// The lanes by id, for seqs pushed before empty lanes were dropped.
    by_id: FxHashMap<NonZeroU32, usize>,
    /// The lane of the last message pushed: messages come in runs from one container, and the
    /// container need not be hashed and compared for each (its `Arc` is the same).
    last: usize,
    /// Lanes whose front may have been taken since the last report, by their place in `lanes`
    /// (which changes only when empty lanes are dropped, after the report drained this).
    dirty: Vec<usize>,
    /// Empty lanes are dropped when there are more lanes than this.
    prune_at: usize,
    /// The id of the lane made last.
    last_id: NonZeroU32,
}

struct Lane {
    container: Arc<str>,
    /// Names the lane for its seqs: a seq's lane is the one at its place with its id, or found
    /// by id after empty lanes were dropped.
    id: NonZeroU32,
    /// The seq of the first slot.
    base: u64,
    /// Positions in intake order, and whether each is taken.
    slots: VecDeque<Slot>,
}

/// A position and whether its message is taken: 16 bytes, where `(Position, bool)` took 24.
#[derive(Clone, Copy)]
struct Slot {
    ts_ns: i64,
    seen: u32,
    taken: bool,
}

impl Slot {
    fn position(&self) -> Position {
        Position {
            ts_ns: self.ts_ns,
            seen: self.seen,
        }
    }
}

/// The length from which [`push_gently`] grows a queue by a quarter.
const GENTLE_FROM: usize = 1024;

/// Pushes `item` onto `q`; a full queue of [`GENTLE_FROM`] items or more grows by a quarter
/// instead of doubling. The session's queues stop growing a little past their bounds (about
/// 1,024 messages and what one intake adds), so a burst leaves them about 1.25 × their bound,
/// not 2 ×, in memory.
#[inline(always)]
pub(super) fn push_gently<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == q.capacity() {
        grow_gently(q);
    }
    q.push_back(item);
}

/// Makes room in a full queue of [`GENTLE_FROM`] items or more; a smaller one is left to
/// double as it does.
#[cold]
fn grow_gently<T>(q: &mut VecDeque<T>) {
    if q.len() >= GENTLE_FROM {
        q.reserve_exact(q.len() / 4);
    }
}

/// A container message's place in the tracker: small (no `Arc`), as every message queued or
/// in flight carries one.
#[derive(Clone)]
pub(super) struct Seq {
    /// Its lane's id: a lane lives while it holds a slot, so no other lane has this id then
    /// (ids wrap after 2^32 lanes made).
    id: NonZeroU32,
    /// Where its lane was in `lanes` when pushed: still there unless empty lanes were dropped
    /// since, which the id there tells.
    lane: u32,
    n: u64,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            lanes: Vec::new(),
            index: FxHashMap::default(),
            by_id: FxHashMap::default(),
            last: 0,
            dirty: Vec::new(),
            prune_at: IDLE_LANES,
            last_id: NonZeroU32::MIN,
        }
    }
}

impl Tracker {
    pub(super) fn push(&mut self, container: &Arc<str>, pos: Position) -> Seq {
        let i = match self.lanes.get(self.last) {
            Some(l) if Arc::ptr_eq(&l.container, container) => self.last,
            _ => self.find_or_add(container),
        };
        self.last = i;
        let lane = &mut self.lanes[i];
        push_gently(
            &mut lane.slots,
            Slot {
                ts_ns: pos.ts_ns,
                seen: pos.seen,
                taken: false,
            },
        );
        Seq {
            n: lane.base + lane.slots.len() as u64 - 1,
            id: lane.id,
            lane: i as u32,
        }
    }

    /// The place of `container`'s lane, made if there is none.
    fn find_or_add(&mut self, container: &Arc<str>) -> usize {
        if let Some(&i) = self.index.get(container) {
            return i;
        }
        self.last_id = self.last_id.checked_add(1).unwrap_or(NonZeroU32::MIN);
        self.lanes.push(Lane {
            container: container.clone(),
            id: self.last_id,
            base: 0,
            slots: VecDeque::new(),
        });
        let i = self.lanes.len() - 1;
        self.index.insert(container.clone(), i);
        self.by_id.insert(self.last_id, i);
        i
    }

    pub(super) fn take(&mut self, seq: &Seq) {
        let i = match self.lanes.get(seq.lane as usize) {
            Some(l) if l.id == seq.id => seq.lane as usize,
            _ => match self.by_id.get(&seq.id) {
                Some(&i) => i,
                None => return,
            },
        };
        let lane = &mut self.lanes[i];
        let Some(k) = seq.n.checked_sub(lane.base) else {
            return;
        };
        if let Some(s) = lane.slots.get_mut(k as usize) {
            s.taken = true;
            if k == 0 && self.dirty.last() != Some(&i) {
                self.dirty.push(i);
            }
        }
    }

    /// Messages tracked, over all containers.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lanes.iter().map(|l| l.slots.len()).sum()
    }

    /// Hands `out` the furthest position of every container whose front moved since the last
    /// report.
    pub(super) fn report(&mut self, mut out: impl FnMut(Arc<str>, Position)) {
        for i in self.dirty.drain(..) {
            let Some(lane) = self.lanes.get_mut(i) else {
                continue;
            };
            let mut last = None;
            while lane.slots.front().is_some_and(|s| s.taken) {
                last = lane.slots.pop_front().map(|s| s.position());
                lane.base += 1;
            }
            if let Some(p) = last {
                out(lane.container.clone(), p);
            }
            // After a burst, give back what it grew to.
            if lane.slots.capacity() > 1024 && lane.slots.len() < lane.slots.capacity() / 4 {
                lane.slots.shrink_to(lane.slots.len() * 2);
            }
        }
        if self.lanes.len() > self.prune_at {
            // No seq of an empty lane is outstanding, so a new lane may start again at 0.
            self.lanes.retain(|l| !l.slots.is_empty());
            self.index.clear();
            self.by_id.clear();
            for (i, l) in self.lanes.iter().enumerate() {
                self.index.insert(l.container.clone(), i);
                self.by_id.insert(l.id, i);
            }
            self.prune_at = IDLE_LANES.max(2 * self.lanes.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Lane, Progress};

    /// A queue that a burst takes a little past 1,024 items grows by a quarter, not to 2,048,
    /// and keeps every item in order.
    #[test]
    fn a_queue_past_its_bound_grows_by_a_quarter() {
        let mut q = VecDeque::new();
        for i in 0..1300 {
            push_gently(&mut q, i);
        }
        assert!(
            q.capacity() >= 1300 && q.capacity() <= 1600,
            "{}",
            q.capacity()
        );
        assert!(q.iter().copied().eq(0..1300));
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

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
        let a = t.push(&c, pos(1));
        let b = t.push(&c, pos(2));
        let other: Vec<Seq> = (10..20).map(|n| t.push(&d, pos(n))).collect();
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

    /// A container's lane is found by its id, whichever `Arc` of it comes, and across
    /// containers taking turns.
    #[test]
    fn one_lane_per_container_id() {
        let p = Progress::new();
        let lane = p.lane();
        let mut t = Tracker::default();
        let pos = |n| Position { ts_ns: n, seen: 1 };
        let a = t.push(&Arc::from("c"), pos(1));
        let b = t.push(&Arc::from("d"), pos(2));
        let c = t.push(&Arc::from("c"), pos(3));
        assert_eq!(t.lanes.len(), 2);
        t.take(&c);
        t.take(&b);
        report(&mut t, &lane);
        assert_eq!(p.safe().get("c"), None, "1 is not taken");
        assert_eq!(p.safe().get("d"), Some(&pos(2)));
        t.take(&a);
        report(&mut t, &lane);
        assert_eq!(p.safe().get("c"), Some(&pos(3)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn tracker_forgets_empty_lanes_of_gone_containers() {
        let p = Progress::new();
        let lane = p.lane();
        let mut t = Tracker::default();
        for i in 0..=IDLE_LANES {
            let s = t.push(&Arc::from(format!("c{i}")), Position { ts_ns: 1, seen: 1 });
            t.take(&s);
        }
        let held = t.push(&Arc::from("busy"), Position { ts_ns: 1, seen: 1 });
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
