//! The MQTT backend's state, shared by the `mqtt-pub` and `mqtt-conn` threads under one mutex:
//! what waits in memory, what is in flight and under which packet id, the spool, and which
//! container positions may be reported to `Progress`.
//!
//! The logical queue, oldest first, is: in flight → retry (returned from flight by a disconnect)
//! → spool replay → spool on disk → memory → open batches. Every path keeps that order, so a
//! subscriber sees each container's lines in order and a restart resumes without a gap.
//! A message counts as delivered only on its PUBACK/PUBCOMP (QoS 1/2) or once written to the
//! socket (QoS 0). This module never blocks: it calls only `try_publish` on the client, and it
//! never sleeps; the threads in `mod.rs` do the waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Client, QoS};

use super::spool::Spool;
use super::topic;
use crate::backend::Lane as ProgressLane;
use crate::config::MqttConfig;
use crate::message::{Level, LogMessage, Origin, Position, SourceKind};

/// Messages kept in memory (retry, memory queue, open batches) before the spool takes over.
/// Sized for a Pi: `make bench` saw no loss of throughput against 4096 messages / 4 MiB.
pub const MEM_MAX_MSGS: usize = 1024;
/// Bytes kept in memory before the spool takes over.
pub const MEM_MAX_BYTES: usize = 1 << 20;
/// Messages moved to the spool in one write.
const SPOOL_CHUNK_MSGS: usize = 1024;
/// Publishes handed to the client and not yet acknowledged; the client's request channel is
/// larger, so `try_publish` never meets a full channel. Below rumqttc's own window
/// (`CLIENT_INFLIGHT` in `mod.rs`), so that rumqttc never runs out of packet ids and never
/// enters its own waiting states (in-flight full, packet id collision): with 256 against its 200,
/// `make bench` saw the window stall for good about once in ten runs of 20 containers.
pub const MAX_INFLIGHT_UNITS: usize = 192;
const MAX_INFLIGHT_BYTES: usize = 512 << 10;
/// Largest batch payload we build; well below [`MAX_PACKET`] so a batch never tears the
/// connection down.
pub const PAYLOAD_CAP: usize = 256 << 10;
/// The MQTT packet size limit we set on the client.
pub const MAX_PACKET: usize = 1 << 20;
/// Connected but no acknowledgement for this long: treat the broker as away and spool.
const STALL: Duration = Duration::from_secs(2);

/// A message body: a message, rendered when it is sent or spooled, or JSON text (read back
/// from the spool, or a message cut to fit a packet).
enum Body {
    Msg(Arc<LogMessage>),
    Text(String),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Msg(m) => m.json_len(),
            Body::Text(t) => t.len(),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Body::Msg(m) => m.write_json(out),
            Body::Text(t) => out.push_str(t),
        }
    }

    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Body::Msg(m) => std::borrow::Cow::Owned(m.json()),
            Body::Text(t) => std::borrow::Cow::Borrowed(t),
        }
    }
}

/// One message inside a unit.
struct Part {
    json: Body,
    /// Its slot in the progress tracker (container messages with a position only).
    seq: Option<Seq>,
    /// Where it sits in the spool, for messages read back from it.
    spool: Option<(u64, u64)>,
}

/// One MQTT publish: a single message or a batch, all on one topic.
struct Unit {
    /// The message topic, without `/batch`; shared by the units of one topic.
    topic: Arc<str>,
    parts: Vec<Part>,
    bytes: usize,
    from_spool: bool,
}

struct Open {
    unit: Unit,
    since: Instant,
}

/// A publish handed to the client, waiting for its packet id and acknowledgement.
struct Sent {
    /// `None` for the status message.
    unit: Option<Unit>,
    pkid: Option<u16>,
    qos0: bool,
    acked: bool,
}

/// Counters shown in health and metrics.
#[derive(Default, Clone, Copy)]
pub struct Counters {
    pub published: u64,
    pub acknowledged: u64,
    pub spooled: u64,
    pub dropped: u64,
    pub reconnects: u64,
}

/// Which positions may be reported: a container's position is reported only once every earlier
/// message of that container (in intake order) is acknowledged or spooled. One lane per
/// container, so a batch that waits for its interval holds back its own container's cursor
/// only, and the lanes hold no more than what is waiting or in flight.
struct Tracker {
    lanes: HashMap<Arc<str>, Lane>,
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
struct Seq {
    container: Arc<str>,
    n: u64,
}

/// Empty lanes are dropped once there are more than this many (containers come and go).
const IDLE_LANES: usize = 64;

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            lanes: HashMap::new(),
            dirty: Vec::new(),
            prune_at: IDLE_LANES,
        }
    }
}

