//! The MQTT session: the backend's state as a state machine. What waits in memory (open batches,
//! the memory queue, units returned from flight), what is in flight and under which packet id,
//! the spool, and which container positions may be reported to `Progress`.
//!
//! It is driven by events — [`Session::intake`], [`Session::connected`], [`Session::acked`],
//! [`Session::pubrec`], [`Session::ping_resp`], [`Session::refused`], [`Session::disconnected`],
//! [`Session::tick`], [`Session::status`] (fresh health for the retained status), and at shutdown [`Session::flush`] and [`Session::stop`] — and answers with
//! [`Action`]s the adapter takes from [`Session::poll`]: publishes (with their packet ids),
//! PUBRELs, pings, progress reports, and a request to drop a dead connection. It never blocks,
//! never reads the clock (every event brings `now`), and knows no socket: the adapter in `mod.rs`
//! writes what it is given with `wire.rs` and reports what it reads. The spool is
//! its one owned dependency, disk I/O included, and deliberately not behind a trait: its
//! acknowledgement offsets (acks must reach it in spool order, a disconnect rewinds it) are
//! part of what must hold, so the model test runs the real one (on tmpfs) rather than a fake.
//!
//! The logical queue, oldest first, is: in flight → retry (returned from flight by a disconnect)
//! → spool replay → spool on disk → memory → open batches. Every path keeps that order, so a
//! subscriber sees each topic's lines in order and a restart resumes without a gap. A message
//! counts as delivered only on its PUBACK/PUBCOMP (QoS 1/2) or, at QoS 0, once handed to the
//! adapter to write and not refused (settled at the next [`Session::poll`]; a write that then
//! fails loses it, as QoS 0 allows).
//!
//! Packet ids are the session's: each QoS 1/2 publish is handed out with the next free id
//! (1..=65535, skipping any still in flight), and acknowledgements are matched by it. Only ids
//! of the current connection ever reach the session.
//!
//! Keep-alive is the session's too (MQTT 3.1.1 §3.1.2.10): when nothing was handed out for
//! three quarters of the keep-alive, it asks for a PINGREQ ([`Action::Ping`]); a PINGRESP that
//! has not come one keep-alive later means the connection is dead ([`Action::Reconnect`]).
//!
//! At MQTT 5 (docs/CONTRACT.md §9) the session also obeys what the CONNACK [`Granted`]: the
//! receive maximum bounds the window, the maximum packet size splits batches and cuts messages
//! ([`Session::fit`]), the server keep-alive replaces ours, the maximum QoS and retain cap ours.
//! It reads the reason code of each answer ([`Ack`]): a refusal for now is sent again, first,
//! after a back-off; a refusal for good settles its messages undelivered, in their place (so the
//! cursor and the spool move in order), counted by reason and said once per reason and topic.
//! Each publish carries its topic's properties and alias, from [`Topics`] (`v5.rs`), whose
//! aliases start afresh at every CONNACK. None of it is touched at 3.1.1.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;

use super::spool::{Dropped, Spool};
use super::topic;
use super::tracker::{push_gently, Seq, Tracker};
use super::v5::{Topics, Who};
use super::wire::{self, Alias, Props};
use crate::config::{MqttConfig, MqttVersion};
use crate::message::{Level, LogMessage, Origin, Position, SourceKind};

/// Messages kept in memory (retry, memory queue, open batches) before the spool takes over.
/// Sized for a Pi: `make bench` saw no loss of throughput against 4096 messages / 4 MiB.
const MEM_MAX_MSGS: usize = 1024;
/// Bytes kept in memory before the spool takes over.
const MEM_MAX_BYTES: usize = 1 << 20;
/// Messages moved to the spool in one write.
const SPOOL_CHUNK_MSGS: usize = 1024;
/// Publishes handed out and not yet acknowledged. 192 × 100-byte lines keep a loopback or LAN
/// link busy; the byte bound below keeps big batches in check.
pub const MAX_INFLIGHT_UNITS: usize = 192;
const MAX_INFLIGHT_BYTES: usize = 512 << 10;
/// Largest batch payload we build; well below [`MAX_PACKET`] so a batch never tears the
/// connection down.
const PAYLOAD_CAP: usize = 256 << 10;
/// The largest packet we send, and the largest remaining length we take from the broker.
pub const MAX_PACKET: usize = 1 << 20;
/// The most parts a new batch makes room for at once (a larger `MQTT_BATCH_MAX` grows as it
/// fills, so a rarely used topic does not hold a large list).
const BATCH_PARTS_RESERVED: usize = 256;
/// Capacity of the payload buffers kept for reuse (see [`Session::recycle`]): a window of
/// single messages, or a few batches.
const SPARE_BYTES: usize = 256 << 10;
/// Packet ids of MQTT: 1..=65535 (0 is not one).
const PKIDS: usize = 1 << 16;
/// The online status is published again at most this often when its health changes
/// (docs/CONTRACT.md §10).
pub const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Connected but no acknowledgement for this long: treat the broker as away and spool.
const STALL: Duration = Duration::from_secs(2);
/// Connected with publishes in flight and no acknowledgement for this long: the connection is
/// given up ([`Action::Reconnect`]) and what was in flight is sent again on the next one. A
/// broker that answers pings but no publishes, or a client that stopped sending, must not hold
/// the logs back for good (`make bench` saw the window stall that way, about once in ten runs of
/// 20 flat-out containers at QoS 1, with nothing on the wire either way).
const ACK_STALL: Duration = Duration::from_secs(10);
/// How long a disconnect may last before [`Session::healthy`] says so.
const GRACE: Duration = Duration::from_secs(3);
/// How soon a session that held a publish back (the adapter could not take it) tries again
/// when no event comes first.
const HELD_RETRY: Duration = Duration::from_millis(200);
/// How long after a dropped message [`Session::healthy`] says so.
const DROP_UNHEALTHY: Duration = Duration::from_secs(60);
/// The first wait before a publish the broker refused for now (MQTT 5: quota exceeded, server
/// busy) is sent again; it doubles while refusals go on, up to [`RETRY_MAX`], well below
/// [`ACK_STALL`].
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Reasons and topics remembered as said (a warning once per reason and topic); past it the
/// set starts again.
const MAX_WARNED: usize = 1024;

/// What the broker granted in its CONNACK. MQTT 3.1.1 grants nothing ([`Granted::v311`]); an
/// MQTT 5 CONNACK may set each limit.
#[derive(Debug, Clone, Copy)]
pub struct Granted {
    /// The broker resumed a session. We ask for a clean one; either way the adapter's client is
    /// new, so what was in flight is sent again.
    pub session_present: bool,
    /// Publishes the broker takes unacknowledged at once (v5 receive maximum).
    pub receive_max: u16,
    /// The largest packet the broker takes, whole (v5 maximum packet size).
    pub max_packet: usize,
    /// Topic aliases the broker allows (v5 topic alias maximum).
    pub topic_alias_max: u16,
    /// The keep-alive the broker asks for instead of ours (v5 server keep alive); `None`: ours.
    pub keep_alive: Option<Duration>,
    /// The highest QoS the broker takes (v5 maximum QoS).
    pub max_qos: u8,
    /// Whether the broker takes retained messages (v5 retain available).
    pub retain: bool,
}

impl Granted {
    /// What an MQTT 3.1.1 CONNACK grants: no limits beyond ours, no aliases.
    pub fn v311(session_present: bool) -> Granted {
        Granted {
            session_present,
            receive_max: u16::MAX,
            max_packet: MAX_PACKET,
            topic_alias_max: 0,
            keep_alive: None,
            max_qos: 2,
            retain: true,
        }
    }
}

/// How the broker answered a publish (PUBACK, or at QoS 2 a PUBREC that failed, or PUBCOMP).
/// MQTT 3.1.1 knows success only; an MQTT 5 reason code of 0x80 or more is a failure, which is
/// passing or final ([`Ack::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Delivered (reason codes below 0x80: success, no matching subscribers).
    Ok,
    /// Not taken now, for a reason that passes (the code): sent again, in order, after a
    /// back-off.
    Retry(u8),
    /// Refused for good (the code): dropped, counted by reason, said once per reason and topic.
    Refused(u8),
}

impl Ack {
    /// What an MQTT 5 reason code means for the message. Passing: quota exceeded (0x97), server
    /// busy (0x89) and packet identifier in use (0x91, a matter of the id, not of the message).
    /// Everything else of 0x80 and above is final, implementation specific error (0x83) and
    /// unspecified error (0x80) included: a broker that gives no reason it would not give
    /// again must not hold every later message back for ever.
    pub fn of(code: u8) -> Ack {
        match code {
            0..=0x7f => Ack::Ok,
            0x89 | 0x91 | 0x97 => Ack::Retry(code),
            _ => Ack::Refused(code),
        }
    }
}

/// The final refusals counted apart, by MQTT 5 reason code and name in health and metrics; any
/// other code is counted as `other`.
pub const REFUSALS: [(u8, &str, &str); 6] = [
    (0x80, "unspecifiedError", "unspecified_error"),
    (
        0x83,
        "implementationSpecificError",
        "implementation_specific_error",
    ),
    (0x87, "notAuthorized", "not_authorized"),
    (0x90, "topicNameInvalid", "topic_name_invalid"),
    (0x95, "packetTooLarge", "packet_too_large"),
    (0x99, "payloadFormatInvalid", "payload_format_invalid"),
];

/// MQTT 5 reason codes the session gives itself: a message that cannot fit the broker's
/// maximum packet size even cut, and one whose topic cannot be a topic name.
const PACKET_TOO_LARGE: u8 = 0x95;
const TOPIC_NAME_INVALID: u8 = 0x90;

/// The place of a refusal's code in [`Counters::refused`].
fn refusal_slot(code: u8) -> usize {
    REFUSALS
        .iter()
        .position(|r| r.0 == code)
        .unwrap_or(REFUSALS.len())
}

/// Names one publish request, to give it back with [`Session::refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

/// A publish for the adapter to write on its connection, in the order given.
#[derive(Debug)]
pub struct Publish {
    pub token: Token,
    /// Its packet id; 0 at QoS 0.
    pub pkid: u16,
    pub topic: Arc<str>,
    /// Hand it back with [`Session::recycle`] once written, for the next publish to reuse.
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5: the properties of its topic (`None` at 3.1.1).
    pub props: Option<Arc<Props>>,
    /// MQTT 5: its topic alias on this connection.
    pub alias: Alias,
}

/// What the session asks of its adapter.
#[derive(Debug)]
pub enum Action {
    /// Write this publish; if there is no connection to write it on, call [`Session::refused`].
    Publish(Publish),
    /// Write a PUBREL for this packet id: the broker received the QoS 2 publish (PUBREC).
    PubRel(u16),
    /// Write a PINGREQ (keep-alive); the answer is reported with [`Session::ping_resp`].
    Ping,
    /// Every message of this container up to this position is acknowledged or spooled.
    Progress(Arc<str>, Position),
    /// The connection is stuck or dead (no acknowledgement, no PINGRESP): the session has given
    /// it up (as on a disconnect); close it and make a new one. Nothing of it may reach the
    /// session any more.
    Reconnect,
}

/// Counters shown in health and metrics.
#[derive(Default, Clone, Copy, Debug)]
pub struct Counters {
    pub published: u64,
    pub acknowledged: u64,
    pub spooled: u64,
    /// Every message dropped: `dropped_lines` + `dropped_agent`.
    pub dropped: u64,
    /// Container lines (and lifecycle messages) dropped.
    pub dropped_lines: u64,
    /// The agent's own messages dropped.
    pub dropped_agent: u64,
    pub reconnects: u64,
    /// Messages the broker refused for good (MQTT 5), by [`REFUSALS`], then any other reason;
    /// also counted in `dropped`.
    pub refused: [u64; REFUSALS.len() + 1],
}

