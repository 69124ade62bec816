//! Answering one log query over MQTT (docs/CONTRACT.md §10): the request read
//! ([`super::request`]), its lines found in the ring and the files ([`super::search`]), and
//! the answer published in parts that fit the broker's packet limit, at QoS 0, to the reply
//! topic. The connection, the queue of requests and the thread are [`super::link`]'s.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::request::{self, Parsed, Parts, Request};
use super::search;
use crate::backend::local::ring::Ring;
use crate::backend::mqtt::wire::{self, Alias, Message, Props, Publish};

/// What the query side has done, for health and metrics.
#[derive(Debug, Default)]
pub struct QueryStats {
    /// Queries answered (with lines).
    pub answered: AtomicU64,
    /// Requests answered with an error.
    pub bad: AtomicU64,
    /// Requests dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Requests with no reply topic (nothing to answer).
    pub unanswerable: AtomicU64,
    /// Answer parts published.
    pub parts: AtomicU64,
}

impl QueryStats {
    pub fn json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "answered": get(&self.answered),
            "bad": get(&self.bad),
            "dropped": get(&self.dropped),
            "unanswerable": get(&self.unanswerable),
            "parts": get(&self.parts),
        })
    }
}

/// What queries read from.
pub struct Sources {
    pub ring: Arc<Ring>,
    /// `LOG_DIR`, when files are kept.
    pub log_dir: Option<PathBuf>,
}

/// Answers one request on `w` (flushed at the end): its lines in parts of at most `budget`
/// bytes, or its error.
pub fn answer(
    w: &mut wire::Writer,
    budget: usize,
    m: &Message,
    sources: &Sources,
    stats: &QueryStats,
) -> Result<(), wire::Error> {
    let (reply, outcome) = match request::parse(m) {
        Parsed::Unanswerable(why) => {
            stats.unanswerable.fetch_add(1, Ordering::Relaxed);
            log::debug!("mqtt query not answered: {why}");
            return Ok(());
        }
        Parsed::Bad(reply, e) => (reply, Err(e)),
        Parsed::Query(Request { filter, reply }) => (reply, Ok(filter)),
    };
    let props = match &reply.correlation_data {
        Some(data) => Some(Props::default().with_reply(None, Some(data))?),
        None => None,
    };
    let mut emit = |payload: &[u8]| -> std::io::Result<()> {
        stats.parts.fetch_add(1, Ordering::Relaxed);
        w.publish_with(&Publish {
            pkid: 0,
            topic: &reply.topic,
            payload,
            qos: 0,
            retain: false,
            dup: false,
            props: props.as_ref(),
            alias: Alias::None,
        })
    };
    match outcome {
        Err(e) => {
            stats.bad.fetch_add(1, Ordering::Relaxed);
            emit(&request::error_payload(&reply, &e))?;
        }
        Ok(filter) => {
            let found = search::search(&sources.ring, sources.log_dir.as_deref(), &filter);
            // The topic, the properties and the headers take their share of the packet.
            let extra = reply.correlation_data.as_ref().map_or(0, Vec::len);
            let budget = budget.saturating_sub(reply.topic.len() + extra + 96);
            send_found(
                &found,
                Parts::new(&reply.correlation_json, budget),
                &mut emit,
            )?;
            stats.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
    w.flush()?;
    Ok(())
}

/// Publishes what a search found, in parts, through `emit`.
fn send_found(
    found: &search::Found,
    mut parts: Parts,
    emit: &mut impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if found.left_out > 0 {
        log::info!(
            "mqtt query: {} older lines of the files left out (more than {} MiB)",
            found.left_out,
            search::MAX_ANSWER_BYTES >> 20
        );
    }
    let mut json = String::new();
    for item in &found.items {
        let bytes = match item {
            search::Item::File(line) => line.as_bytes(),
            search::Item::Ring(msg) => {
                json.clear();
                msg.write_json(&mut json);
                json.as_bytes()
            }
        };
        parts.push(bytes, emit)?;
    }
    parts.finish(emit).map(drop)
}
