//! A model test of [`Session`]: a simulated adapter and broker drive the session alone, through
//! thousands of seeded random schedules, and check what a subscriber and `Progress` would see.
//!
//! The simulation: messages of several containers (two topics each) arrive while the clock
//! advances; the adapter sometimes refuses a publish (no connection to write it on); publishes
//! (with the session's packet ids, never one still in flight), PUBRELs and pings are written and
//! reach the broker in order; the broker acknowledges out of order (QoS 2 through PUBREC, the
//! session's PUBREL and PUBCOMP), answers pings, stalls (acknowledges and answers nothing, so a
//! ping goes unanswered), drops the connection at random points (what was
//! written but not received, and acknowledgements not yet delivered, are lost), refuses
//! connections, and comes back with or without a session; the agent itself is sometimes
//! stopped and started again on the same spool. At the end the broker is stable and everything
//! must arrive. Checked: every message is delivered (or spooled, on the way); per topic, first
//! deliveries keep intake order; a reported cursor never passes a message neither acknowledged
//! nor spooled; a message is delivered more than once only if it was in flight at a drop, at
//! most once more per such drop; nothing is dropped; a PUBREL answers only a PUBREC, and no
//! second ping goes out before the first is answered.
//!
//! MQTT 5 is in the schedules too: some worlds speak it, with brokers that grant a small
//! receive maximum (never more unacknowledged publishes than it), topic aliases (no publish
//! carries an alias its connection has not set: aliases are forgotten at every reconnect) and a
//! small maximum packet size (batches split). Their broker may refuse a topic for good (0x87,
//! not authorized: never delivered, counted once per message, the cursor passes it) and refuse
//! publishes for now (0x97, quota exceeded: sent again, delivered in the end; a message sent
//! again may arrive after newer ones that were already in flight behind it, so the order check
//! leaves those out).
//!
//! `MODEL_SEED=n` runs one schedule; `MODEL_SCHEDULES=n` runs more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::session::{Ack, Action, Granted, Publish, Session, REFUSALS};
use super::spool::{self, Spool};
use super::wire::Alias;
use crate::config::{Config, MqttConfig, MqttVersion};
use crate::message::{Draft, LabelValue, Level, LogMessage, Origin, Position, SourceKind};

const SCHEDULES: u64 = 2000;
const CONTAINERS: usize = 3;
const STATUS: &str = "model/status";

