//! Retries of an attach that failed for a reason that passes: the engine socket could not be
//! opened (out of file descriptors), the engine did not answer the inspect, no reader thread
//! could be started. Without them a container started while the host was short of descriptors
//! would never be followed (its `start` event comes once).
//!
//! One `attach-retry` thread per such container, and only one: it waits with a back-off
//! ([`FIRST`] doubling to [`MAX`]), wakes at stop, and ends when the container is followed,
//! gone, not one we follow, or the agent stops. It never holds the registry's lock while it
//! waits.

use std::collections::BTreeSet;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::Shared;

/// The first wait before a retry.
const FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two retries: a container is followed at most this long after
/// descriptors are back.
const MAX: Duration = Duration::from_secs(5);

/// The ids with a retry under way.
fn retrying(shared: &Shared) -> MutexGuard<'_, BTreeSet<String>> {
    shared.retrying.lock().unwrap_or_else(|p| p.into_inner())
}

/// Retries attaching `id` on a thread of its own, unless a retry for it is under way.
pub(super) fn later(shared: &Arc<Shared>, id: &str, from_event: bool, why: &str) {
    if shared.stopping() || !retrying(shared).insert(id.to_string()) {
        return;
    }
    log::warn!("{why}; retrying until it is followed");
    let s = shared.clone();
    let owned = id.to_string();
    let spawned = std::thread::Builder::new()
        .name("attach-retry".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            run(&s, &owned, from_event);
            retrying(&s).remove(&owned);
        });
    if let Err(e) = spawned {
        retrying(shared).remove(id);
        log::error!(
            "cannot retry attaching {id}: {e}; it is listed again on the next engine reconnect"
        );
    }
}

fn run(s: &Arc<Shared>, id: &str, from_event: bool) {
    let mut delay = FIRST;
    while s.sleep(delay) {
        if s.is_followed(id) {
            return;
        }
        delay = (delay * 2).min(MAX);
        match s.try_attach(id, from_event) {
            Ok(()) => return,
            Err(why) => log::debug!("{why}; retrying in {delay:?}"),
        }
    }
}