/// A message body: a message, rendered when it is sent or spooled, or JSON text (read back
/// from the spool, or a message cut to fit a packet).
enum Body {
    Msg(Arc<LogMessage>),
    /// Boxed, not a `String`: every queued part carries a body, so its size counts.
    Text(Box<str>),
}

impl Body {
    #[inline]
    fn len(&self) -> usize {
        match self {
            Body::Msg(m) => m.json_len(),
            Body::Text(t) => t.len(),
        }
    }

    #[inline]
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Body::Msg(m) => m.write_json(out),
            Body::Text(t) => out.extend_from_slice(t.as_bytes()),
        }
    }

    fn text(&self) -> Cow<'_, str> {
        match self {
            Body::Msg(m) => Cow::Owned(m.json()),
            Body::Text(t) => Cow::Borrowed(t),
        }
    }
}

/// One message inside a unit.
struct Part {
    json: Body,
    /// Its slot in the progress tracker (container messages with a position only).
    seq: Option<Seq>,
    /// Where it sits in the spool (its segment and the offset after its line, never 0), for
    /// messages read back from it; the `NonZeroU64` keeps the part small.
    spool: Option<(u64, NonZeroU64)>,
}

/// A unit's messages: one, held in place (an unbatched publish allocates nothing for it), or a
/// batch.
enum Parts {
    One([Part; 1]),
    Many(Vec<Part>),
}

impl Parts {
    /// Adds a part: a batch's (`Many`) for every line, so only that is inlined.
    #[inline(always)]
    fn push(&mut self, part: Part) {
        match self {
            Parts::Many(v) => v.push(part),
            Parts::One(_) => self.push_to_one(part),
        }
    }

    #[cold]
    fn push_to_one(&mut self, part: Part) {
        if let Parts::One([first]) = std::mem::replace(self, Parts::Many(Vec::new())) {
            *self = Parts::Many(vec![first, part]);
        }
    }

    /// The parts from `n` on, leaving those before.
    fn split_off(&mut self, n: usize) -> Parts {
        match self {
            Parts::Many(v) => Parts::Many(v.split_off(n)),
            Parts::One(_) if n == 0 => std::mem::replace(self, Parts::Many(Vec::new())),
            Parts::One(_) => Parts::Many(Vec::new()),
        }
    }
}

impl<'a> IntoIterator for &'a Parts {
    type Item = &'a Part;
    type IntoIter = std::slice::Iter<'a, Part>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl std::ops::Deref for Parts {
    type Target = [Part];

    fn deref(&self) -> &[Part] {
        match self {
            Parts::One(p) => p,
            Parts::Many(v) => v,
        }
    }
}

impl std::ops::DerefMut for Parts {
    fn deref_mut(&mut self) -> &mut [Part] {
        match self {
            Parts::One(p) => p,
            Parts::Many(v) => v,
        }
    }
}

/// One MQTT publish: a single message or a batch, all on one topic.
struct Unit {
    /// The message topic, without `/batch`; shared by the units of one topic.
    topic: Arc<str>,
    parts: Parts,
    bytes: usize,
    from_spool: bool,
}

struct Open {
    unit: Unit,
    since: Instant,
}

/// A publish handed to the adapter, waiting for its acknowledgement.
struct Sent {
    token: Token,
    /// `None` for the status message.
    unit: Option<Unit>,
    /// Payload bytes, counted in the in-flight window.
    bytes: usize,
    /// 0 at QoS 0.
    pkid: u16,
    qos: QoS,
    /// PUBACK or PUBCOMP came; at QoS 0, set when handed out (settled at the next poll, unless
    /// refused before); or the broker refused it for good (`refused`).
    acked: bool,
    /// The broker refused it for good with this reason code (MQTT 5); set with `acked`.
    refused: Option<u8>,
    /// The broker refused it for now (MQTT 5): it waits here, its packet id free, to be sent
    /// again.
    resend: bool,
    /// It set its topic's alias on this connection (MQTT 5).
    sets_alias: bool,
}

/// What the configuration decides.
struct Settings {
    base_topic: String,
    qos: QoS,
    retain: bool,
    batch: bool,
    batch_max: usize,
    batch_interval: Duration,
    status_topic: Arc<str>,
    online: String,
    offline: String,
    keep_alive: Duration,
    /// MQTT 5: publishes carry properties (and aliases, when the broker allows them).
    v5: bool,
}

impl Settings {
    fn new(cfg: &MqttConfig, online: String, offline: String) -> Settings {
        Settings {
            base_topic: cfg.base_topic.clone(),
            qos: qos(cfg.qos),
            retain: cfg.retain,
            batch: cfg.batch,
            batch_max: cfg.batch_max.max(1),
            batch_interval: cfg.batch_interval,
            status_topic: Arc::from(cfg.status_topic.as_str()),
            online,
            offline,
            keep_alive: cfg.keepalive.max(Duration::from_secs(1)),
            v5: cfg.version == MqttVersion::V5,
        }
    }
}

/// Sizes of the memory queue and the in-flight window; small in tests, to reach the spool and
/// a full window with few messages.
#[derive(Clone, Copy)]
struct Bounds {
    mem_msgs: usize,
    mem_bytes: usize,
    window_units: usize,
    window_bytes: usize,
}

impl Bounds {
    /// The agent's.
    const FULL: Bounds = Bounds {
        mem_msgs: MEM_MAX_MSGS,
        mem_bytes: MEM_MAX_BYTES,
        window_units: MAX_INFLIGHT_UNITS,
        window_bytes: MAX_INFLIGHT_BYTES,
    };
}

/// See the module documentation.
pub struct Session {
    set: Settings,
    bounds: Bounds,

    retry: VecDeque<Unit>,
    replay: VecDeque<Unit>,
    memory: VecDeque<Unit>,
    open: Vec<Open>,
    waiting_msgs: usize,
    waiting_bytes: usize,
    spool: Spool,
    inflight: VecDeque<Sent>,
    inflight_bytes: usize,
    /// The packet id handed out last.
    last_pkid: u16,
    /// Packet ids in flight, one bit each: an id is never handed out twice while in flight.
    pkid_busy: Box<[u64]>,
    tracker: Tracker,
    /// The topic of the last message taken in, and what it was made from: consecutive
    /// messages mostly share it, and sanitising and formatting it per message showed up in
    /// profiles.
    last_topic: Option<(Arc<Origin>, Level, SourceKind, Arc<str>)>,
    /// The topic last found valid by [`Session::render`].
    valid_topic: Option<Arc<str>>,
    /// Payload buffers given back by [`Session::recycle`], and their capacity.
    spare: Vec<Vec<u8>>,
    spare_bytes: usize,
    /// Actions not yet polled (progress reports are made when polled).
    out: VecDeque<Action>,
    next_token: u64,
    /// MQTT 5: each topic's properties and alias.
    topics: Topics,
    /// The properties of the status (MQTT 5).
    status_props: Arc<Props>,
    /// Publishes in flight that wait to be sent again ([`Sent::resend`]), and when.
    resending: usize,
    retry_at: Instant,
    retry_wait: Duration,
    /// Reasons and topics of final refusals already said.
    warned: HashSet<(u8, String)>,

    /// What the broker granted; `Some` while connected.
    granted: Option<Granted>,
    ever_connected: bool,
    stopping: bool,
    /// Set while shutting down: the spool is no longer read for sending.
    draining: bool,
    status_due: bool,
    /// A newer online status (fresh health) not yet released: it goes out at the next
    /// connection, or once [`STATUS_EVERY`] has passed since the last status went out.
    status_pending: Option<String>,
    /// When the online status was last handed out.
    status_sent: Option<Instant>,
    /// The adapter refused a publish: hand out no more until the next event.
    held: bool,
    /// The time of the latest event.
    now: Instant,
    disconnected_since: Option<Instant>,
    last_ack: Instant,
    /// When something was last handed out to write (keep-alive counts from there).
    last_write: Instant,
    /// When the PINGREQ not yet answered was handed out.
    ping_sent: Option<Instant>,
    last_drop: Option<Instant>,
    counters: Counters,
    last_error: String,
}

impl Session {
    /// A session with nothing in memory, not connected, over `spool` (which may hold messages
    /// of an earlier run: they go out first).
    pub fn new(
        cfg: &MqttConfig,
        mut spool: Spool,
        host: &str,
        online: String,
        offline: String,
        now: Instant,
    ) -> Session {
        spool.set_agent_prefix(format!("{}/manager/", cfg.base_topic));
        Session {
            set: Settings::new(cfg, online, offline),
            bounds: Bounds::FULL,
            retry: VecDeque::new(),
            replay: VecDeque::new(),
            memory: VecDeque::new(),
            open: Vec::new(),
            waiting_msgs: 0,
            waiting_bytes: 0,
            spool,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            last_pkid: 0,
            pkid_busy: vec![0; PKIDS / 64].into_boxed_slice(),
            tracker: Tracker::default(),
            last_topic: None,
            valid_topic: None,
            spare: Vec::new(),
            spare_bytes: 0,
            out: VecDeque::new(),
            next_token: 0,
            topics: Topics::new(host, cfg.message_expiry),
            status_props: Arc::new(super::v5::status_props(host)),
            resending: 0,
            retry_at: now,
            retry_wait: RETRY_MIN,
            warned: HashSet::new(),
            granted: None,
            ever_connected: false,
            stopping: false,
            draining: false,
            status_due: false,
            status_pending: None,
            status_sent: None,
            held: false,
            now,
            disconnected_since: Some(now),
            last_ack: now,
            last_write: now,
            ping_sent: None,
            last_drop: None,
            counters: Counters::default(),
            last_error: String::new(),
        }
    }

    /// Smaller memory queue and in-flight window, so tests reach the spool with few messages.
    #[cfg(test)]
    pub(super) fn set_bounds(&mut self, mem_msgs: usize, window_units: usize) {
        self.bounds.mem_msgs = mem_msgs;
        self.bounds.window_units = window_units;
    }

    // ---- queries ----

    /// Messages waiting in memory (not counting what is in flight).
    pub fn queued(&self) -> usize {
        self.waiting_msgs + self.replay.iter().map(|u| u.parts.len()).sum::<usize>()
    }