/// xorshift64*: small, seeded, good enough to pick events.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p` percent.
    fn chance(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// What the simulation knows of one message.
struct Msg {
    topic: usize,
    container: usize,
    pos: Position,
    acked: bool,
    deliveries: u32,
    /// Deliveries more than one that are allowed: one per drop it was in flight at.
    allowed_dups: u32,
}

/// A publish the adapter handed on, on the current connection, in order.
struct Handed {
    msgs: Vec<usize>,
    pkid: u16,
    acked: bool,
    /// Refused for now: it keeps its place, with no packet id, until the session sends it
    /// again.
    waiting: bool,
}

/// The connection as the broker sees it.
#[derive(PartialEq)]
enum Link {
    Down,
    Up,
}

struct World {
    rng: Rng,
    now: Instant,
    cfg: MqttConfig,
    dir: PathBuf,
    mem_msgs: usize,
    window: usize,
    session: Session,
    origins: Vec<Arc<Origin>>,
    msgs: Vec<Msg>,
    next_ts: i64,
    link: Link,
    /// Broker stops acknowledging while set.
    stalled: bool,
    /// Publishes taken from the session, not yet written, with their messages.
    queue: VecDeque<(Publish, Vec<usize>)>,
    /// Written to the socket, not yet read by the broker: (pkid, messages).
    socket: VecDeque<(u16, Vec<usize>)>,
    /// Received by the broker, acknowledgement (PUBACK, or PUBREC at QoS 2) not yet sent: pkids
    /// and the reason codes they get.
    unacked: Vec<(u16, u8)>,
    /// QoS 2: PUBREC sent, PUBREL not yet received.
    recd: HashSet<u16>,
    /// PUBRELs written, not yet read by the broker.
    rels: VecDeque<u16>,
    /// QoS 2: PUBREL received, PUBCOMP not yet sent.
    released: Vec<u16>,
    /// PINGREQs written and not yet answered.
    pings: u32,
    /// What the adapter handed on this connection, to know what is in flight at a drop.
    handed: VecDeque<Handed>,
    cursors: HashMap<usize, Position>,
    /// Per container, its messages not known to be acknowledged, in intake order.
    pending: Vec<VecDeque<usize>>,
    /// Per topic, the highest message index delivered for the first time.
    topic_last: HashMap<usize, usize>,
    log: Vec<String>,
    restarts: u64,
    /// What the spool files held when last read, and when that was (restarts, spooled, bytes).
    spooled: ((u64, u64, u64), SpoolView),
    seen: Coverage,
    /// MQTT 5: the topic the broker refuses for good, if any; whether it refuses for now at
    /// random.
    denied: Option<usize>,
    flaky: bool,
    /// What the current connection granted: its receive maximum and topic alias maximum.
    receive_max: u16,
    alias_max: u16,
    /// The aliases publishes set on the current connection: alias → topic.
    aliases: HashMap<u16, String>,
    /// Messages whose publish was refused for now (sent again: exempt from the order check).
    retried: HashSet<usize>,
    /// What sessions before the last restart counted: refused (not authorized), dropped.
    refused_before: (u64, u64),
}

/// How often the interesting paths were taken, over all schedules: a guard against a
/// simulation that quietly stopped reaching them.
#[derive(Default, Debug, Clone, Copy)]
struct Coverage {
    gave_up: u64,
    restarts: u64,
    spooled: u64,
    refused: u64,
    repeats: u64,
    pings: u64,
    pubrels: u64,
    /// MQTT 5: publishes refused for good, and for now.
    denied: u64,
    retried: u64,
    aliases_set: u64,
    aliases_used: u64,
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

fn config(rng: &mut Rng) -> MqttConfig {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("MQTT_BROKER".into(), "mqtt://127.0.0.1:1883".into());
    let mut cfg = Config::from_env(&env)
        .ok()
        .and_then(|c| c.mqtt)
        .unwrap_or_else(|| panic!("the default mqtt config is valid"));
    cfg.base_topic = "model".into();
    cfg.status_topic = STATUS.into();
    cfg.qos = if rng.chance(50) { 1 } else { 2 };
    cfg.batch = rng.chance(60);
    cfg.batch_max = 1 + rng.below(6) as usize;
    cfg.batch_interval = Duration::from_millis(50 + rng.below(1500));
    cfg.spool_max_bytes = 64 << 20;
    cfg.keepalive = Duration::from_secs(5 + rng.below(26));
    if rng.chance(50) {
        cfg.version = MqttVersion::V5;
        cfg.message_expiry = rng.chance(50).then_some(60);
    }
    cfg
}

fn spool_dir(seed: u64) -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("cld-model-{}-{seed}", std::process::id()))
}

impl World {
    fn new(seed: u64) -> Result<World, String> {
        let mut rng = Rng::new(seed);
        let cfg = config(&mut rng);
        let dir = spool_dir(seed);
        let _ = fs::remove_dir_all(&dir);
        let now = Instant::now();
        let mem_msgs = 2 + rng.below(30) as usize;
        let window = 1 + rng.below(8) as usize;
        let session = open_session(&cfg, &dir, now, mem_msgs, window)?;
        let origins = (0..CONTAINERS)
            .map(|i| {
                Arc::new(Origin::new(
                    Arc::from(format!("c{i}")),
                    format!("svc{i}"),
                    LabelValue::from_label("1"),
                    format!("svc{i}"),
                    None,
                    Arc::from("host"),
                ))
            })
            .collect();
        Ok(World {
            rng,
            now,
            cfg,
            dir,
            mem_msgs,
            window,
            session,
            origins,
            msgs: Vec::new(),
            next_ts: 1,
            link: Link::Down,
            stalled: false,
            queue: VecDeque::new(),
            socket: VecDeque::new(),
            unacked: Vec::new(),
            recd: HashSet::new(),
            rels: VecDeque::new(),
            released: Vec::new(),
            pings: 0,
            handed: VecDeque::new(),
            cursors: HashMap::new(),
            pending: vec![VecDeque::new(); CONTAINERS],
            topic_last: HashMap::new(),
            log: Vec::new(),
            restarts: 0,
            spooled: ((u64::MAX, 0, 0), SpoolView::default()),
            seen: Coverage::default(),
            denied: None,
            flaky: false,
            receive_max: u16::MAX,
            alias_max: 0,
            aliases: HashMap::new(),
            retried: HashSet::new(),
            refused_before: (0, 0),
        }
        .with_broker())
    }