impl Tracker {
    fn push(&mut self, container: Arc<str>, pos: Position) -> Seq {
        let lane = self.lanes.entry(container.clone()).or_default();
        lane.slots.push_back((pos, false));
        Seq {
            container,
            n: lane.base + lane.slots.len() as u64 - 1,
        }
    }

    fn take(&mut self, seq: &Seq) {
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

    fn report(&mut self, progress: &ProgressLane) {
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
                progress.taken(&c, p);
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

/// Everything both threads share.
pub struct Core {
    base_topic: String,
    qos: QoS,
    retain: bool,
    batch: bool,
    batch_max: usize,
    batch_interval: Duration,
    pub status_topic: String,
    pub online: String,
    pub offline: String,

    retry: VecDeque<Unit>,
    replay: VecDeque<Unit>,
    memory: VecDeque<Unit>,
    open: Vec<Open>,
    waiting_msgs: usize,
    waiting_bytes: usize,
    pub spool: Spool,
    inflight: VecDeque<Sent>,
    inflight_bytes: usize,
    tracker: Tracker,
    /// The topic of the last message taken in, and what it was made from: consecutive
    /// messages mostly share it, and sanitising and formatting it per message showed up in
    /// profiles.
    last_topic: Option<(Arc<Origin>, Level, SourceKind, Arc<str>)>,

    pub connected: bool,
    pub ever_connected: bool,
    pub stopping: bool,
    /// Set while shutting down: the spool is no longer read for sending.
    pub draining: bool,
    status_due: bool,
    pub disconnected_since: Option<Instant>,
    last_ack: Instant,
    pub last_drop: Option<Instant>,
    pub counters: Counters,
    pub last_error: String,

    lane: ProgressLane,
}

impl Core {
    pub fn new(
        cfg: &MqttConfig,
        spool: Spool,
        lane: ProgressLane,
        online: String,
        offline: String,
    ) -> Core {
        let now = Instant::now();
        Core {
            base_topic: cfg.base_topic.clone(),
            qos: qos(cfg.qos),
            retain: cfg.retain,
            batch: cfg.batch,
            batch_max: cfg.batch_max.max(1),
            batch_interval: cfg.batch_interval,
            status_topic: cfg.status_topic.clone(),
            online,
            offline,
            retry: VecDeque::new(),
            replay: VecDeque::new(),
            memory: VecDeque::new(),
            open: Vec::new(),
            waiting_msgs: 0,
            waiting_bytes: 0,
            spool,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            tracker: Tracker::default(),
            last_topic: None,
            connected: false,
            ever_connected: false,
            stopping: false,
            draining: false,
            status_due: false,
            disconnected_since: Some(now),
            last_ack: now,
            last_drop: None,
            counters: Counters::default(),
            last_error: String::new(),
            lane,
        }
    }

    /// Messages waiting in memory (not counting what is in flight).
    pub fn queued(&self) -> usize {
        self.waiting_msgs + self.replay.iter().map(|u| u.parts.len()).sum::<usize>()
    }

    fn overflowing(&self) -> bool {
        self.waiting_msgs > MEM_MAX_MSGS || self.waiting_bytes > MEM_MAX_BYTES
    }

    /// Whether memory overflow may go to the spool now rather than slow the input down.
    fn may_spool(&self, now: Instant) -> bool {
        !self.connected || self.spool.has_unacked() || self.ack_stalled(now, STALL)
    }

    /// False when the publisher should stop taking messages (backpressure on `log()`).
    pub fn accepting(&self, now: Instant) -> bool {
        !self.overflowing() || self.may_spool(now)
    }

    /// When the next open batch is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open
            .iter()
            .map(|o| o.since + self.batch_interval)
            .min()
    }

    /// Takes one message in.
    pub fn intake(&mut self, msg: Arc<LogMessage>, now: Instant) {
        let topic = match &self.last_topic {
            Some((o, level, kind, t))
                if Arc::ptr_eq(o, &msg.origin) && *level == msg.level && *kind == msg.kind =>
            {
                t.clone()
            }
            _ => {
                let t: Arc<str> = Arc::from(topic::topic_for(&self.base_topic, &msg));
                self.last_topic = Some((msg.origin.clone(), msg.level, msg.kind, t.clone()));
                t
            }
        };
        let seq = match (msg.kind, msg.position) {
            (SourceKind::Container, Some(pos)) => {
                Some(self.tracker.push(msg.origin.container_id.clone(), pos))
            }
            _ => None,
        };
        // A message too large for one packet is cut to fit; anything smaller goes out whole,
        // alone when it does not fit a batch.
        let mut json = Body::Msg(msg);
        let mut len = json.len();
        if len + topic.len() + 4096 > MAX_PACKET {
            json = Body::Text(cut(&json.text(), MAX_PACKET - topic.len() - 8192));
            len = json.len();
        }
        let part = Part {
            json,
            seq,
            spool: None,
        };
        self.waiting_msgs += 1;
        self.waiting_bytes += len;
        if !self.batch {
            self.memory.push_back(Unit {
                topic,
                parts: vec![part],
                bytes: len,
                from_spool: false,
            });
            return;
        }
        let cap = PAYLOAD_CAP - topic::batch_overhead(self.batch_max) - topic.len();
        if let Some(i) = self.open.iter().position(|o| o.unit.topic == topic) {
            if self.open[i].unit.bytes + len > cap {
                let o = self.open.remove(i);
                self.memory.push_back(o.unit);
            }
        }
        let i = match self.open.iter().position(|o| o.unit.topic == topic) {
            Some(i) => i,
            None => {
                self.open.push(Open {
                    unit: Unit {
                        topic,
                        parts: Vec::new(),
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
        if o.unit.parts.len() >= self.batch_max {
            let o = self.open.remove(i);
            self.memory.push_back(o.unit);
        }
    }

    /// Closes open batches whose interval has passed (all of them when `all`).
    pub fn close_batches(&mut self, now: Instant, all: bool) {
        let interval = self.batch_interval;
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

    /// One step of the publisher: close due batches, spool overflow, send what may be sent,
    /// report progress.
    pub fn step(&mut self, client: &Client, now: Instant) {
        self.close_batches(now, false);
        if self.overflowing() && self.may_spool(now) {
            self.spool_overflow(now);
        }
        if self.connected && !self.stopping {
            self.pump(client);
        }
        self.tracker.report(&self.lane);
    }

    fn spool_overflow(&mut self, now: Instant) {
        if self.memory.is_empty() {
            self.close_batches(now, true);
        }
        if !self.retry.is_empty() && !self.connected {
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

    /// Writes units to the spool in one write, in front of it or after it.
    fn write_spool(&mut self, units: Vec<Unit>, front: bool) {
        if units.is_empty() {
            return;
        }
        // Only outages get here: rendering each message into its own string is fine.
        let texts: Vec<(&str, std::borrow::Cow<'_, str>)> = units
            .iter()
            .flat_map(|u| u.parts.iter().map(move |p| (&*u.topic, p.json.text())))
            .collect();
        let records = texts.iter().map(|(t, j)| (*t, j.as_ref()));
        let result = if front {
            self.spool.prepend(records)
        } else {
            self.spool.append(records)
        };
        let n: usize = units.iter().map(|u| u.parts.len()).sum();
        match result {
            Ok(dropped) => {
                self.counters.spooled += n as u64;
                if dropped > 0 {
                    self.counters.dropped += dropped;
                    self.last_drop = Some(Instant::now());
                    log::warn!("mqtt spool is full: dropped the {dropped} oldest messages");
                }
            }
            Err(e) => {
                self.counters.dropped += n as u64;
                self.last_drop = Some(Instant::now());
                log::warn!("mqtt spool write failed, dropped {n} messages: {e}");
            }
        }
        for u in &units {
            self.waiting_msgs -= u.parts.len();
            self.waiting_bytes -= u.bytes;
            for p in &u.parts {
                if let Some(seq) = &p.seq {
                    self.tracker.take(seq);
                }
            }
        }
    }

    /// Moves everything not acknowledged to the spool (shutdown, broker away): in-flight and
    /// retried messages in front of it, memory and open batches after it.
    pub fn spool_everything(&mut self) {
        self.close_batches(Instant::now(), true);
        let mut front = self.take_back_inflight();
        front.extend(self.retry.drain(..));
        self.replay.clear();
        self.spool.rewind();
        self.write_spool(front, true);
        let rest: Vec<Unit> = self.memory.drain(..).collect();
        self.write_spool(rest, false);
        self.tracker.report(&self.lane);
    }

    /// True when nothing of memory is left to send (the spool may still hold messages).
    pub fn drained(&self) -> bool {
        self.inflight.is_empty()
            && self.retry.is_empty()
            && self.open.is_empty()
            && (self.memory.is_empty() || self.spool.has_unacked())
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
        for r in records {
            let len = r.json.len();
            let part = Part {
                json: Body::Text(r.json),
                seq: None,
                spool: Some((r.seg, r.end)),
            };
            if self.batch {
                let cap = PAYLOAD_CAP - topic::batch_overhead(self.batch_max) - r.topic.len();
                if let Some(last) = self.replay.back_mut() {
                    if *last.topic == *r.topic
                        && last.parts.len() < self.batch_max
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
                parts: vec![part],
                bytes: len,
                from_spool: true,
            });
        }
    }

    /// Hands units to the client in queue order while the in-flight window has room.
    fn pump(&mut self, client: &Client) {
        if self.status_due {
            let ok = client
                .try_publish(
                    self.status_topic.clone(),
                    QoS::AtLeastOnce,
                    true,
                    self.online.clone().into_bytes(),
                )
                .is_ok();
            if ok {
                self.status_due = false;
                self.window_opened();
                self.inflight.push_back(Sent {
                    unit: None,
                    pkid: None,
                    qos0: false,
                    acked: false,
                });
            }
        }
        while self.inflight.len() < MAX_INFLIGHT_UNITS && self.inflight_bytes < MAX_INFLIGHT_BYTES {
            let unit = if let Some(u) = self.retry.pop_front() {
                self.waiting_msgs -= u.parts.len();
                self.waiting_bytes -= u.bytes;
                u
            } else {
                if self.replay.is_empty() && !self.draining && self.spool.has_unread() {
                    self.fill_replay();
                }
                if let Some(u) = self.replay.pop_front() {
                    u
                } else if !self.spool.has_unacked() {
                    // Memory goes out only once the spool is acknowledged: a disconnect could
                    // otherwise send newer memory before older spooled messages.
                    match self.memory.pop_front() {
                        Some(u) => {
                            self.waiting_msgs -= u.parts.len();
                            self.waiting_bytes -= u.bytes;
                            u
                        }
                        None => break,
                    }
                } else {
                    break;
                }
            };
            let (topic, payload) = if self.batch {
                (
                    topic::batch_topic(&unit.topic),
                    topic::batch_payload(unit.parts.len(), unit.bytes, |i, out| {
                        unit.parts[i].json.write(out)
                    }),
                )
            } else {
                let mut json = String::with_capacity(unit.bytes);
                if let Some(p) = unit.parts.first() {
                    p.json.write(&mut json);
                }
                (unit.topic.to_string(), json.into_bytes())
            };
            if !rumqttc::valid_topic(&topic) {
                // Only a base topic with a wildcard gets here; config validation should stop it.
                self.counters.dropped += unit.parts.len() as u64;
                self.last_drop = Some(Instant::now());
                log::warn!(
                    "mqtt topic {topic:?} is not valid, dropped {} messages",
                    unit.parts.len()
                );
                self.settle_unit(&unit);
                continue;
            }
            let bytes = payload.len();
            match client.try_publish(topic, self.qos, self.retain, payload) {
                Ok(()) => {
                    self.counters.published += unit.parts.len() as u64;
                    self.inflight_bytes += bytes;
                    self.window_opened();
                    self.inflight.push_back(Sent {
                        unit: Some(unit),
                        pkid: None,
                        qos0: self.qos == QoS::AtMostOnce,
                        acked: false,
                    });
                }
                Err(_) => {
                    // The request channel is full (should not happen with our window): retry.
                    self.waiting_msgs += unit.parts.len();
                    self.waiting_bytes += unit.bytes;
                    if unit.from_spool {
                        self.replay.push_front(unit);
                    } else {
                        self.retry.push_front(unit);
                    }
                    break;
                }
            }
        }
    }

    /// Marks a unit's messages as done for progress and the spool.
    fn settle_unit(&mut self, unit: &Unit) {
        for p in &unit.parts {
            if let Some(seq) = &p.seq {
                self.tracker.take(seq);
            }
            if let Some((seg, end)) = p.spool {
                self.spool.ack(seg, end);
            }
        }
    }

    /// Called before a publish joins the window: if the window was empty, no acknowledgement
    /// was owed until now, so the wait for one starts now (not at the last one, maybe long ago).
    fn window_opened(&mut self) {
        if self.inflight.is_empty() {
            self.last_ack = Instant::now();
        }
    }

    /// Connected, publishes in flight, and no acknowledgement for `limit`: the link is stuck.
    pub fn ack_stalled(&self, now: Instant, limit: Duration) -> bool {
        self.connected && !self.inflight.is_empty() && now.duration_since(self.last_ack) > limit
    }

    /// The broker accepted our connection.
    pub fn on_connack(&mut self) {
        if self.ever_connected {
            self.counters.reconnects += 1;
        }
        self.ever_connected = true;
        self.connected = true;
        self.status_due = true;
        self.disconnected_since = None;
        // Health shows the error of the outage that just ended no longer.
        self.last_error.clear();
        self.last_ack = Instant::now();
    }

    /// The client wrote a publish to the socket; publishes go out in the order we handed them.
    pub fn on_sent(&mut self, pkid: u16) {
        if let Some(s) = self.inflight.iter_mut().find(|s| s.pkid.is_none()) {
            s.pkid = Some(pkid);
            if s.qos0 {
                s.acked = true;
                // At QoS 0 the socket taking the publish is all the progress there is.
                self.last_ack = Instant::now();
                self.settle();
            }
        }
    }

    /// The broker acknowledged packet `pkid` (PUBACK for QoS 1, PUBCOMP for QoS 2).
    pub fn on_ack(&mut self, pkid: u16) {
        if let Some(s) = self
            .inflight
            .iter_mut()
            .find(|s| s.pkid == Some(pkid) && !s.acked && !s.qos0)
        {
            s.acked = true;
            self.last_ack = Instant::now();
            self.settle();
        }
    }

    fn settle(&mut self) {
        while self.inflight.front().is_some_and(|s| s.acked) {
            let Some(s) = self.inflight.pop_front() else {
                break;
            };
            if let Some(u) = s.unit {
                self.counters.acknowledged += u.parts.len() as u64;
                self.inflight_bytes = self.inflight_bytes.saturating_sub(u.bytes);
                self.settle_unit(&u);
            }
        }
        self.tracker.report(&self.lane);
    }

    /// Empties the in-flight window: acknowledged units are settled, units read from the spool
    /// are left to be read from it again (an out-of-order ack must not move its offset), and
    /// the rest come back, in order, counted as waiting again.
    fn take_back_inflight(&mut self) -> Vec<Unit> {
        let mut back: Vec<Unit> = Vec::new();
        let inflight: Vec<Sent> = self.inflight.drain(..).collect();
        for s in inflight {
            let Some(u) = s.unit else { continue };
            if u.from_spool {
                continue;
            }
            if s.acked {
                self.counters.acknowledged += u.parts.len() as u64;
                self.settle_unit(&u);
                continue;
            }
            self.waiting_msgs += u.parts.len();
            self.waiting_bytes += u.bytes;
            back.push(u);
        }
        self.inflight_bytes = 0;
        back
    }

    /// The connection failed or dropped: what was in flight goes back, in order, to be sent
    /// again after the next CONNACK (a clean session forgets it on the broker side).
    pub fn on_disconnect(&mut self, error: String) {
        if self.connected {
            self.disconnected_since = Some(Instant::now());
        }
        self.connected = false;
        self.last_error = error;
        let back = self.take_back_inflight();
        self.tracker.report(&self.lane);
        for u in back.into_iter().rev() {
            self.retry.push_front(u);
        }
        // Spooled messages in flight or read ahead are read again from the spool.
        self.replay.clear();
        self.spool.rewind();
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

/// The rumqttc QoS of a configured 0, 1 or 2.
pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Progress;

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
        t.report(&lane);
        assert_eq!(p.safe().get(&c), None, "1 is still only in memory");
        assert_eq!(
            p.safe().get(&d),
            Some(&pos(19)),
            "another container's cursor is not held back"
        );
        assert_eq!(t.len(), 2);
        t.take(&a);
        t.report(&lane);
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
        t.report(&lane);
        assert_eq!(
            t.lanes.len(),
            1,
            "only the lane with a message waiting is kept"
        );
        t.take(&held);
        t.report(&lane);
        assert_eq!(p.safe().len(), IDLE_LANES + 2);
    }
}