    pub fn is_connected(&self) -> bool {
        self.granted.is_some()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn last_error(&self) -> &str {
        &self.last_error
    }

    pub fn spool_bytes(&self) -> u64 {
        self.spool.bytes()
    }

    /// Connected (or not away for long) and no message dropped lately.
    pub fn healthy(&self, now: Instant) -> bool {
        let connected_enough = self.granted.is_some()
            || self
                .disconnected_since
                .is_some_and(|t| now.saturating_duration_since(t) < GRACE);
        let recent_drop = self
            .last_drop
            .is_some_and(|t| now.saturating_duration_since(t) < DROP_UNHEALTHY);
        connected_enough && !recent_drop
    }

    /// False when the adapter should stop taking messages (backpressure on `log()`).
    pub fn accepting(&self, now: Instant) -> bool {
        !self.overflowing() || self.may_spool(now)
    }

    /// When [`Session::tick`] has something to do next: an open batch is due, a ping, a ping's
    /// answer, the watchdogs of publishes waiting for their acknowledgement, a publish the
    /// broker refused for now is to be sent again, or a held publish is to be tried again.
    /// `None`: nothing is due until an event comes (an idle, connected session is always due
    /// a ping). The adapter sleeps until then, so every timed decision of `tick` and
    /// [`Session::accepting`] must have its time here.
    pub fn next_deadline(&self) -> Option<Instant> {
        let batch = self
            .open
            .iter()
            .map(|o| o.since + self.set.batch_interval)
            .min();
        let retry = (self.resending > 0).then_some(self.retry_at);
        let status = self.status_release_at();
        let held = self.held.then(|| self.now + HELD_RETRY);
        [
            batch,
            self.ping_due(),
            self.ping_answer_due(),
            self.stall_due(),
            retry,
            status,
            held,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// While a ping waits for its answer: when the connection is given up without one.
    fn ping_answer_due(&self) -> Option<Instant> {
        self.granted?;
        Some(self.ping_sent? + self.keep_alive())
    }

    /// While publishes wait for their acknowledgement: just past [`STALL`] since the last one
    /// (memory overflow may go to the spool from then on), then just past [`ACK_STALL`] (the
    /// connection is given up).
    fn stall_due(&self) -> Option<Instant> {
        if self.granted.is_none() || self.inflight.is_empty() {
            return None;
        }
        let past = Duration::from_millis(1);
        let soft = self.last_ack + STALL + past;
        Some(if soft > self.now {
            soft
        } else {
            self.last_ack + ACK_STALL + past
        })
    }

    /// When the next PINGREQ is due, while connected and none is unanswered.
    fn ping_due(&self) -> Option<Instant> {
        if self.granted.is_none() || self.ping_sent.is_some() {
            return None;
        }
        Some(self.last_write + self.keep_alive() * 3 / 4)
    }

    /// The keep-alive in force: the broker's (MQTT 5 server keep alive) or ours. A server keep
    /// alive of 0 (the broker needs no pings) keeps ours: pings are how a dead link is noticed.
    fn keep_alive(&self) -> Duration {
        match self.granted.and_then(|g| g.keep_alive) {
            Some(k) if !k.is_zero() => k,
            _ => self.set.keep_alive,
        }
    }

    /// True when nothing of memory is left to send (the spool may still hold messages).
    pub fn drained(&self) -> bool {
        self.inflight.is_empty()
            && self.retry.is_empty()
            && self.open.is_empty()
            && (self.memory.is_empty() || self.spool.has_unacked())
    }

    fn overflowing(&self) -> bool {
        self.waiting_msgs > self.bounds.mem_msgs || self.waiting_bytes > self.bounds.mem_bytes
    }

    /// Whether memory overflow may go to the spool now rather than slow the input down.
    fn may_spool(&self, now: Instant) -> bool {
        self.granted.is_none()
            || self.spool.has_unacked()
            || self.resending > 0
            || self.ack_stalled(now, STALL)
    }

    /// Connected, publishes in flight, and no acknowledgement for `limit`: the link is stuck.
    fn ack_stalled(&self, now: Instant, limit: Duration) -> bool {
        self.granted.is_some()
            && !self.inflight.is_empty()
            && now.saturating_duration_since(self.last_ack) > limit
    }
}

// ---- intake and batching ----
impl Session {
    /// Event: one message taken in.
    pub fn intake(&mut self, msg: Arc<LogMessage>, now: Instant) {
        self.now = now;
        let topic = self.topic_of(&msg);
        let seq = match (msg.kind, msg.position()) {
            (SourceKind::Container, Some(pos)) => {
                Some(self.tracker.push(&msg.origin.container_id, pos))
            }
            _ => None,
        };
        // A message too large for one packet is cut to fit; anything smaller goes out whole,
        // alone when it does not fit a batch.
        let mut json = Body::Msg(msg);
        let mut len = json.len();
        if len + topic.len() + 4096 > MAX_PACKET {
            json = Body::Text(cut(&json.text(), MAX_PACKET - topic.len() - 8192).into_boxed_str());
            len = json.len();
        }
        let part = Part {
            json,
            seq,
            spool: None,
        };
        self.waiting_msgs += 1;
        self.waiting_bytes += len;
        if self.set.batch {
            self.add_to_batch(topic, part, len, now);
        } else {
            push_gently(
                &mut self.memory,
                Unit {
                    topic,
                    parts: Parts::One([part]),
                    bytes: len,
                    from_spool: false,
                },
            );
        }
    }

    fn topic_of(&mut self, msg: &LogMessage) -> Arc<str> {
        match &self.last_topic {
            Some((o, level, kind, t))
                if Arc::ptr_eq(o, &msg.origin) && *level == msg.level && *kind == msg.kind =>
            {
                t.clone()
            }
            _ => {
                let t: Arc<str> = Arc::from(topic::topic_for(&self.set.base_topic, msg));
                self.last_topic = Some((msg.origin.clone(), msg.level, msg.kind, t.clone()));
                t
            }
        }
    }

    fn add_to_batch(&mut self, topic: Arc<str>, part: Part, len: usize, now: Instant) {
        let cap = PAYLOAD_CAP - topic::batch_overhead(self.set.batch_max) - topic.len();
        // Messages of one run share their topic's `Arc`: mostly no string is compared.
        let found = self
            .open
            .iter()
            .position(|o| Arc::ptr_eq(&o.unit.topic, &topic) || o.unit.topic == topic);
        let found = match found {
            Some(i) if self.open[i].unit.bytes + len > cap => {
                let o = self.open.remove(i);
                push_gently(&mut self.memory, o.unit);
                None
            }
            f => f,
        };
        let i = match found {
            Some(i) => i,
            None => {
                // Sized for a whole batch up to a bound: no batch grows its list as it fills.
                let parts = Vec::with_capacity(self.set.batch_max.min(BATCH_PARTS_RESERVED));
                self.open.push(Open {
                    unit: Unit {
                        topic,
                        parts: Parts::Many(parts),
                        bytes: 0,
                        from_spool: false,
                    },
                    since: now,
                });
                self.open.len() - 1
            }
        };
        let o = &mut self.open[i];
        o.unit.parts.push(part);
        o.unit.bytes += len;
        if o.unit.parts.len() >= self.set.batch_max {
            let o = self.open.remove(i);
            push_gently(&mut self.memory, o.unit);
        }
    }

    /// Closes open batches whose interval has passed (all of them when `all`).
    fn close_batches(&mut self, now: Instant, all: bool) {
        let interval = self.set.batch_interval;
        let mut due: Vec<Open> = Vec::new();
        let mut i = 0;
        while i < self.open.len() {
            if all || self.open[i].since + interval <= now {
                due.push(self.open.remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|o| o.since);
        self.memory.extend(due.into_iter().map(|o| o.unit));
    }
}

// ---- connection events ----
impl Session {
    /// Event: time passed. Closes due batches, moves memory overflow to the spool when the
    /// broker is away or stuck, asks for a ping when nothing was written for three quarters of
    /// the keep-alive, and gives a connection up ([`Action::Reconnect`]) that has acknowledged
    /// nothing for [`ACK_STALL`] or left a ping unanswered for a keep-alive.
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        self.held = false;
        self.release_status(now);
        self.close_batches(now, false);
        if self.overflowing() && self.may_spool(now) {
            self.spool_overflow(now);
        }
        if self.ack_stalled(now, ACK_STALL) {
            self.give_up(
                format!(
                    "no acknowledgement for {} s with publishes in flight; reconnecting",
                    ACK_STALL.as_secs()
                ),
                now,
            );
        } else if self
            .ping_sent
            .is_some_and(|t| now.saturating_duration_since(t) >= self.keep_alive())
        {
            self.give_up(
                format!(
                    "no answer to a ping for {} s; reconnecting",
                    self.keep_alive().as_secs()
                ),
                now,
            );
        } else if self.ping_due().is_some_and(|t| now >= t) {
            self.ping_sent = Some(now);
            self.last_write = now;
            self.out.push_back(Action::Ping);
        }
    }

    /// Leaves a connection that is stuck or dead, as on a disconnect, and asks the adapter to
    /// close it.
    fn give_up(&mut self, reason: String, now: Instant) {
        log::warn!("mqtt: {reason}");
        self.disconnected(reason, now);
        self.out.push_back(Action::Reconnect);
    }

    /// Event: the online status has a new payload (fresh health, docs/CONTRACT.md §10). An
    /// unchanged one is nothing; a changed one is published (retained) while connected, at most
    /// once every [`STATUS_EVERY`]; the newest wins, and a new connection publishes it at once.
    /// True when the payload is new (the adapter has something to do, or a new deadline).
    pub fn status(&mut self, online: String, now: Instant) -> bool {
        self.now = now;
        if online == self.set.online {
            return self.status_pending.take().is_some();
        }
        let news = self.status_pending.as_ref() != Some(&online);
        self.status_pending = Some(online);
        self.release_status(now);
        news
    }

    /// Moves a pending status into place when it may go out.
    fn release_status(&mut self, now: Instant) {
        if self.status_release_at().is_some_and(|t| now >= t) {
            if let Some(online) = self.status_pending.take() {
                self.set.online = online;
                self.status_due = true;
            }
        }
    }

    /// When a pending status may go out: while connected, [`STATUS_EVERY`] after the last.
    fn status_release_at(&self) -> Option<Instant> {
        if self.status_pending.is_none() || self.granted.is_none() || self.stopping {
            return None;
        }
        Some(self.status_sent.map_or(self.now, |t| t + STATUS_EVERY))
    }

    /// Event: the broker accepted a connection (CONNACK). The status goes out first, then what
    /// was in flight on the last connection, in order.
    pub fn connected(&mut self, granted: Granted, now: Instant) {
        self.now = now;
        if self.stopping {
            return;
        }
        if self.ever_connected {
            self.counters.reconnects += 1;
        }
        log::debug!(
            "mqtt broker grants: session present {}, receive maximum {}, maximum packet {}, \
             topic aliases {}, keep-alive {:?}, maximum QoS {}, retain {}",
            granted.session_present,
            granted.receive_max,
            granted.max_packet,
            granted.topic_alias_max,
            granted.keep_alive,
            granted.max_qos,
            granted.retain
        );
        self.topics.connected(granted.topic_alias_max);
        self.retry_wait = RETRY_MIN;
        self.ever_connected = true;
        self.granted = Some(granted);
        if let Some(online) = self.status_pending.take() {
            self.set.online = online;
        }
        self.status_due = true;
        self.held = false;
        self.disconnected_since = None;
        // Health shows the error of the outage that just ended no longer.
        self.last_error.clear();
        self.last_ack = now;
        self.last_write = now;
        self.ping_sent = None;
    }

    /// Event: the broker answered packet `pkid` (PUBACK for QoS 1, PUBCOMP for QoS 2, or a
    /// PUBREC with a failure for QoS 2).
    pub fn acked(&mut self, pkid: u16, ack: Ack, now: Instant) {
        self.now = now;
        self.held = false;
        let Some(s) = self.inflight_mut(pkid) else {
            return;
        };
        match ack {
            Ack::Ok => s.acked = true,
            Ack::Refused(code) => {
                s.acked = true;
                s.refused = Some(code);
            }
            Ack::Retry(code) => {
                s.resend = true;
                s.pkid = 0;
                self.free_pkid(pkid);
                self.resending += 1;
                self.retry_at = now + self.retry_wait;
                log::debug!(
                    "mqtt: the broker refused a publish for now ({}); sending it again in {:?}",
                    wire::reason_name(code),
                    self.retry_wait
                );
                self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
                self.last_error = format!(
                    "the broker refuses publishes for now: {}",
                    wire::reason_name(code)
                );
            }
        }
        // The broker answered: the link is alive.
        self.last_ack = now;
        if ack == Ack::Ok {
            self.retry_wait = RETRY_MIN;
        }
        self.settle();
    }

    /// Event: the broker received QoS 2 publish `pkid` (PUBREC); its PUBREL is due.
    pub fn pubrec(&mut self, pkid: u16, now: Instant) {
        self.now = now;
        self.held = false;
        if self
            .inflight_mut(pkid)
            .is_some_and(|s| s.qos == QoS::ExactlyOnce)
        {
            // The broker answered: the link is alive.
            self.last_ack = now;
            self.out.push_back(Action::PubRel(pkid));
        }
    }

    /// Event: the broker answered our PINGREQ.
    pub fn ping_resp(&mut self, now: Instant) {
        self.now = now;
        self.ping_sent = None;
    }

    /// The publish in flight under `pkid` and not yet acknowledged. Acks mostly come in order,
    /// so the search starts at the oldest.
    fn inflight_mut(&mut self, pkid: u16) -> Option<&mut Sent> {
        if pkid == 0 || !self.pkid_is_busy(pkid) {
            return None;
        }
        self.inflight
            .iter_mut()
            .find(|s| s.pkid == pkid && !s.acked)
    }

    /// Event: the adapter could not hand the publish `token` over (its queue is full, or its
    /// connection is gone). It goes back to the front of the queue; nothing more is handed out
    /// until the next event.
    pub fn refused(&mut self, token: Token) {
        self.held = true;
        let Some(i) = self.inflight.iter().rposition(|s| s.token == token) else {
            return;
        };
        let s = &mut self.inflight[i];
        if s.sets_alias {
            s.sets_alias = false;
            if let Some(u) = &s.unit {
                self.topics.unwritten(&u.topic);
            }
        }
        if i + 1 < self.inflight.len() {
            // A publish sent again (after a refusal for now) with newer ones in flight behind
            // it: it waits in its place to be sent again.
            let pkid = std::mem::take(&mut self.inflight[i].pkid);
            self.inflight[i].resend = true;
            self.free_pkid(pkid);
            self.resending += 1;
            return;
        }
        let Some(s) = self.inflight.remove(i) else {
            return;
        };
        self.free_pkid(s.pkid);
        self.inflight_bytes = self.inflight_bytes.saturating_sub(s.bytes);
        let Some(u) = s.unit else {
            self.status_due = true;
            return;
        };
        self.counters.published = self.counters.published.saturating_sub(u.parts.len() as u64);
        if u.from_spool {
            self.replay.push_front(u);
        } else {
            self.waiting_msgs += u.parts.len();
            self.waiting_bytes += u.bytes;
            self.retry.push_front(u);
        }
    }

    /// Event: the connection failed or dropped. What was in flight goes back, in order, to be
    /// sent again after the next CONNACK.
    pub fn disconnected(&mut self, reason: String, now: Instant) {
        self.now = now;
        self.held = false;
        if self.granted.is_some() {
            self.disconnected_since = Some(now);
        }
        self.granted = None;
        self.ping_sent = None;
        self.last_error = reason;
        self.resending = 0;
        let back = self.take_back_inflight();
        for u in back.into_iter().rev() {
            self.retry.push_front(u);
        }
        // Spooled messages in flight or read ahead are read again from the spool.
        self.replay.clear();
        self.spool.rewind();
    }

    /// Shutdown, first step: every open batch closes now, and the spool is no longer read for
    /// sending (what it holds stays there for the next run).
    pub fn flush(&mut self, now: Instant) {
        self.now = now;
        self.close_batches(now, true);
        self.draining = true;
    }

    /// Shutdown, last step: everything not acknowledged goes to the spool, whose cursor is
    /// saved; nothing more is handed out. Returns the offline status to publish, if connected.
    pub fn stop(&mut self, now: Instant) -> Option<Publish> {
        self.now = now;
        self.stopping = true;
        self.spool_everything(now);
        if let Err(e) = self.spool.save_cursor() {
            log::warn!("cannot save the mqtt spool cursor: {e}");
        }
        self.granted?;
        let (qos, retain) = self.flags(true);
        // Whatever was in flight went to the spool: every id is free.
        Some(Publish {
            token: self.token(),
            pkid: if qos == QoS::AtMostOnce {
                0
            } else {
                self.next_pkid()
            },
            topic: self.set.status_topic.clone(),
            payload: self.set.offline.clone().into_bytes(),
            qos,
            retain,
            props: self.set.v5.then(|| self.status_props.clone()),
            alias: Alias::None,
        })
    }
}

// ---- actions ----
impl Session {
    /// The next thing the adapter should do, if any: queued requests and progress reports
    /// first, then publishes in queue order while connected and the in-flight window has room.
    pub fn poll(&mut self) -> Option<Action> {
        // A QoS 0 publish handed out and not refused since was written: it is settled.
        if self.inflight.front().is_some_and(|s| s.acked) {
            self.settle();
        }
        if self.out.is_empty() {
            let out = &mut self.out;
            self.tracker
                .report(|c, p| out.push_back(Action::Progress(c, p)));
        }
        if let Some(a) = self.out.pop_front() {
            return Some(a);
        }
        if self.granted.is_none() || self.stopping || self.held {
            return None;
        }
        self.next_publish().map(Action::Publish)
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// The next packet id not in flight, marked busy. The window (at most
    /// [`MAX_INFLIGHT_UNITS`]) is far below the 65 535 ids, so the search is short.
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let id = self.last_pkid;
            if !self.pkid_is_busy(id) {
                self.pkid_busy[usize::from(id) / 64] |= 1 << (id % 64);
                return id;
            }
        }
    }

    fn pkid_is_busy(&self, id: u16) -> bool {
        self.pkid_busy[usize::from(id) / 64] & (1 << (id % 64)) != 0
    }

    fn free_pkid(&mut self, id: u16) {
        self.pkid_busy[usize::from(id) / 64] &= !(1 << (id % 64));
    }

    fn window_open(&self) -> bool {
        let receive_max = self.granted.map_or(0, |g| usize::from(g.receive_max));
        self.inflight.len() < self.bounds.window_units.min(receive_max)
            && self.inflight_bytes < self.bounds.window_bytes
    }

    fn next_publish(&mut self) -> Option<Publish> {
        if self.resending > 0 {
            // Refused for now: sent again, oldest first, before anything newer.
            return if self.now >= self.retry_at {
                self.rehand()
            } else {
                None
            };
        }
        if self.status_due && self.window_open() {
            self.status_due = false;
            self.status_sent = Some(self.now);
            let payload = self.set.online.clone().into_bytes();
            return Some(self.hand_out(None, self.set.status_topic.clone(), payload, true));
        }
        loop {
            if !self.window_open() {
                return None;
            }
            let mut unit = self.next_unit()?;
            if self.granted.is_some_and(|g| g.max_packet < MAX_PACKET) {
                let Some(fitted) = self.fit(unit) else {
                    continue;
                };
                unit = fitted;
            }
            let Some((topic, payload)) = self.render(&unit) else {
                // Only a base topic with a wildcard gets here; config validation should stop it.
                let mut d = Dropped::default();
                for _ in &unit.parts {
                    self.spool.count(&mut d, &unit.topic);
                }
                self.count_dropped(d);
                log::warn!(
                    "mqtt topic {:?} is not valid, dropped {} messages",
                    unit.topic,
                    unit.parts.len()
                );
                self.settle_unit(&unit);
                continue;
            };
            self.counters.published += unit.parts.len() as u64;
            return Some(self.hand_out(Some(unit), topic, payload, false));
        }
    }

    /// The next unit in queue order: returned from flight, then read from the spool, then
    /// memory (only once the spool is empty: a disconnect could otherwise send newer memory
    /// before older spooled messages).
    fn next_unit(&mut self) -> Option<Unit> {
        if let Some(u) = self.retry.pop_front() {
            self.waiting_msgs -= u.parts.len();
            self.waiting_bytes -= u.bytes;
            return Some(u);
        }
        if self.replay.is_empty() && !self.draining && self.spool.has_unread() {
            self.fill_replay();
        }
        if let Some(u) = self.replay.pop_front() {
            return Some(u);
        }
        if self.spool.has_unacked() {
            return None;
        }
        let u = self.memory.pop_front()?;
        self.waiting_msgs -= u.parts.len();
        self.waiting_bytes -= u.bytes;
        Some(u)
    }

    /// Puts a unit taken by [`Session::next_unit`] back at the front of its queue.
    fn put_back(&mut self, u: Unit) {
        if u.from_spool {
            self.replay.push_front(u);
        } else {
            self.waiting_msgs += u.parts.len();
            self.waiting_bytes += u.bytes;
            self.retry.push_front(u);
        }
    }

    /// The payload bytes of a unit of `count` messages of `bytes` bytes (at most, for a batch).
    fn payload_len(&self, count: usize, bytes: usize) -> usize {
        if self.set.batch {
            bytes + topic::batch_overhead(count)
        } else {
            bytes
        }
    }

    /// Makes a unit fit the broker's maximum packet size (MQTT 5): a batch too big is split
    /// (what does not fit goes back to the front of its queue), a single message too big is cut
    /// and marked truncated; one that cannot fit even so is settled as refused, packet too
    /// large (in its place in the window, so the spool and the cursor move in order).
    fn fit(&mut self, mut unit: Unit) -> Option<Unit> {
        let max = self.granted.map_or(MAX_PACKET, |g| g.max_packet);
        // The topic in full, a packet id, the properties and an alias: the most a header takes.
        let topic_len = unit.topic.len() + if self.set.batch { 6 } else { 0 };
        let props = self.set.v5.then(|| self.status_props.clone());
        let header = wire::publish_size(topic_len, 2, props.as_deref(), true, 0) + 256;
        let limit = max.saturating_sub(header);
        if self.payload_len(unit.parts.len(), unit.bytes) <= limit {
            return Some(unit);
        }
        if unit.parts.len() > 1 {
            let (mut n, mut bytes) = (0, 0);
            while n < unit.parts.len() {
                let b = bytes + unit.parts[n].json.len();
                if n > 0 && self.payload_len(n + 1, b) > limit {
                    break;
                }
                (n, bytes) = (n + 1, b);
            }
            let rest = Unit {
                topic: unit.topic.clone(),
                parts: unit.parts.split_off(n),
                bytes: unit.bytes - bytes,
                from_spool: unit.from_spool,
            };
            unit.bytes = bytes;
            self.put_back(rest);
            if n > 1 || self.payload_len(1, bytes) <= limit {
                return Some(unit);
            }
        }
        let room = limit.saturating_sub(self.payload_len(1, 0));
        let text = cut(&unit.parts[0].json.text(), room);
        if text.len() <= room {
            unit.bytes = text.len();
            unit.parts[0].json = Body::Text(text.into_boxed_str());
            return Some(unit);
        }
        let token = self.token();
        self.inflight.push_back(Sent {
            token,
            unit: Some(unit),
            bytes: 0,
            pkid: 0,
            qos: QoS::AtMostOnce,
            acked: true,
            refused: Some(PACKET_TOO_LARGE),
            resend: false,
            sets_alias: false,
        });
        None
    }

    /// The topic and payload of a unit; `None` when its topic is not a valid topic name.
    fn render(&mut self, unit: &Unit) -> Option<(Arc<str>, Vec<u8>)> {
        // Units of one topic share its `Arc`: a topic is checked once, not at every publish.
        let known = matches!(&self.valid_topic, Some(t) if Arc::ptr_eq(t, &unit.topic));
        if !known {
            if !rumqttc::valid_topic(&unit.topic) {
                return None;
            }
            self.valid_topic = Some(unit.topic.clone());
        }
        let (topic, payload) = if self.set.batch {
            let out = self.spare_buffer();
            (
                Arc::from(topic::batch_topic(&unit.topic)),
                topic::batch_payload(out, unit.parts.len(), unit.bytes, |i, out| {
                    unit.parts[i].json.write(out)
                }),
            )
        } else {
            // No reserve here: writing the message reserves its room (a little more than its
            // length), and a buffer reserved to the length alone would then double.
            let mut json = self.spare_buffer();
            if let Some(p) = unit.parts.first() {
                p.json.write(&mut json);
            }
            (unit.topic.clone(), json)
        };
        // A batch topic adds `/batch` to a valid topic: valid too.
        Some((topic, payload))
    }

    /// Takes back the payload buffer of a publish that was written, for a later one: no
    /// allocation per publish. A few are kept, none larger than a batch.
    pub fn recycle(&mut self, mut payload: Vec<u8>) {
        let fits = self.spare.len() < self.bounds.window_units
            && self.spare_bytes + payload.capacity() <= SPARE_BYTES;
        if fits {
            payload.clear();
            self.spare_bytes += payload.capacity();
            self.spare.push(payload);
        }
    }

    /// A payload buffer for the next publish: one given back, or a new one.
    fn spare_buffer(&mut self) -> Vec<u8> {
        let buf = self.spare.pop().unwrap_or_default();
        self.spare_bytes -= buf.capacity();
        buf
    }

    /// MQTT 5: the properties and alias of a publish of `unit` (the status when `None`).
    #[inline(always)]
    fn meta(&mut self, unit: Option<&Unit>) -> (Option<Arc<Props>>, Alias) {
        if !self.set.v5 {
            return (None, Alias::None);
        }
        self.meta_v5(unit)
    }

    fn meta_v5(&mut self, unit: Option<&Unit>) -> (Option<Arc<Props>>, Alias) {
        let Some(u) = unit else {
            return (Some(self.status_props.clone()), Alias::None);
        };
        let (props, alias) = self.topics.publish(&u.topic, || who(u));
        (Some(props), alias)
    }

    /// The QoS and retain flag of a publish (the status's when `status`), within what the
    /// broker takes.
    #[inline]
    fn flags(&self, status: bool) -> (QoS, bool) {
        let (q, retain) = if status {
            (QoS::AtLeastOnce, true)
        } else {
            (self.set.qos, self.set.retain)
        };
        match self.granted {
            Some(g) if q as u8 > g.max_qos => (qos(g.max_qos), retain && g.retain),
            Some(g) => (q, retain && g.retain),
            None => (q, retain),
        }
    }

    /// Puts a publish in flight and makes its request; inlined, so the unit is moved once, into
    /// the window.
    #[inline(always)]
    fn hand_out(
        &mut self,
        unit: Option<Unit>,
        topic: Arc<str>,
        payload: Vec<u8>,
        status: bool,
    ) -> Publish {
        let (qos, retain) = self.flags(status);
        let (props, alias) = self.meta(unit.as_ref());
        if self.inflight.is_empty() {
            // No acknowledgement was owed until now, so the wait for one starts now (not at
            // the last one, maybe long ago).
            self.last_ack = self.now;
        }
        self.last_write = self.now;
        let token = self.token();
        let qos0 = qos == QoS::AtMostOnce;
        // At QoS 0 the socket taking the publish is all the progress there is.
        let pkid = if qos0 { 0 } else { self.next_pkid() };
        self.inflight_bytes += payload.len();
        self.inflight.push_back(Sent {
            token,
            unit,
            bytes: payload.len(),
            pkid,
            qos,
            acked: qos0,
            refused: None,
            resend: false,
            sets_alias: matches!(alias, Alias::Set(_)),
        });
        Publish {
            token,
            pkid,
            topic,
            payload,
            qos,
            retain,
            props,
            alias,
        }
    }

    /// Sends again the oldest publish the broker refused for now, in its place in the window,
    /// under a new packet id.
    fn rehand(&mut self) -> Option<Publish> {
        let i = self.inflight.iter().position(|s| s.resend)?;
        self.resending -= 1;
        let unit = self.inflight[i].unit.take();
        let status = unit.is_none();
        let rendered = match &unit {
            Some(u) => self.render(u),
            None => Some((
                self.set.status_topic.clone(),
                self.set.online.clone().into_bytes(),
            )),
        };
        let Some((topic, payload)) = rendered else {
            // Not reached: it was rendered once. Settled as refused rather than kept for ever.
            let s = &mut self.inflight[i];
            s.unit = unit;
            s.resend = false;
            s.acked = true;
            s.refused = Some(TOPIC_NAME_INVALID);
            self.settle();
            return None;
        };
        let (props, alias) = self.meta(unit.as_ref());
        let (_, retain) = self.flags(status);
        let qos = self.inflight[i].qos;
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.next_pkid()
        };
        let token = self.token();
        let s = &mut self.inflight[i];
        s.unit = unit;
        s.resend = false;
        s.pkid = pkid;
        s.token = token;
        s.sets_alias = matches!(alias, Alias::Set(_));
        // The wait for its answer starts now.
        self.last_write = self.now;
        self.last_ack = self.now;
        Some(Publish {
            token,
            pkid,
            topic,
            payload,
            qos,
            retain,
            props,
            alias,
        })
    }

    /// Pops acknowledged publishes off the front of the window.
    fn settle(&mut self) {
        while self.inflight.front().is_some_and(|s| s.acked) {
            let Some(s) = self.inflight.pop_front() else {
                break;
            };
            if s.qos == QoS::AtMostOnce {
                self.last_ack = self.now;
            }
            self.free_pkid(s.pkid);
            self.inflight_bytes = self.inflight_bytes.saturating_sub(s.bytes);
            self.finish(&s);
        }
    }

    /// A publish answered for good: its messages are delivered, or refused and dropped.
    #[inline(always)]
    fn finish(&mut self, s: &Sent) {
        let Some(u) = &s.unit else {
            if let Some(code) = s.refused {
                let topic = self.set.status_topic.clone();
                self.warn_refused(code, &topic);
            }
            return;
        };
        match s.refused {
            None => self.counters.acknowledged += u.parts.len() as u64,
            Some(code) => self.count_refused(code, u),
        }
        self.settle_unit(u);
    }

    /// The broker refused a unit's messages for good: counted by reason and as dropped, and
    /// said once per reason and topic.
    fn count_refused(&mut self, code: u8, u: &Unit) {
        self.counters.refused[refusal_slot(code)] += u.parts.len() as u64;
        let mut d = Dropped::default();
        for _ in &u.parts {
            self.spool.count(&mut d, &u.topic);
        }
        self.count_dropped(d);
        let topic = if self.set.batch {
            topic::batch_topic(&u.topic)
        } else {
            u.topic.to_string()
        };
        self.warn_refused(code, &topic);
    }

    /// A `manager` warning, once per reason and topic.
    fn warn_refused(&mut self, code: u8, topic: &str) {
        if self.warned.len() >= MAX_WARNED {
            self.warned.clear();
        }
        if self.warned.insert((code, topic.to_string())) {
            log::warn!(
                "mqtt: the broker refuses messages on {topic}: {} (reason code 0x{code:02x}); \
                 they are dropped",
                wire::reason_name(code)
            );
        }
    }

    /// Marks a unit's messages as done for progress and the spool.
    fn settle_unit(&mut self, unit: &Unit) {
        for p in &unit.parts {
            if let Some(seq) = &p.seq {
                self.tracker.take(seq);
            }
            if let Some((seg, end)) = p.spool {
                self.spool.ack(seg, end.get());
            }
        }
    }

    /// Empties the in-flight window: answered units are settled, units read from the spool
    /// are left to be read from it again (an out-of-order ack must not move its offset), and
    /// the rest come back, in order, counted as waiting again.
    fn take_back_inflight(&mut self) -> Vec<Unit> {
        let mut back: Vec<Unit> = Vec::new();
        let inflight: Vec<Sent> = self.inflight.drain(..).collect();
        self.pkid_busy.fill(0);
        for s in inflight {
            match &s.unit {
                None => continue,
                Some(u) if u.from_spool => continue,
                Some(_) if s.acked => {
                    self.finish(&s);
                    continue;
                }
                Some(_) => {}
            }
            let Some(u) = s.unit else { continue };
            self.waiting_msgs += u.parts.len();
            self.waiting_bytes += u.bytes;
            back.push(u);
        }
        self.inflight_bytes = 0;
        back
    }
}

/// Whom a unit's messages are about, for its topic's user properties: the first message's
/// service, for a container topic (a message read back from the spool is asked its JSON).
fn who(u: &Unit) -> Who {
    let Some(p) = u.parts.first() else {
        return Who::Agent;
    };
    match &p.json {
        Body::Msg(m) if m.kind == SourceKind::Container => Who::Service {
            app: m.origin.app_id.as_str().to_string(),
            service: m.origin.service_name.clone(),
        },
        Body::Msg(_) => Who::Agent,
        Body::Text(json) => who_in_json(json),
    }
}

/// [`who`] for a message's JSON (docs/CONTRACT.md §4).
fn who_in_json(json: &str) -> Who {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Who::Agent;
    };
    if v["source"]["type"] != "container" {
        return Who::Agent;
    }
    let text = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Who::Service {
        app: text(&v["appId"]),
        service: text(&v["serviceName"]),
    }
}

// ---- the spool ----

/// Appends `records`; when a write fails (a full disk), tries the rest one by one so that
/// whatever still fits is kept. Returns how many were written (a prefix), what the spool's limit
/// pushed out, and the error that stopped it.
fn append_what_fits(
    spool: &mut Spool,
    records: &[(&str, &str)],
) -> (usize, Dropped, Option<std::io::Error>) {
    let out = spool.append(records.iter().copied());
    let mut written = out.written as usize;
    let mut dropped = out.dropped;
    let Some(mut error) = out.error else {
        return (written, dropped, None);
    };
    while let Some(record) = records.get(written) {
        let one = spool.append(std::iter::once(*record));
        dropped.add(one.dropped);
        match one.error {
            None => written += 1,
            Some(e) => {
                error = e;
                break;
            }
        }
    }
    let error = (written < records.len()).then_some(error);
    (written, dropped, error)
}
impl Session {
    fn spool_overflow(&mut self, now: Instant) {
        if self.memory.is_empty() {
            self.close_batches(now, true);
        }
        if !self.retry.is_empty() && self.granted.is_none() {
            let units: Vec<Unit> = self.retry.drain(..).collect();
            self.write_spool(units, true);
        }
        let mut units = Vec::new();
        let mut n = 0;
        while n < SPOOL_CHUNK_MSGS {
            let Some(u) = self.memory.pop_front() else {
                break;
            };
            n += u.parts.len();
            units.push(u);
        }
        self.write_spool(units, false);
    }