    /// An MQTT 5 world's broker may refuse one topic for good, and publishes for now.
    fn with_broker(mut self) -> World {
        if self.cfg.version == MqttVersion::V5 {
            if self.rng.chance(30) {
                self.denied = Some(self.rng.below(2 * CONTAINERS as u64) as usize);
            }
            self.flaky = self.rng.chance(30);
        }
        self
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.log.len() < 4000 {
            self.log.push(what());
        }
    }

    // ---- the agent's side ----

    fn intake(&mut self) {
        if !self.session.accepting(self.now) {
            return;
        }
        for _ in 0..1 + self.rng.below(4) {
            let container = self.rng.below(CONTAINERS as u64) as usize;
            let error = self.rng.chance(30);
            let idx = self.msgs.len();
            let pos = Position {
                ts_ns: self.next_ts,
                seen: 1,
            };
            self.next_ts += 1;
            let origin = self.origins[container].clone();
            let level = if error { Level::Error } else { Level::Info };
            let msg = Arc::new(LogMessage::new(Draft {
                text: &format!("m{idx}"),
                ts_ns: pos.ts_ns,
                level,
                kind: SourceKind::Container,
                origin: origin.clone(),
                is_stderr: error,
                truncated: false,
                position: Some(pos),
                id: crate::message::Id::Line(pos),
            }));
            self.pending[container].push_back(idx);
            self.msgs.push(Msg {
                topic: container * 2 + usize::from(error),
                container,
                pos,
                acked: false,
                deliveries: 0,
                allowed_dups: 0,
            });
            self.session.intake(msg, self.now);
        }
        let last = self.msgs.len() - 1;
        self.note(|| format!("intake to m{last}"));
    }

    fn advance(&mut self) {
        let ms = match self.rng.below(20) {
            0 => 2000 + self.rng.below(10_000),
            1..=3 => 300 + self.rng.below(1500),
            _ => self.rng.below(200),
        };
        self.now += Duration::from_millis(ms);
        self.session.tick(self.now);
        self.note(|| format!("tick +{ms} ms"));
    }

    /// Takes the session's actions, as the adapter does.
    fn pump(&mut self) -> Result<(), String> {
        while let Some(action) = self.session.poll() {
            match action {
                Action::Publish(p) => {
                    if self.link != Link::Up || self.rng.chance(3) {
                        self.note(|| "refused".into());
                        self.seen.refused += 1;
                        self.session.refused(p.token);
                    } else {
                        self.hand(p)?;
                    }
                }
                Action::PubRel(pkid) => {
                    check!(self.recd.contains(&pkid), "PUBREL {pkid} without a PUBREC");
                    self.seen.pubrels += 1;
                    self.rels.push_back(pkid);
                }
                Action::Ping => {
                    check!(self.pings == 0, "a second PINGREQ before the PINGRESP");
                    if self.link == Link::Up {
                        self.seen.pings += 1;
                        self.pings += 1;
                    }
                }
                Action::Progress(c, pos) => self.progress(&c, pos)?,
                Action::Reconnect => {
                    self.note(|| "session gave the connection up".into());
                    self.seen.gave_up += 1;
                    self.drop_link(false);
                }
            }
        }
        Ok(())
    }

    /// The adapter takes a publish to write on the current connection.
    fn hand(&mut self, p: Publish) -> Result<(), String> {
        check!(
            !self.handed.iter().any(|h| h.pkid == p.pkid && !h.acked),
            "packet id {} handed out while in flight",
            p.pkid
        );
        let owed = self
            .handed
            .iter()
            .filter(|h| !h.acked && !h.waiting)
            .count();
        check!(
            owed < usize::from(self.receive_max),
            "{} publishes unacknowledged, over the receive maximum {}",
            owed + 1,
            self.receive_max
        );
        self.check_v5(&p)?;
        let msgs = if &*p.topic == STATUS {
            Vec::new()
        } else {
            message_indices(&p.payload)
        };
        if let Some(h) = self.handed.iter_mut().find(|h| h.waiting && h.msgs == msgs) {
            // Sent again after a refusal for now, in its place.
            h.waiting = false;
            h.pkid = p.pkid;
        } else {
            self.handed.push_back(Handed {
                msgs: msgs.clone(),
                pkid: p.pkid,
                acked: false,
                waiting: false,
            });
        }
        self.queue.push_back((p, msgs));
        Ok(())
    }

