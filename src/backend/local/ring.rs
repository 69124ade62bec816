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
    pub fn new(cap: usize) -> Ring {
        Ring {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(cap.min(4096)),
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