    /// Moves everything not acknowledged to the spool (shutdown): in-flight and retried
    /// messages in front of it, memory and open batches after it.
    fn spool_everything(&mut self, now: Instant) {
        self.close_batches(now, true);
        let mut front = self.take_back_inflight();
        front.extend(self.retry.drain(..));
        self.replay.clear();
        self.spool.rewind();
        self.write_spool(front, true);
        let rest: Vec<Unit> = self.memory.drain(..).collect();
        self.write_spool(rest, false);
    }

    /// Writes units to the spool, in front of it (all or none) or after it (as much as fits:
    /// when a write fails, the rest are tried one by one, and only those that do not fit are
    /// dropped, counted by kind).
    fn write_spool(&mut self, units: Vec<Unit>, front: bool) {
        if units.is_empty() {
            return;
        }
        // Only outages get here: rendering each message into its own string is fine.
        let texts: Vec<(&str, Cow<'_, str>)> = units
            .iter()
            .flat_map(|u| u.parts.iter().map(move |p| (&*u.topic, p.json.text())))
            .collect();
        let records: Vec<(&str, &str)> = texts.iter().map(|(t, j)| (*t, j.as_ref())).collect();
        let (written, dropped, error) = if front {
            match self.spool.prepend(records.iter().copied()) {
                Ok(d) => (records.len(), d, None),
                Err(e) => (0, Dropped::default(), Some(e)),
            }
        } else {
            append_what_fits(&mut self.spool, &records)
        };
        self.counters.spooled += written as u64;
        if dropped.total() > 0 {
            log::warn!(
                "mqtt spool is full: dropped the {} oldest messages",
                dropped.total()
            );
            self.count_dropped(dropped);
        }
        if let Some(e) = error {
            let mut lost = Dropped::default();
            for (topic, _) in &records[written..] {
                self.spool.count(&mut lost, topic);
            }
            log::warn!(
                "mqtt spool write failed ({e}): spooled {written} of {} messages, dropped {} \
                 container lines and {} of the agent's own",
                records.len(),
                lost.lines,
                lost.agent
            );
            self.last_error = format!("spool write: {e}");
            self.count_dropped(lost);
        }
        self.settle_spooled(&units);
    }

    /// Units handed to the spool (written or dropped) leave memory, and their positions may
    /// be reported.
    fn settle_spooled(&mut self, units: &[Unit]) {
        for u in units {
            self.waiting_msgs -= u.parts.len();
            self.waiting_bytes -= u.bytes;
            for p in &u.parts {
                if let Some(seq) = &p.seq {
                    self.tracker.take(seq);
                }
            }
        }
    }

    fn count_dropped(&mut self, d: Dropped) {
        self.counters.dropped += d.total();
        self.counters.dropped_lines += d.lines;
        self.counters.dropped_agent += d.agent;
        self.last_drop = Some(self.now);
    }

    fn fill_replay(&mut self) {
        let records = match self.spool.read(1024, 512 << 10) {
            Ok(r) => r,
            Err(e) => {
                self.last_error = format!("spool read: {e}");
                log::warn!("mqtt spool read failed: {e}");
                return;
            }
        };
        let cap_of =
            |topic: &str| PAYLOAD_CAP - topic::batch_overhead(self.set.batch_max) - topic.len();
        for r in records {
            let len = r.json.len();
            let part = Part {
                json: Body::Text(r.json.into_boxed_str()),
                seq: None,
                spool: NonZeroU64::new(r.end).map(|end| (r.seg, end)),
            };
            if self.set.batch {
                let cap = cap_of(&r.topic);
                if let Some(last) = self.replay.back_mut() {
                    if *last.topic == *r.topic
                        && last.parts.len() < self.set.batch_max
                        && last.bytes + len <= cap
                    {
                        last.parts.push(part);
                        last.bytes += len;
                        continue;
                    }
                }
            }
            self.replay.push_back(Unit {
                topic: Arc::from(r.topic),
                parts: Parts::One([part]),
                bytes: len,
                from_spool: true,
            });
        }
    }
}

/// Cuts a message JSON too large for one packet: the text is shortened and marked truncated,
/// so the subscriber still gets valid JSON with the same id.
fn cut(json: &str, max: usize) -> String {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_str::<serde_json::Value>(json)
    else {
        return String::from("{\"truncated\":true}");
    };
    let text = obj
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    let mut keep = max.saturating_sub(json.len() - text.len().min(json.len())) / 2;
    loop {
        while keep > 0 && !text.is_char_boundary(keep) {
            keep -= 1;
        }
        obj.insert(
            "message".into(),
            serde_json::Value::String(text[..keep.min(text.len())].to_string()),
        );
        obj.insert("truncated".into(), serde_json::Value::Bool(true));
        let out = serde_json::Value::Object(obj.clone()).to_string();
        if out.len() <= max || keep == 0 {
            return out;
        }
        keep /= 2;
    }
}

/// The rumqttc QoS of a configured 0, 1 or 2 (what the broker grants at most).
fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::message::{Draft, LabelValue};
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// A session over a spool in its own directory, removed on drop.
    struct Fixture {
        s: Session,
        t0: Instant,
        dir: PathBuf,
        origin: Arc<Origin>,
        next: i64,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str, vars: &[(&str, &str)]) -> Fixture {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("MQTT_BROKER".into(), "mqtt://127.0.0.1:1883".into());
        env.insert("MQTT_BATCH".into(), "false".into());
        for (k, v) in vars {
            env.insert(k.to_string(), v.to_string());
        }
        let cfg = Config::from_env(&env)
            .ok()
            .and_then(|c| c.mqtt)
            .unwrap_or_else(|| panic!("config {vars:?} is valid"));
        let dir = std::env::temp_dir().join(format!("cld-session-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir, 1 << 20).unwrap_or_else(|e| panic!("spool: {e}"));
        let t0 = Instant::now();
        let origin = Arc::new(Origin::new(
            Arc::from("c1"),
            "web".into(),
            LabelValue::from_label("1"),
            "web".into(),
            None,
            Arc::from("host"),
        ));
        Fixture {
            s: Session::new(&cfg, spool, "host", "online".into(), "offline".into(), t0),
            t0,
            dir,
            origin,
            next: 1,
        }
    }

    impl Fixture {
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// Takes in a message whose text is `text`; returns its position.
        fn intake(&mut self, text: &str, ms: u64) -> Position {
            let pos = Position {
                ts_ns: self.next,
                seen: 1,
            };
            self.next += 1;
            let msg = LogMessage::new(Draft {
                text,
                ts_ns: pos.ts_ns,
                level: Level::Info,
                kind: SourceKind::Container,
                origin: self.origin.clone(),
                is_stderr: false,
                truncated: false,
                position: Some(pos),
                id: crate::message::Id::Line(pos),
            });
            self.s.intake(Arc::new(msg), self.at(ms));
            pos
        }

        /// Every action until there is none, in order.
        fn actions(&mut self) -> Vec<Action> {
            std::iter::from_fn(|| self.s.poll()).collect()
        }

        /// The publishes among the actions, as (topic, payload text).
        fn publishes(&mut self) -> Vec<(String, String)> {
            self.actions()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Publish(p) => Some((
                        p.topic.to_string(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                    )),
                    _ => None,
                })
                .collect()
        }

        /// The packet ids of the publishes among the actions.
        fn pkids(&mut self) -> Vec<u16> {
            self.actions()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Publish(p) => Some(p.pkid),
                    _ => None,
                })
                .collect()
        }