    /// MQTT 5: properties on every publish; an alias only as the connection allows, and used
    /// only once set on this connection, for the topic it was set for.
    fn check_v5(&mut self, p: &Publish) -> Result<(), String> {
        let v5 = self.cfg.version == MqttVersion::V5;
        check!(
            p.props.is_some() == v5,
            "properties at v5 only: {:?}",
            p.props
        );
        match p.alias {
            Alias::None => {}
            Alias::Set(id) => {
                check!(
                    id >= 1 && id <= self.alias_max,
                    "alias {id} set, the connection allows {}",
                    self.alias_max
                );
                self.seen.aliases_set += 1;
                self.aliases.insert(id, p.topic.to_string());
            }
            Alias::Use(id) => {
                check!(
                    self.aliases.get(&id).map(String::as_str) == Some(&*p.topic),
                    "alias {id} used for {} on a connection where it is {:?}",
                    p.topic,
                    self.aliases.get(&id)
                );
                self.seen.aliases_used += 1;
            }
        }
        Ok(())
    }

    fn progress(&mut self, c: &str, pos: Position) -> Result<(), String> {
        let container: usize = c
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("progress for an unknown container {c}"))?;
        if let Some(old) = self.cursors.get(&container) {
            check!(*old <= pos, "cursor of {c} moved back");
        }
        self.cursors.insert(container, pos);
        let pending = &mut self.pending[container];
        while pending.front().is_some_and(|&i| self.msgs[i].acked) {
            pending.pop_front();
        }
        let open: Vec<usize> = pending
            .iter()
            .copied()
            .take_while(|&i| self.msgs[i].pos <= pos)
            .filter(|&i| !self.msgs[i].acked)
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        let key = (
            self.restarts,
            self.session.counters().spooled,
            self.session.spool_bytes(),
        );
        if self.spooled.0 != key {
            self.spooled.0 = key;
            self.spooled.1.refresh(&self.dir);
        }
        let spooled = &self.spooled.1.msgs;
        for i in open {
            check!(
                spooled.contains(&i),
                "cursor {pos:?} of {c} passes m{i}, neither acknowledged nor spooled"
            );
        }
        Ok(())
    }

    /// The agent stops (flush, a little time for acks, spool the rest) and starts again on the
    /// same spool.
    fn restart(&mut self) -> Result<(), String> {
        self.note(|| "agent restart".into());
        self.seen.restarts += 1;
        self.seen.spooled += self.session.counters().spooled;
        self.session.flush(self.now);
        for _ in 0..self.rng.below(6) {
            self.pump()?;
            self.wire_step();
        }
        let _offline = self.session.stop(self.now);
        self.pump()?;
        self.drop_link(true);
        self.restarts += 1;
        let c = self.session.counters();
        self.refused_before.0 += c.refused[not_authorized()];
        self.refused_before.1 += c.dropped;
        self.session = open_session(&self.cfg, &self.dir, self.now, self.mem_msgs, self.window)?;
        Ok(())
    }

    // ---- the wire and the broker ----

    /// One thing happens on the wire: a request is written, the broker reads one, it
    /// acknowledges one, or it answers a ping.
    fn wire_step(&mut self) {
        if self.link != Link::Up {
            return;
        }
        match self.rng.below(4) {
            0 => self.write(),
            1 => self.receive(),
            2 => self.ack(),
            _ => self.pong(),
        }
    }

    fn write(&mut self) {
        let Some((p, msgs)) = self.queue.pop_front() else {
            return;
        };
        self.socket.push_back((p.pkid, msgs));
    }

    /// The broker answers a ping, unless it stalls.
    fn pong(&mut self) {
        if self.stalled || self.pings == 0 {
            return;
        }
        self.pings -= 1;
        self.session.ping_resp(self.now);
    }

    fn receive(&mut self) {
        if let Some(pkid) = self.rels.pop_front() {
            if self.recd.remove(&pkid) {
                self.released.push(pkid);
            }
        }
        let Some((pkid, msgs)) = self.socket.pop_front() else {
            return;
        };
        // MQTT 5: a topic refused for good, or a publish refused for now; neither is delivered.
        let code = match msgs.first() {
            Some(&i) if Some(self.msgs[i].topic) == self.denied => 0x87,
            Some(_) if self.flaky && self.rng.chance(10) => 0x97,
            _ => 0,
        };
        self.unacked.push((pkid, code));
        if code != 0 {
            if code == 0x97 {
                self.retried.extend(msgs.iter().copied());
            }
            return;
        }
        for i in msgs {
            self.msgs[i].deliveries += 1;
            if self.msgs[i].deliveries > 1 {
                self.seen.repeats += 1;
            }
            if self.msgs[i].deliveries == 1 {
                let t = self.msgs[i].topic;
                let last = self.topic_last.entry(t).or_insert(0);
                if i < *last && !self.retried.contains(&i) {
                    self.log.push(format!("ORDER m{i} after m{last}"));
                }
                *last = (*last).max(i);
            }
        }
    }

    fn ack(&mut self) {
        let waiting = self.unacked.len() + self.released.len();
        if self.stalled || waiting == 0 {
            return;
        }
        // Out of order: any of the received ones.
        let k = self.rng.below(waiting as u64) as usize;
        let pkid = if k < self.unacked.len() {
            let (pkid, code) = self.unacked.swap_remove(k);
            if code != 0 {
                self.refuse(pkid, code);
                return;
            }
            if self.cfg.qos == 2
                && self
                    .handed
                    .iter()
                    .any(|h| h.pkid == pkid && !h.acked && !h.msgs.is_empty())
            {
                // QoS 2: PUBREC now, PUBCOMP once the PUBREL came.
                self.recd.insert(pkid);
                self.session.pubrec(pkid, self.now);
                return;
            }
            pkid
        } else {
            self.released.swap_remove(k - self.unacked.len())
        };
        if let Some(h) = self.handed.iter_mut().find(|h| h.pkid == pkid && !h.acked) {
            h.acked = true;
            for &i in &h.msgs {
                self.msgs[i].acked = true;
            }
        }
        while self.handed.front().is_some_and(|h| h.acked) {
            self.handed.pop_front();
        }
        self.session.acked(pkid, Ack::Ok, self.now);
    }

    /// The broker answers a publish with a failure (a PUBACK, or at QoS 2 a PUBREC): for good,
    /// its messages are settled undelivered; for now, the session sends it again.
    fn refuse(&mut self, pkid: u16, code: u8) {
        if let Some(h) = self.handed.iter_mut().find(|h| h.pkid == pkid && !h.acked) {
            if code == 0x87 {
                h.acked = true;
                for &i in &h.msgs {
                    self.msgs[i].acked = true;
                }
            } else {
                h.waiting = true;
                h.pkid = 0;
            }
        }
        while self.handed.front().is_some_and(|h| h.acked) {
            self.handed.pop_front();
        }
        if code == 0x87 {
            self.seen.denied += 1;
        } else {
            self.seen.retried += 1;
        }
        self.note(|| format!("publish {pkid} refused: 0x{code:02x}"));
        self.session.acked(pkid, Ack::of(code), self.now);
    }

    /// The connection ends. Everything handed out and not settled (from the first publish not
    /// acknowledged on) was in flight: each of its messages may arrive once more.
    fn drop_link(&mut self, quiet: bool) {
        for h in &self.handed {
            for &i in &h.msgs {
                self.msgs[i].allowed_dups += 1;
            }
        }
        self.handed.clear();
        self.queue.clear();
        self.socket.clear();
        self.unacked.clear();
        self.recd.clear();
        self.rels.clear();
        self.released.clear();
        self.pings = 0;
        self.aliases.clear();
        if self.link == Link::Up && !quiet {
            self.session.disconnected("dropped".into(), self.now);
        }
        self.link = Link::Down;
    }

    fn connect(&mut self) {
        if self.link == Link::Up {
            return;
        }
        if self.rng.chance(25) {
            self.note(|| "connect refused".into());
            self.session.disconnected("refused".into(), self.now);
            return;
        }
        let granted = self.grant();
        self.note(|| format!("connected: {granted:?}"));
        self.up(granted);
    }

    /// What the broker grants a new connection: at MQTT 5 maybe a receive maximum below our
    /// window, topic aliases, a maximum packet size that splits batches (each message still
    /// fits whole).
    fn grant(&mut self) -> Granted {
        let mut granted = Granted::v311(self.rng.chance(30));
        if self.cfg.version != MqttVersion::V5 {
            return granted;
        }
        if self.rng.chance(30) {
            granted.receive_max = 1 + self.rng.below(4) as u16;
        }
        if self.rng.chance(60) {
            granted.topic_alias_max = self.rng.below(4) as u16;
        }
        if self.rng.chance(20) {
            granted.max_packet = 1200 + self.rng.below(1500) as usize;
        }
        granted
    }

    /// The connection is up with what `granted` says.
    fn up(&mut self, granted: Granted) {
        self.link = Link::Up;
        self.receive_max = granted.receive_max;
        self.alias_max = granted.topic_alias_max;
        self.aliases.clear();
        self.session.connected(granted, self.now);
    }

    fn step(&mut self) -> Result<(), String> {
        match self.rng.below(100) {
            0..=24 => self.intake(),
            25..=39 => self.advance(),
            40..=41 => {
                self.note(|| "drop".into());
                self.drop_link(false);
            }
            42..=46 => self.connect(),
            47 => {
                self.stalled = !self.stalled;
                let s = self.stalled;
                self.note(|| format!("stalled {s}"));
            }
            48 if self.rng.chance(20) => self.restart()?,
            _ => self.wire_step(),
        }
        self.pump()
    }

    /// The broker is stable now: everything must arrive.
    fn settle(&mut self) -> Result<(), String> {
        self.stalled = false;
        for round in 0..20_000 {
            if self.link != Link::Up {
                let granted = self.grant();
                self.up(granted);
            }
            self.now += Duration::from_millis(100);
            self.session.tick(self.now);
            self.pump()?;
            while !self.queue.is_empty()
                || !self.socket.is_empty()
                || !self.unacked.is_empty()
                || !self.rels.is_empty()
                || !self.released.is_empty()
                || self.pings > 0
            {
                self.write();
                self.receive();
                self.ack();
                self.pong();
                self.pump()?;
            }
            let denied = self.denied;
            let done = |m: &Msg| m.deliveries > 0 || (Some(m.topic) == denied && m.acked);
            if self.msgs.iter().all(done) && round > 30 {
                return Ok(());
            }
        }
        Err("the stable broker did not get everything".into())
    }

    fn verify(&self) -> Result<(), String> {
        if let Some(o) = self.log.iter().find(|l| l.starts_with("ORDER")) {
            return Err(format!("first deliveries out of order: {o}"));
        }
        let mut denied = 0;
        for (i, m) in self.msgs.iter().enumerate() {
            if Some(m.topic) == self.denied {
                check!(m.deliveries == 0, "m{i} of a denied topic delivered");
                denied += 1;
                continue;
            }
            check!(m.deliveries > 0, "m{i} never delivered");
            check!(
                m.deliveries <= 1 + m.allowed_dups,
                "m{i} delivered {} times, in flight at {} drops",
                m.deliveries,
                m.allowed_dups
            );
        }
        for c in 0..CONTAINERS {
            let last = self
                .msgs
                .iter()
                .filter(|m| m.container == c)
                .map(|m| m.pos)
                .max();
            check!(
                self.cursors.get(&c).copied() == last,
                "cursor of c{c} is {:?}, its last message {last:?}",
                self.cursors.get(&c)
            );
        }
        let c = self.session.counters();
        let refused = self.refused_before.0 + c.refused[not_authorized()];
        check!(
            refused == denied,
            "{refused} counted refused, {denied} of the denied topic"
        );
        let dropped = self.refused_before.1 + c.dropped;
        check!(
            dropped == denied,
            "{dropped} messages dropped, {denied} refused"
        );
        Ok(())
    }
}

