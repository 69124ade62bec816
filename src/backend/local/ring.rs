//! The memory ring: the last `LOG_MAX_MEMORY` messages, for `/api/v1/logs`, and the fan-out of
//! new messages to live subscribers (`/api/v1/logs/stream`).
//!
//! It holds `Arc`s of messages the backends already share, so a message costs memory once.
//! A subscriber that does not keep up is cut off, never waited for.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::message::{spares, LogMessage};

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

    /// Pushes messages in order under one lock. The messages they replace are kept by this
    /// thread for its next ones ([`spares`]).
    pub fn push_many(&self, msgs: &[Arc<LogMessage>]) {
        let mut inner = self.lock();
        for msg in msgs {
            Self::push_locked(&mut inner, self.cap, msg);
        }
    }

    fn push_locked(inner: &mut Inner, cap: usize, msg: &Arc<LogMessage>) {
        if inner.items.len() == cap {
            if let Some(old) = inner.items.pop_front() {
                spares::keep(old);
            }
        }
        inner.items.push_back(msg.clone());
        if inner.subscribers.is_empty() {
            return;
        }
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

    /// Taken by the tests that fill spares: the bound on all threads' spares is shared.
    static SPARES_BUDGET: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn messages_the_ring_lets_go_of_are_written_over_by_the_next_ones() {
        let _budget = SPARES_BUDGET.lock().unwrap_or_else(|p| p.into_inner());
        let origin = bench_origin();
        let ring = Ring::new(100);
        let first: Vec<_> = (0..100).map(|i| bench_line(&origin, i)).collect();
        ring.push_many(&first);
        assert_eq!(spares::held(), 0, "nothing was replaced yet");
        // One of the oldest is still held elsewhere (an API answer, a queued MQTT message).
        let held = first[1].clone();
        let addresses: Vec<_> = first.iter().map(Arc::as_ptr).collect();
        drop(first);
        let batch: Vec<_> = (100..170).map(|i| bench_line(&origin, i)).collect();
        ring.push_many(&batch);
        // 70 replaced, one of them held elsewhere; at most a batch is kept.
        assert_eq!(spares::held(), spares::MAX);
        drop(batch);
        let next: Vec<_> = (170..180).map(|i| bench_line(&origin, i)).collect();
        for (k, m) in next.iter().enumerate() {
            assert!(
                addresses.contains(&Arc::as_ptr(m)),
                "line {k} was allocated anew"
            );
            assert_ne!(Arc::as_ptr(m), Arc::as_ptr(&held));
            // Made in a thread of its own, which keeps no spares.
            let fresh = std::thread::scope(|s| {
                let made = s.spawn(|| bench_line(&origin, 170 + k).json());
                made.join().ok()
            });
            assert_eq!(
                Some(m.json()),
                fresh,
                "a written-over message renders as a new one"
            );
        }
        assert_eq!(
            held.ts_ns, 1_700_000_000_000_001_000,
            "the held one is untouched"
        );
        ring.push_many(&next);
        assert_eq!(spares::held(), spares::MAX, "never more than a batch");
    }

    #[test]
    fn all_threads_together_keep_a_bounded_number_of_spares() {
        let _budget = SPARES_BUDGET.lock().unwrap_or_else(|p| p.into_inner());
        let origin = bench_origin();
        let threads = spares::ALL_MAX / spares::MAX + 4;
        let filled = std::sync::Barrier::new(threads);
        let held: Vec<usize> = std::thread::scope(|s| {
            let each: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        // Each thread its own full ring, then a batch that replaces 64.
                        let ring = Ring::new(64);
                        ring.push_many(
                            &(0..64).map(|i| bench_line(&origin, i)).collect::<Vec<_>>(),
                        );
                        ring.push_many(
                            &(64..128)
                                .map(|i| bench_line(&origin, i))
                                .collect::<Vec<_>>(),
                        );
                        let mine = spares::held();
                        filled.wait();
                        assert!(spares::held_in_all() <= spares::ALL_MAX);
                        mine
                    })
                })
                .collect();
            each.into_iter().filter_map(|t| t.join().ok()).collect()
        });
        assert_eq!(held.len(), threads);
        assert!(held.iter().all(|&n| n <= spares::MAX));
        assert!(held.iter().sum::<usize>() <= spares::ALL_MAX);
        assert!(
            held.iter().any(|&n| n < spares::MAX),
            "some thread was refused room"
        );
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