        /// The actions as short names (`publish`, `pubrel N`, `ping`, `progress`, `reconnect`).
        fn names(&mut self) -> Vec<String> {
            self.actions()
                .into_iter()
                .map(|a| match a {
                    Action::Publish(_) => "publish".to_string(),
                    Action::PubRel(id) => format!("pubrel {id}"),
                    Action::Ping => "ping".to_string(),
                    Action::Progress(..) => "progress".to_string(),
                    Action::Reconnect => "reconnect".to_string(),
                })
                .collect()
        }

        fn connect(&mut self, ms: u64) {
            self.s.connected(Granted::v311(false), self.at(ms));
        }

        /// Every publish until there is none, whole.
        fn publish_actions(&mut self) -> Vec<Publish> {
            self.actions()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Publish(p) => Some(p),
                    _ => None,
                })
                .collect()
        }
    }

    const V5: (&str, &str) = ("MQTT_VERSION", "5");

    /// The texts of the messages in publishes, in order (the status shows as `status`).
    fn texts(publishes: &[(String, String)]) -> Vec<String> {
        publishes
            .iter()
            .map(|(topic, payload)| {
                if topic == "logs/status" {
                    return "status".to_string();
                }
                let v: serde_json::Value =
                    serde_json::from_str(payload).unwrap_or(serde_json::Value::Null);
                v["message"].as_str().unwrap_or("?").to_string()
            })
            .collect()
    }

    fn progress(actions: &[Action]) -> Vec<Position> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Progress(_, p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nothing_goes_out_before_connack_then_the_status_first() {
        let mut f = fixture("connack", &[("MQTT_STATUS_TOPIC", "logs/status")]);
        f.intake("a", 0);
        assert!(f.publishes().is_empty(), "not connected");
        f.connect(10);
        let out = f.publishes();
        assert_eq!(texts(&out), ["status", "a"]);
        assert!(out[0].1.contains("online"));
        assert!(f.s.is_connected());
    }

    #[test]
    fn out_of_order_acks_move_the_cursor_only_past_a_settled_front() {
        let mut f = fixture("order", &[("MQTT_STATUS_TOPIC", "logs/status")]);
        f.connect(0);
        let _a = f.intake("a", 0);
        let b = f.intake("b", 0);
        assert_eq!(f.pkids(), [1, 2, 3], "the status, a and b");
        f.s.acked(3, Ack::Ok, f.at(2));
        assert!(progress(&f.actions()).is_empty(), "a is not acknowledged");
        f.s.acked(1, Ack::Ok, f.at(3));
        f.s.acked(2, Ack::Ok, f.at(3));
        assert_eq!(progress(&f.actions()), [b], "a and b at once");
        assert_eq!(f.s.counters().acknowledged, 2);
    }

    #[test]
    fn a_disconnect_sends_what_was_in_flight_again_in_order_and_ignores_old_acks() {
        let mut f = fixture("resend", &[("MQTT_STATUS_TOPIC", "logs/status")]);
        f.connect(0);
        f.intake("a", 0);
        f.intake("b", 0);
        assert_eq!(texts(&f.publishes()), ["status", "a", "b"]);
        f.s.disconnected("gone".into(), f.at(2));
        assert_eq!(f.s.last_error(), "gone");
        f.s.acked(2, Ack::Ok, f.at(3));
        assert!(
            f.actions().is_empty(),
            "an ack of the old connection is nothing"
        );
        f.intake("c", 4);
        f.connect(5);
        assert_eq!(texts(&f.publishes()), ["status", "a", "b", "c"]);
        assert_eq!(f.s.counters().reconnects, 1);
    }

    #[test]
    fn a_refused_publish_comes_back_first_after_the_next_event() {
        let mut f = fixture("refused", &[("MQTT_STATUS_TOPIC", "logs/status")]);
        f.connect(0);
        f.intake("a", 0);
        f.intake("b", 0);
        let Some(Action::Publish(status)) = f.s.poll() else {
            panic!("the status first");
        };
        let Some(Action::Publish(a)) = f.s.poll() else {
            panic!("then a");
        };
        f.s.refused(a.token);
        assert!(f.actions().is_empty(), "held until the next event");
        f.s.tick(f.at(1));
        assert_eq!(texts(&f.publishes()), ["a", "b"]);
        assert_eq!(&*status.topic, "logs/status");
        assert_eq!(f.s.counters().published, 2);
    }

    #[test]
    fn qos0_is_settled_once_written() {
        let mut f = fixture("qos0", &[("MQTT_QOS", "0")]);
        f.connect(0);
        let a = f.intake("a", 0);
        assert_eq!(f.pkids(), [1, 0], "the status at QoS 1, a at QoS 0");
        assert!(
            progress(&f.actions()).is_empty(),
            "behind the status (QoS 1)"
        );
        f.s.acked(1, Ack::Ok, f.at(2));
        assert_eq!(progress(&f.actions()), [a]);
    }

    #[test]
    fn no_ack_for_ten_seconds_gives_the_connection_up() {
        let mut f = fixture("stall", &[]);
        f.connect(0);
        f.intake("a", 0);
        assert_eq!(f.publishes().len(), 2);
        f.s.acked(1, Ack::Ok, f.at(0));
        f.s.tick(f.at(9_000));
        assert!(f.actions().is_empty() && f.s.is_connected());
        f.s.tick(f.at(10_500));
        assert!(matches!(f.actions()[..], [Action::Reconnect]));
        assert!(!f.s.is_connected());
        f.connect(11_000);
        assert_eq!(texts(&f.publishes())[1..], ["a"]);
    }

    #[test]
    fn overflow_waits_for_a_working_broker_and_spools_after_two_seconds_of_no_acks() {
        let mut f = fixture("overflow", &[]);
        f.s.set_bounds(2, 1);
        f.connect(0);
        assert_eq!(f.publishes().len(), 1, "the status fills the window");
        for t in ["a", "b", "c"] {
            f.intake(t, 0);
        }
        f.s.tick(f.at(1_000));
        assert!(!f.s.accepting(f.at(1_000)), "the broker may still answer");
        f.s.tick(f.at(2_500));
        assert!(f.s.accepting(f.at(2_500)));
        assert_eq!(f.s.counters().spooled, 3);
        assert_eq!(progress(&f.actions()).len(), 1, "spooled counts as taken");
        f.s.acked(1, Ack::Ok, f.at(2_600));
        assert_eq!(texts(&f.publishes()), ["a"], "read back from the spool");
    }

    #[test]
    fn a_batch_closes_at_its_interval() {
        let mut f = fixture(
            "batch",
            &[("MQTT_BATCH", "true"), ("MQTT_BATCH_INTERVAL_MS", "500")],
        );
        f.connect(0);
        f.intake("a", 0);
        f.intake("b", 100);
        assert_eq!(f.s.next_deadline(), Some(f.at(500)));
        f.s.tick(f.at(400));
        assert_eq!(f.publishes().len(), 1, "the status only");
        f.s.tick(f.at(500));
        let out = f.publishes();
        assert_eq!(out.len(), 1);
        assert!(out[0].0.ends_with("/batch"));
        assert!(out[0].1.starts_with(r#"{"count":2,"logs":["#));
    }

    #[test]
    fn the_receive_maximum_bounds_what_is_in_flight() {
        let mut f = fixture("recvmax", &[]);
        f.s.connected(
            Granted {
                receive_max: 2,
                ..Granted::v311(false)
            },
            f.at(0),
        );
        for t in ["a", "b", "c"] {
            f.intake(t, 0);
        }
        assert_eq!(f.publishes().len(), 2, "the status and a");
        f.s.acked(1, Ack::Ok, f.at(1));
        assert_eq!(f.publishes().len(), 1, "b");
    }

    /// Fresh health is published at once the first time, then at most every 10 s (the newest
    /// wins); an unchanged payload is nothing; a new connection publishes the newest at once.
    #[test]
    fn status_with_health_is_rate_limited() {
        let mut f = fixture("health", &[("MQTT_STATUS_TOPIC", "logs/status")]);
        f.s.status("h1".into(), f.at(0));
        assert!(f.publishes().is_empty(), "nothing before CONNACK");
        f.connect(0);
        assert_eq!(f.publishes(), [("logs/status".into(), "h1".into())]);
        assert!(
            !f.s.status("h1".into(), f.at(1_000)),
            "unchanged: nothing to wake for"
        );
        f.s.tick(f.at(1_000));
        assert!(f.publishes().is_empty(), "unchanged");
        assert!(f.s.status("h2".into(), f.at(2_000)), "new");
        assert!(f.s.status("h3".into(), f.at(3_000)), "newer");
        assert!(!f.s.status("h3".into(), f.at(3_500)), "pending already");
        assert!(f.publishes().is_empty(), "within 10 s of the last");
        assert_eq!(
            f.s.next_deadline(),
            Some(f.at(10_000)),
            "wakes when it may go"
        );
        f.s.tick(f.at(10_000));
        assert_eq!(f.publishes(), [("logs/status".into(), "h3".into())]);
        f.s.status("h4".into(), f.at(11_000));
        f.s.disconnected("gone".into(), f.at(12_000));
        f.connect(13_000);
        let p = f.publishes();
        assert_eq!(
            p[0],
            ("logs/status".into(), "h4".into()),
            "at once on a new connection"
        );
    }

    #[test]
    fn stop_spools_what_is_left_and_says_offline_when_connected() {
        let mut f = fixture("stop", &[("MQTT_STATUS_TOPIC", "logs/status")]);
        f.connect(0);
        f.intake("a", 0);
        assert_eq!(f.publishes().len(), 2);
        f.intake("b", 0);
        f.s.flush(f.at(1));
        let offline = f.s.stop(f.at(2));
        assert!(offline.is_some_and(|p| p.retain
            && &*p.topic == "logs/status"
            && String::from_utf8_lossy(&p.payload) == "offline"));
        assert_eq!(f.s.counters().spooled, 2, "a in flight, b in memory");
        assert!(f.publishes().is_empty(), "nothing after stop");
        f.s.disconnected("stopped".into(), f.at(3));
        assert!(
            f.s.stop(f.at(4)).is_none(),
            "no status without a connection"
        );
    }

    #[test]
    fn packet_ids_count_up_wrap_past_zero_and_skip_ids_in_flight() {
        let mut f = fixture("pkids", &[]);
        f.connect(0);
        assert_eq!(f.pkids(), [1], "the status, left unacknowledged");
        f.s.last_pkid = 65_534;
        f.intake("a", 0);
        f.intake("b", 0);
        f.intake("c", 0);
        assert_eq!(f.pkids(), [65_535, 2, 3], "0 is no id, 1 is in flight");
        f.s.acked(1, Ack::Ok, f.at(1));
        f.s.acked(65_535, Ack::Ok, f.at(1));
        f.s.last_pkid = 0;
        f.intake("d", 2);
        assert_eq!(f.pkids(), [1], "1 is free again");
        f.s.disconnected("gone".into(), f.at(3));
        f.connect(4);
        assert_eq!(f.pkids(), [2, 3, 4, 5], "after a drop every id is free");
    }

    #[test]
    fn qos2_answers_pubrec_with_pubrel_and_settles_on_pubcomp() {
        let mut f = fixture("qos2", &[("MQTT_QOS", "2")]);
        f.connect(0);
        let a = f.intake("a", 0);
        assert_eq!(f.pkids(), [1, 2]);
        f.s.acked(1, Ack::Ok, f.at(1));
        f.s.pubrec(2, f.at(2));
        f.s.pubrec(9, f.at(2));
        f.s.pubrec(1, f.at(2));
        assert_eq!(f.names(), ["pubrel 2"], "only a QoS 2 publish in flight");
        f.s.acked(2, Ack::Ok, f.at(3));
        assert_eq!(progress(&f.actions()), [a]);
    }

    /// The publisher sleeps until `next_deadline` (or an event): a timed decision without its
    /// deadline would wait for an unrelated event.
    #[test]
    fn every_timed_decision_has_its_deadline() {
        // Keep-alive 60 s: a ping 45 s after the last write, its answer within 60 s.
        let mut f = fixture("deadlines", &[("MQTT_KEEPALIVE_S", "60")]);
        assert_eq!(
            f.s.next_deadline(),
            None,
            "nothing is timed before a connection"
        );
        f.connect(0);
        assert_eq!(f.pkids(), [1], "the status");
        f.s.acked(1, Ack::Ok, f.at(100));
        assert_eq!(
            f.s.next_deadline(),
            Some(f.at(45_000)),
            "idle: only the ping"
        );
        f.intake("a", 1_000);
        assert_eq!(f.names(), ["publish"]);
        assert_eq!(
            f.s.next_deadline(),
            Some(f.at(3_001)),
            "in flight: just past the stall since the watch began (the first publish out)"
        );
        f.s.tick(f.at(3_001));
        assert_eq!(
            f.s.next_deadline(),
            Some(f.at(11_001)),
            "then the ack-stall watchdog"
        );
        f.s.tick(f.at(11_001));
        assert_eq!(f.names(), ["reconnect"], "given up at that deadline");
        assert_eq!(f.s.next_deadline(), None, "not connected: nothing is timed");

        f.connect(20_000);
        for id in f.pkids() {
            f.s.acked(id, Ack::Ok, f.at(20_100));
        }
        f.names();
        assert_eq!(f.s.next_deadline(), Some(f.at(65_000)), "the ping again");
        f.s.tick(f.at(65_000));
        assert_eq!(f.names(), ["ping"]);
        assert_eq!(
            f.s.next_deadline(),
            Some(f.at(125_000)),
            "while the ping waits: its answer's limit"
        );
        f.s.tick(f.at(125_000));
        assert_eq!(
            f.names(),
            ["reconnect"],
            "no answer: given up at that deadline"
        );
    }

    #[test]
    fn keep_alive_pings_when_idle_and_a_missing_pingresp_ends_the_connection() {
        // Keep-alive 20 s: a ping after 15 s with nothing written; its answer within 20 s.
        let mut f = fixture("ping", &[("MQTT_KEEPALIVE_S", "20")]);
        f.s.tick(f.at(40_000));
        assert!(f.names().is_empty(), "no ping while not connected");
        f.connect(0);
        assert_eq!(f.pkids(), [1]);
        f.s.acked(1, Ack::Ok, f.at(100));
        assert_eq!(f.s.next_deadline(), Some(f.at(15_000)));
        let cases: [(u64, &str, &[&str]); 11] = [
            (14_999, "tick", &[]),
            (15_000, "tick", &["ping"]),
            (16_000, "tick", &[]),
            (16_500, "pingresp", &[]),
            (29_000, "publish", &["publish"]),
            (29_100, "ack 2", &["progress"]),
            (43_999, "tick", &[]),
            (44_000, "tick", &["ping"]),
            (50_000, "ack 2", &[]),
            (63_999, "tick", &[]),
            (64_000, "tick", &["reconnect"]),
        ];
        for (ms, event, want) in cases {
            match event {
                "pingresp" => f.s.ping_resp(f.at(ms)),
                "publish" => drop(f.intake("x", ms)),
                "ack 2" => f.s.acked(2, Ack::Ok, f.at(ms)),
                _ => f.s.tick(f.at(ms)),
            }
            assert_eq!(f.names(), want, "at {ms} ms after {event}");
        }
        assert!(!f.s.is_connected());
        assert!(f.s.last_error().contains("ping"), "{}", f.s.last_error());
        f.connect(65_000);
        assert_eq!(
            f.s.next_deadline(),
            Some(f.at(80_000)),
            "a new connection, a new count"
        );
    }

    #[test]
    fn a_final_refusal_is_dropped_counted_and_passed_by_the_cursor() {
        let mut f = fixture("refused", &[V5]);
        f.connect(0);
        let a = f.intake("a", 0);
        let b = f.intake("b", 0);
        assert_eq!(f.pkids(), [1, 2, 3], "the status, a and b");
        f.s.acked(2, Ack::of(0x87), f.at(1));
        assert!(progress(&f.actions()).is_empty(), "behind the status");
        f.s.acked(1, Ack::Ok, f.at(1));
        assert_eq!(progress(&f.actions()), [a], "settled, refused");
        f.s.acked(3, Ack::of(0x10), f.at(2));
        assert_eq!(
            progress(&f.actions()),
            [b],
            "the cursor passes the refused a"
        );
        let c = f.s.counters();
        assert_eq!((c.acknowledged, c.dropped, c.dropped_lines), (1, 1, 1));
        assert_eq!(c.refused[refusal_slot(0x87)], 1);
        assert!(!f.s.healthy(f.at(3)), "a drop shows in health");
        // A code no one counts apart is counted as `other`.
        f.intake("c", 4);
        assert_eq!(f.pkids(), [4]);
        f.s.acked(4, Ack::of(0x9a), f.at(5));
        assert_eq!(f.s.counters().refused[REFUSALS.len()], 1);
    }

    #[test]
    fn reason_codes_are_read_as_passing_or_final() {
        let cases = [
            (0x00, Ack::Ok),
            (0x10, Ack::Ok),
            (0x97, Ack::Retry(0x97)),
            (0x89, Ack::Retry(0x89)),
            (0x91, Ack::Retry(0x91)),
            (0x80, Ack::Refused(0x80)),
            (0x83, Ack::Refused(0x83)),
            (0x87, Ack::Refused(0x87)),
            (0x90, Ack::Refused(0x90)),
            (0x95, Ack::Refused(0x95)),
            (0x99, Ack::Refused(0x99)),
        ];
        for (code, ack) in cases {
            assert_eq!(Ack::of(code), ack, "0x{code:02x}");
        }
    }

    #[test]
    fn a_passing_refusal_is_sent_again_first_after_a_back_off() {
        let mut f = fixture("retry", &[V5]);
        f.connect(0);
        f.intake("a", 0);
        let b = f.intake("b", 0);
        assert_eq!(f.pkids(), [1, 2, 3]);
        f.s.acked(1, Ack::Ok, f.at(1));
        f.s.acked(2, Ack::of(0x97), f.at(1));
        f.s.acked(3, Ack::Ok, f.at(1));
        assert!(progress(&f.actions()).is_empty(), "a is not delivered");
        f.intake("c", 2);
        assert!(f.publishes().is_empty(), "nothing new before a goes again");
        assert_eq!(f.s.next_deadline(), Some(f.at(251)));
        f.s.tick(f.at(260));
        let again = f.publish_actions();
        let texts: Vec<String> = again
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect();
        assert!(
            texts[0].contains("\"a\"") && texts[1].contains("\"c\""),
            "{texts:?}"
        );
        assert_eq!(again[0].pkid, 4, "a new packet id");
        f.s.acked(again[0].pkid, Ack::Ok, f.at(270));
        assert_eq!(progress(&f.actions()), [b]);
        assert_eq!(f.s.counters().acknowledged, 2);
    }

    #[test]
    fn aliases_are_set_then_used_and_forgotten_at_a_reconnect() {
        let mut f = fixture("alias", &[V5, ("MQTT_STATUS_TOPIC", "logs/status")]);
        let granted = Granted {
            topic_alias_max: 4,
            ..Granted::v311(false)
        };
        f.s.connected(granted, f.at(0));
        f.intake("a", 0);
        f.intake("b", 0);
        let got: Vec<Alias> = f.publish_actions().iter().map(|p| p.alias).collect();
        assert_eq!(
            got,
            [Alias::None, Alias::Set(1), Alias::Use(1)],
            "the status has none"
        );
        f.s.disconnected("gone".into(), f.at(1));
        f.s.connected(granted, f.at(2));
        let again = f.publish_actions();
        let got: Vec<Alias> = again.iter().map(|p| p.alias).collect();
        assert_eq!(
            got,
            [Alias::None, Alias::Set(1), Alias::Use(1)],
            "set again"
        );
        assert!(again.iter().all(|p| p.props.is_some()));
        // A publish that set an alias and was not written: the next one sets it.
        f.intake("c", 3);
        let Some(Action::Publish(c)) = f.s.poll() else {
            panic!("c");
        };
        assert_eq!(c.alias, Alias::Use(1));
        f.s.disconnected("gone".into(), f.at(4));
        f.s.connected(granted, f.at(5));
        let Some(Action::Publish(status)) = f.s.poll() else {
            panic!("the status");
        };
        let Some(Action::Publish(first)) = f.s.poll() else {
            panic!("a");
        };
        assert_eq!((status.alias, first.alias), (Alias::None, Alias::Set(1)));
        f.s.refused(first.token);
        f.s.tick(f.at(6));
        let got: Vec<Alias> = f.publish_actions().iter().map(|p| p.alias).collect();
        assert_eq!(got, [Alias::Set(1), Alias::Use(1), Alias::Use(1)]);
    }

    #[test]
    fn at_3_1_1_there_are_no_properties_and_no_aliases() {
        let mut f = fixture("v311", &[]);
        f.s.connected(
            Granted {
                topic_alias_max: 4,
                ..Granted::v311(false)
            },
            f.at(0),
        );
        f.intake("a", 0);
        for p in f.publish_actions() {
            assert!(p.props.is_none() && p.alias == Alias::None);
        }
    }

    #[test]
    fn the_brokers_packet_size_splits_batches_and_cuts_a_message() {
        let vars = [V5, ("MQTT_BATCH", "true"), ("MQTT_BATCH_MAX", "50")];
        let mut f = fixture("packet", &vars);
        let granted = Granted {
            max_packet: 1500,
            ..Granted::v311(false)
        };
        f.s.connected(granted, f.at(0));
        let big = "y".repeat(5000);
        for i in 0..20 {
            f.intake(&format!("line {i} {}", "x".repeat(100)), 0);
        }
        let last = f.intake(&big, 0);
        f.s.tick(f.at(2000));
        let got = f.publish_actions();
        let mut texts = Vec::new();
        for p in &got[1..] {
            let size =
                wire::publish_size(p.topic.len(), 1, p.props.as_deref(), true, p.payload.len());
            assert!(size <= 1500, "a packet of {size} bytes");
            let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
            texts.extend(v["logs"].as_array().cloned().unwrap_or_default());
        }
        assert!(got.len() > 3, "split into {} publishes", got.len());
        assert_eq!(texts.len(), 21, "every message, in order");
        for (i, t) in texts.iter().take(20).enumerate() {
            assert!(t["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("line {i} "))));
        }
        assert_eq!(texts[20]["truncated"], true);
        for p in &got {
            f.s.acked(p.pkid, Ack::Ok, f.at(2001));
        }
        assert_eq!(progress(&f.actions()).last(), Some(&last));
        assert_eq!(f.s.counters().dropped, 0);
    }

    #[test]
    fn a_message_that_cannot_fit_even_cut_is_refused_in_its_place() {
        let mut f = fixture("tiny", &[V5]);
        let granted = Granted {
            max_packet: 200,
            ..Granted::v311(false)
        };
        f.s.connected(granted, f.at(0));
        let a = f.intake("a", 0);
        assert_eq!(f.pkids(), [1], "the status only");
        f.s.acked(1, Ack::Ok, f.at(1));
        assert_eq!(progress(&f.actions()), [a]);
        assert_eq!(f.s.counters().refused[refusal_slot(0x95)], 1);
    }

    #[test]
    fn the_brokers_keep_alive_replaces_ours() {
        let mut f = fixture("server-ka", &[V5, ("MQTT_KEEPALIVE_S", "30")]);
        let granted = Granted {
            keep_alive: Some(Duration::from_secs(10)),
            ..Granted::v311(false)
        };
        f.s.connected(granted, f.at(0));
        assert_eq!(f.pkids(), [1]);
        f.s.acked(1, Ack::Ok, f.at(0));
        assert_eq!(f.s.next_deadline(), Some(f.at(7_500)));
        f.s.connected(
            Granted {
                keep_alive: Some(Duration::ZERO),
                ..granted
            },
            f.at(0),
        );
        assert_eq!(f.s.next_deadline(), Some(f.at(22_500)), "0: ours");
    }

    #[test]
    fn cut_keeps_valid_json() {
        let big = format!(
            r#"{{"id":"x","message":"{}","level":"info"}}"#,
            "é".repeat(100_000)
        );
        let out = cut(&big, 10_000);
        assert!(out.len() <= 10_000);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["id"], "x");
        assert_eq!(v["truncated"], true);
    }

    #[test]
    fn what_fits_in_a_full_spool_is_kept_and_the_rest_counted_by_kind() {
        let (mut spool, dir) = super::super::spool::full_after_one_segment("session-full");
        let json = "x".repeat(1000);
        let records: Vec<(&str, &str)> = (0..40)
            .map(|i| {
                let topic = if i % 4 == 0 {
                    "b/manager/warn"
                } else {
                    "b/1/web/info"
                };
                (topic, json.as_str())
            })
            .collect();
        let (written, pushed_out, error) = append_what_fits(&mut spool, &records);
        assert!(error.is_some(), "the second segment cannot be written");
        assert!(written > 0 && written < records.len());
        assert_eq!(
            spool.pending(),
            written as u64,
            "everything that fit is kept"
        );
        assert_eq!(pushed_out, Dropped::default());
        let mut lost = Dropped::default();
        for (topic, _) in &records[written..] {
            spool.count(&mut lost, topic);
        }
        assert_eq!(lost.total() as usize, records.len() - written);
        assert!(lost.agent > 0 && lost.lines > lost.agent, "{lost:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A run of lines shaped like `make bench`'s (one container, 100-byte lines, QoS 1, handed over
/// 64 at a time, every publish acknowledged once written) through the session. It is also the
/// harness for measuring the session's cost per line: `CLD_COST_LINES=30000` and callgrind
/// with `--toggle-collect='*cost_tests*drive*'` count the session's work alone.
#[cfg(test)]
mod cost_tests {
    use super::*;
    use crate::config::Config;
    use std::collections::HashMap;

    fn session(batch: bool, dir: &std::path::Path, t0: Instant) -> Session {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("MQTT_BROKER".into(), "mqtt://127.0.0.1:1883".into());
        env.insert("MQTT_QOS".into(), "1".into());
        env.insert("MQTT_BATCH".into(), batch.to_string());
        env.insert("MQTT_BATCH_MAX".into(), "50".into());
        let cfg = Config::from_env(&env)
            .ok()
            .and_then(|c| c.mqtt)
            .unwrap_or_else(|| panic!("config is valid"));
        let _ = std::fs::remove_dir_all(dir);
        let spool = Spool::open(dir, 1 << 20).unwrap_or_else(|e| panic!("spool: {e}"));
        Session::new(&cfg, spool, "host", "online".into(), "offline".into(), t0)
    }

    /// What the publisher and the connection thread do with the lines: intake, tick, poll,
    /// write (payloads given back), acknowledge. Returns the messages published and the last
    /// position reported.
    #[inline(never)]
    fn drive(s: &mut Session, msgs: &[Arc<LogMessage>], t0: Instant) -> (usize, Option<Position>) {
        let mut published = 0;
        let mut last = None;
        let mut pkids = Vec::new();
        let chunks = msgs.chunks(64);
        let n = chunks.len();
        for (i, chunk) in chunks.enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            for m in chunk {
                s.intake(m.clone(), now);
            }
            if i + 1 == n {
                s.flush(now);
            }
            s.tick(now);
            while let Some(a) = s.poll() {
                match a {
                    Action::Publish(p) => {
                        published += p.payload.len();
                        pkids.push(p.pkid);
                        s.recycle(p.payload);
                    }
                    Action::Progress(_, pos) => last = Some(pos),
                    _ => {}
                }
            }
            for pkid in pkids.drain(..) {
                s.acked(pkid, Ack::Ok, now);
            }
        }
        while let Some(a) = s.poll() {
            if let Action::Progress(_, pos) = a {
                last = Some(pos);
            }
        }
        (published, last)
    }

    fn run(batch: bool) {
        let n = crate::message::cost_lines();
        let dir =
            std::env::temp_dir().join(format!("cld-session-cost-{batch}-{}", std::process::id()));
        let t0 = Instant::now();
        let mut s = session(batch, &dir, t0);
        s.connected(Granted::v311(false), t0);
        let msgs = crate::message::bench_lines(n);
        let (bytes, last) = drive(&mut s, &msgs, t0);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(bytes > n * 100, "every line went out ({bytes} bytes)");
        assert_eq!(s.counters().acknowledged, n as u64);
        assert_eq!(last, msgs.last().and_then(|m| m.position()));
        assert!(s.drained());
    }

    #[test]
    fn a_run_of_lines_goes_out_batched_and_is_reported() {
        run(true);
    }

    #[test]
    fn a_run_of_lines_goes_out_one_by_one_and_is_reported() {
        run(false);
    }
}