/// The place of "not authorized" in the refusal counters.
fn not_authorized() -> usize {
    REFUSALS
        .iter()
        .position(|r| r.0 == 0x87)
        .unwrap_or(REFUSALS.len())
}

fn open_session(
    cfg: &MqttConfig,
    dir: &Path,
    now: Instant,
    mem_msgs: usize,
    window: usize,
) -> Result<Session, String> {
    let spool = Spool::open(dir, cfg.spool_max_bytes).map_err(|e| format!("spool: {e}"))?;
    let mut s = Session::new(cfg, spool, "host", "online".into(), "offline".into(), now);
    s.set_bounds(mem_msgs, window);
    Ok(s)
}

/// The indices of the messages in a payload (a message's text is `m{index}`).
fn message_indices(payload: &[u8]) -> Vec<usize> {
    const KEY: &[u8] = b"\"message\":\"m";
    let mut out = Vec::new();
    let mut i = 0;
    while i + KEY.len() <= payload.len() {
        if payload[i] == b'"' && payload[i + 1] == b'm' && payload[i..].starts_with(KEY) {
            i += KEY.len();
            let mut n = 0usize;
            while i < payload.len() && payload[i].is_ascii_digit() {
                n = n * 10 + usize::from(payload[i] - b'0');
                i += 1;
            }
            out.push(n);
        } else {
            i += 1;
        }
    }
    out
}

