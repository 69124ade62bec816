//! The memory ring: the last `LOG_MAX_MEMORY` messages, for `/api/v1/logs`, and the fan-out of
//! new messages to live subscribers (`/api/v1/logs/stream`).
//!
//! It holds `Arc`s of messages the backends already share, so a message costs memory once.
//! A subscriber that does not keep up is cut off, never waited for.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::message::LogMessage;

/// A bounded, newest-last list of messages.
pub struct Ring {
    inner: Mutex<Inner>,
    cap: usize,
}

struct Inner {
    items: VecDeque<Arc<LogMessage>>,
    subscribers: Vec<Sender<Arc<LogMessage>>>,
}

impl Ring {
    /// A ring of `cap` messages, its slots allocated once: grown by doubling, the list of 10 000
    /// would end at 16 384 slots (128 KiB, every page touched as the ring turns, not 78), each
    /// step a copy beside the one before. Slots not yet used are address space, not memory.
    pub fn new(cap: usize) -> Ring {
        Ring {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(cap.max(1)),
                subscribers: Vec::new(),
            }),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushes messages in order under one lock.
    pub fn push_many(&self, msgs: &[Arc<LogMessage>]) {
        let mut inner = self.lock();
        for msg in msgs {
            Self::push_locked(&mut inner, self.cap, msg);
        }
    }

    fn push_locked(inner: &mut Inner, cap: usize, msg: &Arc<LogMessage>) {
        if inner.items.len() == cap {
            inner.items.pop_front();
        }
        inner.items.push_back(msg.clone());
        // A full subscriber queue means a slow client: drop it (its stream ends), keep going.
        inner.subscribers.retain(|tx| {
            !matches!(
                tx.try_send(msg.clone()),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
            )
        });
    }

    /// Up to `limit` of the newest messages that `keep` accepts, oldest first.
    pub fn query(&self, limit: usize, keep: impl Fn(&LogMessage) -> bool) -> Vec<Arc<LogMessage>> {
        newest(&self.lock(), limit, keep)
    }

    /// The current contents that `keep` accepts (up to `limit`) and a receiver of every message
    /// pushed after them, taken under one lock so nothing falls between the two.
    pub fn subscribe(
        &self,
        limit: usize,
        queue: usize,
        keep: impl Fn(&LogMessage) -> bool,
    ) -> (Vec<Arc<LogMessage>>, Receiver<Arc<LogMessage>>) {
        let (tx, rx) = crossbeam_channel::bounded(queue);
        let mut inner = self.lock();
        let backlog = newest(&inner, limit, keep);
        inner.subscribers.push(tx);
        (backlog, rx)
    }

    /// Messages held now.
    pub fn held(&self) -> usize {
        self.lock().items.len()
    }
}

/// Up to `limit` of the newest messages that `keep` accepts, oldest first.
fn newest(inner: &Inner, limit: usize, keep: impl Fn(&LogMessage) -> bool) -> Vec<Arc<LogMessage>> {
    let mut out: Vec<Arc<LogMessage>> = inner
        .items
        .iter()
        .rev()
        .filter(|m| keep(m))
        .take(limit)
        .cloned()
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{bench_line, bench_origin, Origin};

    /// What a reader does with a run of lines, as `make bench` makes them: 64 messages made,
    /// handed to the ring, let go of. It is also the harness for measuring the ring's cost per
    /// line with the making and freeing of messages (`CLD_COST_LINES=30000`, callgrind with
    /// `--toggle-collect='*ring*tests*drive*'`).
    #[inline(never)]
    fn drive(ring: &Ring, origin: &Arc<Origin>, n: usize) {
        let mut batch = Vec::with_capacity(64);
        for start in (0..n).step_by(64) {
            batch.extend((start..n.min(start + 64)).map(|i| bench_line(origin, i)));
            ring.push_many(&batch);
            batch.clear();
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_messages_in_order() {
        let n = crate::message::cost_lines();
        let origin = bench_origin();
        // A third of the lines, as the bench's LOG_MAX_MEMORY of its 30,000.
        let cap = n / 3;
        let ring = Ring::new(cap);
        drive(&ring, &origin, n);
        let held = ring.query(usize::MAX, |_| true);
        assert_eq!(held.len(), cap);
        let want: Vec<i64> = (n - cap..n)
            .map(|i| 1_700_000_000_000_000_000 + i as i64 * 1000)
            .collect();
        let got: Vec<i64> = held.iter().map(|m| m.ts_ns).collect();
        assert_eq!(got, want);
    }
}