/// What the spool's segment files held, read as they grow (segments are append-only; a name
/// may come back for a new file, so files are known by inode).
#[derive(Default)]
struct SpoolView {
    /// Bytes of each segment file read so far.
    read: HashMap<u64, usize>,
    msgs: HashSet<usize>,
}

impl SpoolView {
    fn refresh(&mut self, dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "seg") {
                continue;
            }
            let Ok(ino) = fs::metadata(&path).map(|m| m.ino()) else {
                continue;
            };
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            let from = self.read.get(&ino).copied().unwrap_or(0).min(bytes.len());
            let (records, used) = spool::decode(&bytes[from..]);
            for (_, json, _) in records {
                self.msgs.extend(message_indices(json.as_bytes()));
            }
            self.read.insert(ino, from + used);
        }
    }
}

fn run(seed: u64) -> Result<Coverage, String> {
    let mut w = World::new(seed)?;
    let steps = 100 + w.rng.below(400);
    let result = (|| {
        for _ in 0..steps {
            w.step()?;
        }
        w.settle()?;
        w.verify()
    })();
    w.seen.spooled += w.session.counters().spooled;
    let _ = fs::remove_dir_all(&w.dir);
    result.map(|()| w.seen).map_err(|e| {
        let tail: Vec<&String> = w.log.iter().rev().take(40).collect();
        format!("{e}\nlast events, newest first: {tail:#?}")
    })
}

#[test]
fn seeded_schedules_deliver_everything_in_order() {
    let only: Option<u64> = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let n: u64 = std::env::var("MODEL_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SCHEDULES);
    let seeds: Vec<u64> = match only {
        Some(s) => vec![s],
        None => (1..=n).collect(),
    };
    let mut total = Coverage::default();
    for seed in seeds {
        match run(seed) {
            Ok(c) => {
                total.gave_up += c.gave_up;
                total.restarts += c.restarts;
                total.spooled += c.spooled;
                total.refused += c.refused;
                total.repeats += c.repeats;
                total.pings += c.pings;
                total.pubrels += c.pubrels;
                total.denied += c.denied;
                total.retried += c.retried;
                total.aliases_set += c.aliases_set;
                total.aliases_used += c.aliases_used;
            }
            Err(e) => panic!("model schedule failed: rerun with MODEL_SEED={seed}\n{e}"),
        }
    }
    eprintln!("model coverage: {total:?}");
    if only.is_none() && n >= 100 {
        let t = total;
        assert!(
            t.gave_up > 0
                && t.restarts > 0
                && t.spooled > 0
                && t.refused > 0
                && t.repeats > 0
                && t.pings > 0
                && t.pubrels > 0
                && t.denied > 0
                && t.retried > 0
                && t.aliases_set > 0
                && t.aliases_used > 0,
            "the schedules no longer reach every path: {t:?}"
        );
    }
}
