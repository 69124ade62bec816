//! The log message of docs/CONTRACT.md §4: one value per container line, lifecycle event or agent warning.
//! A message keeps only what is its own (id, text, time, level); the JSON is rendered from it
//! and its shared [`Origin`] whenever a backend writes it, always to the same bytes, so files,
//! MQTT and the API carry identical objects while the memory ring holds a fraction of them.
//!
//! This module owns the JSON shape. It never decides levels (see `monitor::level`) and never
//! does I/O.

use std::cell::Cell;
use std::sync::Arc;

/// Severity of a message, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// Parses a level name as users write it (`warning`, `ERR`, `fatal`, …).
    pub fn parse_name(s: &str) -> Option<Level> {
        let s = s.trim();
        let eq = |w: &str| s.eq_ignore_ascii_case(w);
        if [
            "error",
            "err",
            "fatal",
            "crit",
            "critical",
            "panic",
            "alert",
            "emerg",
            "emergency",
            "e",
            "f",
        ]
        .iter()
        .any(|w| eq(w))
        {
            Some(Level::Error)
        } else if ["warn", "warning", "w"].iter().any(|w| eq(w)) {
            Some(Level::Warn)
        } else if ["info", "information", "notice", "i", "n"]
            .iter()
            .any(|w| eq(w))
        {
            Some(Level::Info)
        } else if ["debug", "trace", "verbose", "d", "v", "t"]
            .iter()
            .any(|w| eq(w))
        {
            Some(Level::Debug)
        } else {
            None
        }
    }

    /// True when `self` is `floor` or worse (`level=warn` in a query keeps warn and error).
    pub fn at_least(self, floor: Level) -> bool {
        self <= floor
    }
}

/// What produced a message (`source.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Container,
    System,
    Manager,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Container => "container",
            SourceKind::System => "system",
            SourceKind::Manager => "manager",
        }
    }
}

/// A label value that is a number when the label is numeric (`appId`, `serviceId`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelValue {
    Number(String),
    Text(String),
}

impl LabelValue {
    pub fn from_label(s: &str) -> LabelValue {
        let numeric = !s.is_empty()
            && s.len() <= 15
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        if numeric {
            LabelValue::Number(s.to_string())
        } else {
            LabelValue::Text(s.to_string())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            LabelValue::Number(s) | LabelValue::Text(s) => s,
        }
    }

    fn write_json(&self, out: &mut String) {
        match self {
            LabelValue::Number(n) => out.push_str(n),
            LabelValue::Text(t) => push_json_str(out, t),
        }
    }
}

/// Who a message is about: one per followed container, shared by all its messages.
#[derive(Debug, PartialEq, Eq)]
pub struct Origin {
    /// Full container id; empty for the agent itself.
    pub container_id: Arc<str>,
    /// Container name without the leading `/`.
    pub name: String,
    pub app_id: LabelValue,
    pub service_name: String,
    pub service_id: Option<LabelValue>,
    pub host: Arc<str>,
    /// Everything of a message's JSON after `"source":{"type":…"`, without the closing brace
    /// (`,"name":…},"appId":…,"serviceId":…,"serviceName":…,"containerId":…,"isStdErr":…,
    /// "isSystem":…,"host":…`), rendered once for the container's lines: stdout's tail, then
    /// stderr's, in one allocation.
    tails: Box<str>,
    /// Where stderr's tail starts in `tails`.
    stderr_at: usize,
    /// The tails of `system` messages (stdout, stderr), rendered when one is first written:
    /// most origins never have one.
    system: [SystemTail; 2],
}

/// A `system` message's tail once rendered. It is made from the origin's other fields, so it
/// takes no part in comparing two origins.
#[derive(Debug, Default)]
struct SystemTail(std::sync::OnceLock<Box<str>>);

impl PartialEq for SystemTail {
    fn eq(&self, _: &SystemTail) -> bool {
        true
    }
}

impl Eq for SystemTail {}

/// `,"name":…},"appId":…,"serviceId":…,"serviceName":…,"containerId":…`: the part of a tail
/// before the flags.
fn ident_json(
    container_id: &str,
    name: &str,
    app_id: &LabelValue,
    service_name: &str,
    service_id: Option<&LabelValue>,
) -> String {
    let mut ident = String::from(",\"name\":");
    push_json_str(&mut ident, name);
    ident.push_str("},\"appId\":");
    app_id.write_json(&mut ident);
    ident.push_str(",\"serviceId\":");
    match service_id {
        Some(v) => v.write_json(&mut ident),
        None => ident.push_str("null"),
    }
    ident.push_str(",\"serviceName\":");
    push_json_str(&mut ident, service_name);
    ident.push_str(",\"containerId\":");
    push_json_str(&mut ident, container_id);
    ident
}

/// Appends the tail after `ident` ([`ident_json`]) for a message on stderr or not, `system`
/// or not.
fn push_tail(out: &mut String, ident: &str, host: &str, is_stderr: bool, is_system: bool) {
    out.push_str(ident);
    out.push_str(match is_stderr {
        false => ",\"isStdErr\":false",
        true => ",\"isStdErr\":true",
    });
    out.push_str(match is_system {
        false => ",\"isSystem\":false",
        true => ",\"isSystem\":true",
    });
    out.push_str(",\"host\":");
    push_json_str(out, host);
}

impl Origin {
    pub fn new(
        container_id: Arc<str>,
        name: String,
        app_id: LabelValue,
        service_name: String,
        service_id: Option<LabelValue>,
        host: Arc<str>,
    ) -> Origin {
        let ident = ident_json(
            &container_id,
            &name,
            &app_id,
            &service_name,
            service_id.as_ref(),
        );
        let mut tails = String::new();
        push_tail(&mut tails, &ident, &host, false, false);
        let stderr_at = tails.len();
        push_tail(&mut tails, &ident, &host, true, false);
        Origin {
            container_id,
            name,
            app_id,
            service_name,
            service_id,
            host,
            tails: tails.into_boxed_str(),
            stderr_at,
            system: Default::default(),
        }
    }

    /// The tail of a message's JSON (see `tails`) on stderr or not, `system` or not.
    #[inline(always)]
    fn tail(&self, is_stderr: bool, is_system: bool) -> &[u8] {
        if is_system {
            return self.system_tail(is_stderr).as_bytes();
        }
        let (tails, at) = (self.tails.as_bytes(), self.stderr_at);
        match is_stderr {
            false => tails.get(..at),
            true => tails.get(at..),
        }
        .unwrap_or_default()
    }

    /// A `system` message's tail, rendered the first time.
    #[cold]
    fn system_tail(&self, is_stderr: bool) -> &str {
        self.system[usize::from(is_stderr)].0.get_or_init(|| {
            let ident = ident_json(
                &self.container_id,
                &self.name,
                &self.app_id,
                &self.service_name,
                self.service_id.as_ref(),
            );
            let mut t = String::new();
            push_tail(&mut t, &ident, &self.host, is_stderr, true);
            t.into_boxed_str()
        })
    }

    /// The origin of the agent's own (`manager`) messages.
    pub fn manager(host: Arc<str>) -> Origin {
        Origin::new(
            Arc::from(""),
            "container-logd".into(),
            LabelValue::Text("manager".into()),
            "container-logd".into(),
            None,
            host,
        )
    }

    pub fn short_id(&self) -> &str {
        &self.container_id[..self.container_id.len().min(12)]
    }
}

/// A place in a container's log: the engine timestamp and how many lines carried it so far.
/// Ordered, so the lowest position over all backends is where a restart resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub ts_ns: i64,
    /// Lines with exactly `ts_ns` up to and including this one.
    pub seen: u32,
}

/// One log message, immutable once made; backends share it through an `Arc`.
///
/// Its own bytes, its head, are the part of its JSON that is its own and that no other field
/// holds: `{"id":"<id>","message":<text literal>`. Rendering writes `,"timestamp":<ms>` after
/// them, the milliseconds copied from the digits of the id when the
/// id is a line's of that time (most messages), and then what every message of a container
/// repeats (names, labels, ids, host), which lives once, in its [`Origin`], and the level: a
/// few copies. The memory ring holds thousands of messages on a Pi. The head is kept in the
/// message itself up to [`INLINE`] bytes (a line of 100 bytes), so that an ordinary line is one
/// allocation, its `Arc`; longer ones are boxed.
pub struct LogMessage {
    /// The head when it fits: `inline[..head_len]`; see [`LogMessage::head`].
    inline: [u8; INLINE],
    head_len: u8,
    /// Where the id holds the 13 digits of the time's milliseconds; 0 when it does not. The id
    /// ends at the head's first `"` after [`OPEN`]: no id holds one.
    ms_at: u8,
    pub level: Level,
    pub kind: SourceKind,
    /// The stream, whether the line was cut, whether the text needed escaping (so that its
    /// literal differs from the text) and where the position is, in one byte: see [`flag`].
    flags: u8,
    /// What most messages do not have: a head longer than [`INLINE`] bytes, a position other
    /// than the first line of the message's own time. One word when it is not there.
    extra: Option<Box<Extra>>,
    pub ts_ns: i64,
    pub origin: Arc<Origin>,
}

/// The bits of [`LogMessage`]'s `flags`.
mod flag {
    pub const STDERR: u8 = 1;
    pub const TRUNCATED: u8 = 1 << 1;
    pub const ESCAPED: u8 = 1 << 2;
    /// Where the position is: none, the first line of the message's time (`ts_ns`, seen 1:
    /// nearly every line), or in the message's [`super::Extra`].
    pub const POSITION: u8 = 3 << 5;
    pub const POSITION_FIRST: u8 = 1 << 5;
    pub const POSITION_KEPT: u8 = 2 << 5;
}

/// The parts of a message that most messages do not have (see [`LogMessage`]'s `extra`).
#[derive(Default)]
struct Extra {
    /// The head when it is longer than [`INLINE`] bytes.
    head: Option<Box<[u8]>>,
    /// The position when it is not the first line of the message's time.
    position: Position,
}

impl Extra {
    fn at(position: Position) -> Box<Extra> {
        Box::new(Extra {
            head: None,
            position,
        })
    }
}

/// The most bytes of a message's head kept in the message itself: a line of 100 plain bytes
/// and its id. With the other fields the `Arc` of a message asks for 200 bytes, a 208-byte
/// block of glibc's (224 when the flags and the position took 17 bytes more, 288 when the head
/// also held the timestamp).
pub const INLINE: usize = 155;

/// The longest id a message keeps: ids are a container's short id and numbers, or an event's
/// action (sanitised), so never near it; a longer given id is cut.
pub const MAX_ID: usize = 255;

impl std::fmt::Debug for LogMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMessage")
            .field("head", &String::from_utf8_lossy(self.head()))
            .field("ts_ns", &self.ts_ns)
            .field("level", &self.level)
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .field("is_stderr", &self.is_stderr())
            .field("truncated", &self.truncated())
            .field("position", &self.position())
            .finish()
    }
}

/// A message's head being written: in place while it fits, else in a vector.
struct HeadWriter<'a> {
    inline: &'a mut [u8; INLINE],
    /// The bytes written in place; [`SPILLED`] once they go to `spill`, so that no piece fits
    /// in place any more.
    len: usize,
    spill: Option<Vec<u8>>,
}

/// [`HeadWriter`]'s `len` once the head is written in its vector.
const SPILLED: usize = INLINE + 1;

impl<'a> HeadWriter<'a> {
    /// A writer in place, or in a vector from the start when the head's length as far as it
    /// is known (`exact`) does not fit.
    #[inline(always)]
    fn new(inline: &'a mut [u8; INLINE], exact: usize) -> HeadWriter<'a> {
        let spill = (exact > INLINE).then(|| Vec::with_capacity(exact));
        HeadWriter {
            inline,
            len: if spill.is_some() { SPILLED } else { 0 },
            spill,
        }
    }

    /// The bytes written so far.
    fn len(&self) -> usize {
        match &self.spill {
            Some(v) => v.len(),
            None => self.len,
        }
    }

    /// [`PutBytes::put`] of a piece that does not fit in place.
    #[inline(never)]
    fn put_spilled(&mut self, piece: &[u8]) {
        match &mut self.spill {
            Some(v) => v.extend_from_slice(piece),
            None => {
                // Escapes made the head longer than the room; rare, so the box is cut to size
                // once the head is done.
                let mut v = Vec::with_capacity(2 * (self.len + piece.len()));
                v.extend_from_slice(self.inline.get(..self.len).unwrap_or_default());
                v.extend_from_slice(piece);
                self.spill = Some(v);
                self.len = SPILLED;
            }
        }
    }
}

/// The flags of a draft (stream, cut and position), and its position when the flags cannot
/// say it ([`LogMessage::position`] reads them).
#[inline(always)]
fn draft_flags(d: &Draft) -> (u8, Option<Position>) {
    let (position, kept) = match d.position {
        None => (0, None),
        Some(p) if p.ts_ns == d.ts_ns && p.seen == 1 => (flag::POSITION_FIRST, None),
        Some(p) => (flag::POSITION_KEPT, Some(p)),
    };
    let flags = position
        | if d.is_stderr { flag::STDERR } else { 0 }
        | if d.truncated { flag::TRUNCATED } else { 0 };
    (flags, kept)
}

/// Where [`put_json_str`] and the message's pieces are written as bytes.
trait PutBytes {
    fn put(&mut self, piece: &[u8]);
}

impl PutBytes for HeadWriter<'_> {
    #[inline(always)]
    fn put(&mut self, piece: &[u8]) {
        let end = self.len + piece.len();
        match self.inline.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(piece);
                self.len = end;
            }
            None => self.put_spilled(piece),
        }
    }
}

impl PutBytes for Vec<u8> {
    fn put(&mut self, piece: &[u8]) {
        self.extend_from_slice(piece);
    }
}

/// A message's JSON up to its id.
const OPEN: &str = "{\"id\":\"";
/// Between the id and the text, with the literal's opening quote.
const TO_MESSAGE: &str = "\",\"message\":\"";
/// Between the text's literal and the timestamp's digits.
const TO_TIMESTAMP: &str = ",\"timestamp\":";
/// The digits of the milliseconds of a time from 2001-09-09 to 2286 (`ms_at`).
const MS_DIGITS: usize = 13;
/// The most room a message's render reserves beyond what it writes (it reserves for the
/// longest timestamp and end rather than work out which it writes): a sink sized for whole
/// messages and this much more is never grown, which would double it.
pub const RENDER_SLACK: usize = DECIMAL_ROOM - 1 + END_TRUNCATED.len() - END.len();
/// The first time in nanoseconds whose milliseconds have [`MS_DIGITS`] digits.
const MS_DIGITS_FROM: i64 = 1_000_000_000_000_000_000;
/// The end of a message's JSON.
const END: &str = "}";
/// The end of a truncated message's JSON.
const END_TRUNCATED: &str = ",\"truncated\":true}";

/// A message's text: text, or a container line's bytes, which may hold invalid UTF-8.
#[derive(Clone, Copy)]
enum Text<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
}

impl Text<'_> {
    /// The bytes given, before any replacement.
    fn len(self) -> usize {
        match self {
            Text::Str(s) => s.len(),
            Text::Bytes(b) => b.len(),
        }
    }
}

/// The stable id of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    /// A container line's: its origin's short id and this position (see [`line_id`]), written
    /// straight into the message.
    Line(Position),
    /// Any other ([`event_id`], [`manager_id`]); what would need escaping is replaced by `_`.
    Given(String),
}

/// What a message is made from; [`LogMessage::new`] adds the id and the JSON. The text is
/// borrowed: the message keeps its JSON literal, never the text itself.
pub struct Draft<'a> {
    pub text: &'a str,
    pub ts_ns: i64,
    pub level: Level,
    pub kind: SourceKind,
    pub origin: Arc<Origin>,
    pub is_stderr: bool,
    pub truncated: bool,
    pub position: Option<Position>,
    pub id: Id,
}

/// The id of a container line: the same engine line always gets the same id.
pub fn line_id(origin: &Origin, pos: Position) -> String {
    let mut id = origin.short_id().to_string();
    id.extend(LineTail::of(pos).bytes().iter().map(|&b| char::from(b)));
    id
}

/// `-{ts_ns}-{index}`, the numbers of a container line's id (`{short id}-{ts_ns}-{index}`),
/// written as ASCII bytes.
struct LineTail {
    /// The tail is `buf[start..]`.
    buf: [u8; 2 * DECIMAL_ROOM + 2],
    start: u8,
}

impl LineTail {
    #[inline(always)]
    fn of(pos: Position) -> LineTail {
        let mut buf = [b'-'; 2 * DECIMAL_ROOM + 2];
        // Most lines are the first of their time: a one-digit index needs no conversion.
        let index = match pos.seen.saturating_sub(1) {
            i @ 0..=9 => {
                buf[buf.len() - 1] = b'0' + i as u8;
                buf.len() - 1
            }
            i => write_decimal(&mut buf, i64::from(i)),
        };
        let ts = write_time(&mut buf[..index - 1], pos.ts_ns);
        LineTail {
            buf,
            start: (ts - 1) as u8,
        }
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(usize::from(self.start)..).unwrap_or_default()
    }
}

/// Writes a container line's id: its origin's short id and the line's tail.
#[inline(always)]
fn put_line_id(out: &mut impl PutBytes, short_id: &[u8], tail: &LineTail) {
    // A container's short id is 12 digits: copied as a constant length, a store.
    match <&[u8; 12]>::try_from(short_id) {
        Ok(twelve) => out.put(twelve),
        Err(_) => out.put(short_id),
    }
    out.put(tail.bytes());
}

/// Writes a given id with what would need escaping replaced: ids are made from hex ids,
/// numbers and sanitised actions, and anything else is replaced so that the id never needs
/// escaping. Its first [`MAX_ID`] bytes at most, whole characters.
fn put_given_id(out: &mut impl PutBytes, id: &str) {
    let mut utf8 = [0u8; 4];
    for c in id[..floor_char_boundary(id, MAX_ID)].chars() {
        let c = if c.is_control() || c == '"' || c == '\\' {
            '_'
        } else {
            c
        };
        out.put(c.encode_utf8(&mut utf8).as_bytes());
    }
}

/// The largest character boundary of `s` at or before `i` (`s.len()` past its end).
pub fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The position a container line's id encodes (the inverse of [`line_id`]; engine timestamps
/// are never before 1970, so the `-` before the time is never a sign).
pub fn line_position(id: &str) -> Option<Position> {
    let mut parts = id.rsplitn(3, '-');
    let index: u32 = parts.next()?.parse().ok()?;
    let ts_ns: i64 = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(Position {
        ts_ns,
        seen: index.checked_add(1)?,
    })
}

/// The id of a lifecycle event of a container.
pub fn event_id(origin: &Origin, time_nano: i64, action: &str) -> String {
    let mut id = format!("{}-{}-", origin.short_id(), time_nano);
    id.extend(
        action
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    id
}

/// The id of the agent's own message number `seq` of this run.
pub fn manager_id(ts_ns: i64, seq: u64) -> String {
    format!("manager-{ts_ns}-{seq}")
}

/// Where a message's JSON goes: a `String` (the API) or bytes (files, MQTT payloads). The
/// pieces are always UTF-8; a `String` checks them, bytes take them as they are.
pub trait JsonSink {
    fn put(&mut self, piece: &[u8]);
    fn reserve_for(&mut self, additional: usize);
}

impl JsonSink for String {
    fn put(&mut self, piece: &[u8]) {
        self.push_str(&String::from_utf8_lossy(piece));
    }

    fn reserve_for(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl JsonSink for Vec<u8> {
    fn put(&mut self, piece: &[u8]) {
        self.extend_from_slice(piece);
    }

    fn reserve_for(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl LogMessage {
    pub fn new(mut d: Draft) -> LogMessage {
        let (text, id) = (
            d.text,
            std::mem::replace(&mut d.id, Id::Line(Position::default())),
        );
        let mut m = LogMessage::blank(d);
        m.write_head(Text::Str(text), &id);
        m
    }

    /// [`LogMessage::new`] in its `Arc`, as backends share it: written where it stays rather
    /// than moved there, its head being most of it.
    pub fn shared(d: Draft) -> Arc<LogMessage> {
        let text = Text::Str(d.text);
        LogMessage::shared_text(d, text).0
    }

    /// [`LogMessage::shared`] for a container line given as its bytes, which need not be UTF-8:
    /// its text is the bytes with invalid sequences replaced (U+FFFD), as
    /// `String::from_utf8_lossy` replaces them, and the answer says whether any was. The
    /// draft's `text` is not read. The scan for bytes to escape also finds the plain ASCII
    /// bytes, which need no other check; only the bytes from the first other one on are
    /// checked as UTF-8.
    pub fn shared_line(d: Draft, bytes: &[u8]) -> (Arc<LogMessage>, bool) {
        LogMessage::shared_text(d, Text::Bytes(bytes))
    }

    #[inline(always)]
    fn shared_text(mut d: Draft, text: Text) -> (Arc<LogMessage>, bool) {
        let id = std::mem::replace(&mut d.id, Id::Line(Position::default()));
        let mut arc = match spares::take() {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(m) => {
                    m.reset(d);
                    spare
                }
                None => Arc::new(LogMessage::blank(d)),
            },
            None => Arc::new(LogMessage::blank(d)),
        };
        // A new `Arc` is never shared, so this always writes.
        let replaced = Arc::get_mut(&mut arc).is_some_and(|m| m.write_head(text, &id));
        (arc, replaced)
    }

    /// The message with an empty head.
    #[inline(always)]
    fn blank(d: Draft) -> LogMessage {
        let (flags, kept) = draft_flags(&d);
        LogMessage {
            inline: [0; INLINE],
            head_len: 0,
            ms_at: 0,
            level: d.level,
            kind: d.kind,
            flags,
            extra: kept.map(Extra::at),
            ts_ns: d.ts_ns,
            origin: d.origin,
        }
    }

    /// [`LogMessage::blank`] written over a message: its head's bytes are left, since
    /// [`LogMessage::write_head`] writes them before anything reads them.
    #[inline(always)]
    fn reset(&mut self, d: Draft) {
        let (flags, kept) = draft_flags(&d);
        self.head_len = 0;
        self.ms_at = 0;
        self.level = d.level;
        self.kind = d.kind;
        self.flags = flags;
        self.extra = kept.map(Extra::at);
        self.ts_ns = d.ts_ns;
        self.origin = d.origin;
    }

    /// Writes the head: `{"id":"<id>","message":<text literal>`; true when invalid UTF-8 of
    /// the text was replaced.
    #[inline(always)]
    fn write_head(&mut self, text: Text, id: &Id) -> bool {
        let tail = match id {
            Id::Line(pos) => Some(LineTail::of(*pos)),
            Id::Given(_) => None,
        };
        let short_id = self.origin.short_id().as_bytes();
        let id_len = match (&tail, id) {
            (Some(t), _) => short_id.len() + t.bytes().len(),
            (None, Id::Given(id)) => id.len().min(MAX_ID),
            (None, Id::Line(_)) => 0,
        };
        // Exact unless the text needs escaping (or a given id has a replaced character).
        let exact = OPEN.len() + id_len + TO_MESSAGE.len() + text.len() + 1;
        let mut w = HeadWriter::new(&mut self.inline, exact);
        w.put(OPEN.as_bytes());
        match (&tail, id) {
            (Some(t), _) => put_line_id(&mut w, short_id, t),
            (None, Id::Given(id)) => put_given_id(&mut w, id),
            (None, Id::Line(_)) => {}
        }
        // The literal's quotes are the last byte of one piece and a piece of their own.
        w.put(TO_MESSAGE.as_bytes());
        let lit_start = w.len() - 1;
        let (text_len, replaced) = match text {
            Text::Str(s) => {
                put_escaped(&mut w, s.as_bytes());
                (s.len(), false)
            }
            Text::Bytes(b) => put_line_escaped(&mut w, b),
        };
        w.put(b"\"");
        // A line's id holds its time's digits after the short id and `-`; the milliseconds
        // are those digits but the last six.
        let ms_in_id =
            matches!(id, Id::Line(p) if p.ts_ns == self.ts_ns && p.ts_ns >= MS_DIGITS_FROM);
        self.ms_at = if ms_in_id {
            (OPEN.len() + short_id.len() + 1) as u8
        } else {
            0
        };
        if w.len() - lit_start != text_len + 2 {
            self.flags |= flag::ESCAPED;
        }
        // In place, the head is at most `INLINE` bytes and the id at most `MAX_ID`.
        self.head_len = w.len as u8;
        if let Some(v) = w.spill {
            self.extra.get_or_insert_with(Box::default).head = Some(v.into_boxed_slice());
        }
        replaced
    }

    /// The message's head, `{"id":"<id>","message":<text literal>`: made by [`LogMessage::new`] only,
    /// from UTF-8 text, ASCII escapes and digits, so always UTF-8; kept as bytes because
    /// backends write bytes, and checked only where it is read as text.
    fn head(&self) -> &[u8] {
        match self.extra.as_deref() {
            Some(Extra { head: Some(b), .. }) => b,
            _ => self
                .inline
                .get(..usize::from(self.head_len))
                .unwrap_or_default(),
        }
    }

    /// The digits of the milliseconds in the id, when it holds them; `head` is
    /// [`LogMessage::head`].
    #[inline(always)]
    fn ms_in_id<'a>(&self, head: &'a [u8]) -> Option<&'a [u8; MS_DIGITS]> {
        let at = usize::from(self.ms_at);
        if at == 0 {
            return None;
        }
        head.get(at..).and_then(<[u8]>::first_chunk)
    }

    /// The milliseconds written, for a message whose id does not hold them (the agent's own
    /// messages and events, times before 2001).
    #[cold]
    #[inline(never)]
    fn ms_written(&self) -> Digits {
        Digits::of(self.timestamp_ms())
    }

    /// Where this line sits in its container's log; `None` for system and manager messages.
    #[inline]
    pub fn position(&self) -> Option<Position> {
        if self.flags & flag::POSITION == flag::POSITION_FIRST {
            return Some(Position {
                ts_ns: self.ts_ns,
                seen: 1,
            });
        }
        self.other_position()
    }

    /// [`LogMessage::position`] when it is not the first line of the message's time.
    #[cold]
    #[inline(never)]
    fn other_position(&self) -> Option<Position> {
        match self.flags & flag::POSITION {
            flag::POSITION_KEPT => self.extra.as_deref().map(|e| e.position),
            _ => None,
        }
    }

    /// The line came from stderr.
    pub fn is_stderr(&self) -> bool {
        self.flags & flag::STDERR != 0
    }

    /// The line was cut at `MAX_LINE_BYTES`.
    pub fn truncated(&self) -> bool {
        self.flags & flag::TRUNCATED != 0
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.ts_ns.div_euclid(1_000_000)
    }

    /// The stable id (checked as text here: the head is kept as bytes).
    pub fn id(&self) -> &str {
        let id = self.head().get(OPEN.len()..OPEN.len() + self.id_len());
        std::str::from_utf8(id.unwrap_or_default()).unwrap_or_default()
    }

    /// The id's length: up to the head's first `"` after [`OPEN`], since an id never holds
    /// one (a given id's are replaced).
    fn id_len(&self) -> usize {
        let rest = self.head().get(OPEN.len()..).unwrap_or_default();
        memchr::memchr(b'"', rest).unwrap_or(rest.len())
    }

    /// The text's JSON string literal, quotes included: the head's end.
    fn text_literal(&self) -> &[u8] {
        let start = OPEN.len() + self.id_len() + TO_MESSAGE.len() - 1;
        self.head().get(start..).unwrap_or(b"\"\"")
    }

    /// The text of the line (checked as text here: the head is kept as bytes).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let literal = self.text_literal();
        if self.flags & flag::ESCAPED == 0 {
            let inner = literal.get(1..literal.len().saturating_sub(1));
            return String::from_utf8_lossy(inner.unwrap_or_default());
        }
        // Only messages with quotes, backslashes or control characters pay for this.
        std::borrow::Cow::Owned(serde_json::from_slice::<String>(literal).unwrap_or_default())
    }

    /// Appends the message as one JSON object (docs/CONTRACT.md §4), no trailing newline. The
    /// same message always gives the same bytes.
    pub fn write_json(&self, out: &mut impl JsonSink) {
        self.write_json_then(out, END.as_bytes(), END_TRUNCATED.as_bytes());
    }

    /// [`LogMessage::write_json`] and a newline, as a line of a log file.
    pub fn write_json_line(&self, out: &mut impl JsonSink) {
        self.write_json_then(out, b"}\n", b",\"truncated\":true}\n");
    }

    /// The message's JSON ending with `end`, or `end_truncated` for a truncated one; each a
    /// constant, so that the copy is a store.
    #[inline(always)]
    fn write_json_then(&self, out: &mut impl JsonSink, end: &[u8], end_truncated: &[u8]) {
        let [head, level, tail] = self.pieces();
        let fixed = TO_TIMESTAMP.len() + DECIMAL_ROOM + end_truncated.len();
        out.reserve_for(fixed + head.len() + level.len() + tail.len());
        out.put(head);
        out.put(TO_TIMESTAMP.as_bytes());
        // Mostly the id's thirteen digits: copied as a constant length, a store.
        match self.ms_in_id(head) {
            Some(digits) => out.put(digits),
            None => out.put(self.ms_written().bytes()),
        }
        out.put(level);
        out.put(tail);
        if self.truncated() {
            out.put(end_truncated);
        } else {
            out.put(end);
        }
    }

    /// The length of [`LogMessage::write_json`]'s output, without making it.
    #[inline(always)]
    pub fn json_len(&self) -> usize {
        let end = if self.truncated() { END_TRUNCATED } else { END };
        let [head, level, tail] = self.pieces();
        // The id holds the digits whenever `ms_at` says so (`write_head`).
        let ms = match self.ms_at {
            0 => self.ms_written().bytes().len(),
            _ => MS_DIGITS,
        };
        let fixed = TO_TIMESTAMP.len() + ms + end.len();
        head.len() + level.len() + tail.len() + fixed
    }

    /// The JSON's pieces that vary: the head, the level and the origin's tail, which with the
    /// timestamp and the end make the JSON (see [`LogMessage::write_json_then`];
    /// [`LogMessage::new`], [`Origin::new`] and [`level_and_kind`] make the pieces).
    #[inline(always)]
    fn pieces(&self) -> [&[u8]; 3] {
        [
            self.head(),
            level_and_kind(self.level, self.kind).as_bytes(),
            self.origin
                .tail(self.is_stderr(), self.kind == SourceKind::System),
        ]
    }

    /// The message as one JSON object, no trailing newline.
    pub fn json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }
}

/// Messages the memory ring let go of, kept by the thread that pushed the ones replacing them,
/// to be written over by the next messages that thread makes ([`LogMessage::shared`]).
///
/// Once the ring is full (any agent that has run a while), each line a reader hands over
/// replaces the oldest message, so a reader frees a batch of messages and allocates the next
/// batch, in one thread. A message (about 280 bytes) is larger than the chunks glibc caches per
/// thread, so each would cost a trip through the shared heap both ways; written over, it costs
/// neither. A thread keeps at most [`spares::MAX`] (a reader's batch) and all threads together
/// at most [`spares::ALL_MAX`]; the rest are freed as before. So the memory kept aside is
/// bounded whatever the number of containers (144 KiB), and a reader that goes quiet holds at
/// most one batch.
pub mod spares {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::LogMessage;

    /// The most messages a thread keeps: a reader's batch.
    pub const MAX: usize = 64;

    /// The most messages all threads keep together.
    pub const ALL_MAX: usize = 512;

    /// Messages kept by all threads.
    static KEPT: AtomicUsize = AtomicUsize::new(0);

    /// A thread's spares; those left when the thread ends leave the count with them.
    struct Kept(Vec<Arc<LogMessage>>);

    impl Drop for Kept {
        fn drop(&mut self) {
            KEPT.fetch_sub(self.0.len(), Ordering::Relaxed);
        }
    }

    thread_local! {
        static SPARES: RefCell<Kept> = const { RefCell::new(Kept(Vec::new())) };
    }

    /// Keeps a message the ring let go of when nothing else holds it and there is room; else
    /// drops it.
    #[inline]
    pub fn keep(mut msg: Arc<LogMessage>) {
        if Arc::get_mut(&mut msg).is_none() {
            return;
        }
        SPARES.with(|s| {
            let list = &mut s.borrow_mut().0;
            if list.len() >= MAX {
                return;
            }
            if KEPT.fetch_add(1, Ordering::Relaxed) >= ALL_MAX {
                KEPT.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            if list.capacity() == 0 {
                list.reserve_exact(MAX);
            }
            list.push(msg);
        });
    }

    /// A kept message, held by nothing else, to write over.
    #[inline]
    pub(super) fn take() -> Option<Arc<LogMessage>> {
        let msg = SPARES.with(|s| s.borrow_mut().0.pop())?;
        KEPT.fetch_sub(1, Ordering::Relaxed);
        Some(msg)
    }

    /// How many this thread keeps.
    pub fn held() -> usize {
        SPARES.with(|s| s.borrow().0.len())
    }

    /// How many all threads keep.
    pub fn held_in_all() -> usize {
        KEPT.load(Ordering::Relaxed)
    }
}

/// Two decimal digits of every number below 100.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// `,"level":…,"source":{"type":…"` of a message's JSON.
fn level_and_kind(level: Level, kind: SourceKind) -> &'static str {
    macro_rules! pieces {
        ($($l:ident $ls:literal),*) => {
            match (level, kind) {
                $(
                    (Level::$l, SourceKind::Container) =>
                        concat!(",\"level\":\"", $ls, "\",\"source\":{\"type\":\"container\""),
                    (Level::$l, SourceKind::System) =>
                        concat!(",\"level\":\"", $ls, "\",\"source\":{\"type\":\"system\""),
                    (Level::$l, SourceKind::Manager) =>
                        concat!(",\"level\":\"", $ls, "\",\"source\":{\"type\":\"manager\""),
                )*
            }
        };
    }
    pieces!(Error "error", Warn "warn", Info "info", Debug "debug")
}

/// A number in decimal, made without `fmt`: ids and timestamps are written for every line.
#[derive(Debug, Clone, Copy)]
struct Digits {
    /// The digits (and sign) are `buf[start..]`.
    buf: [u8; DECIMAL_ROOM],
    start: u8,
}

impl Digits {
    fn of(n: i64) -> Digits {
        let mut buf = [b'0'; DECIMAL_ROOM];
        let start = write_decimal(&mut buf, n) as u8;
        Digits { buf, start }
    }

    /// The digits (and sign), ASCII.
    fn bytes(&self) -> &[u8] {
        self.buf.get(usize::from(self.start)..).unwrap_or_default()
    }
}

/// Writes `n` in decimal at the end of `buf` ([`DECIMAL_ROOM`] bytes hold any `n`) and
/// returns where it starts: eight digits at a time while more are left, then pairs.
fn write_decimal(buf: &mut [u8], n: i64) -> usize {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    while v >= 100_000_000 {
        buf[i - 8..i].copy_from_slice(&eight_digits(v % 100_000_000).to_le_bytes());
        v /= 100_000_000;
        i -= 8;
    }
    // The leading digits, below 10^8; often few (an index, the top of a time).
    let mut v = v as u32;
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    i
}

thread_local! {
    /// The digits above the last eight of the newest time [`write_time`] wrote on this thread,
    /// right-aligned, with that number and their count: lines come in bursts, and a time in
    /// nanoseconds changes those digits only every 0.1 s.
    static TIME_TOP: Cell<(u64, [u8; TOP_ROOM], u8)> =
        const { Cell::new((u64::MAX, [0; TOP_ROOM], 0)) };
}

/// The digits of `i64::MAX / 10^8`.
const TOP_ROOM: usize = 11;

/// [`write_decimal`] for a time in nanoseconds: the digits above the last eight are copied from
/// the previous time's when they are the same.
fn write_time(buf: &mut [u8], ns: i64) -> usize {
    let Ok(v) = u64::try_from(ns) else {
        return write_decimal(buf, ns);
    };
    if v < 100_000_000 {
        return write_decimal(buf, ns);
    }
    let (top, low) = (v / 100_000_000, v % 100_000_000);
    let i = buf.len() - 8;
    buf[i..].copy_from_slice(&eight_digits(low).to_le_bytes());
    let (cached, mut digits, mut len) = TIME_TOP.get();
    if cached != top {
        // `top` is below 10^11: it fits in i64 and in TOP_ROOM digits.
        let start = write_decimal(&mut digits, top as i64);
        len = (TOP_ROOM - start) as u8;
        TIME_TOP.set((top, digits, len));
    }
    let len = usize::from(len);
    match buf.get_mut(i - TOP_ROOM..i) {
        // Every time since 2001 has TOP_ROOM digits there: a copy of constant length, a store.
        Some(dst) if len == TOP_ROOM => dst.copy_from_slice(&digits),
        _ => buf[i - len..i].copy_from_slice(&digits[TOP_ROOM - len..]),
    }
    i - len
}

/// The bytes any i64 takes in decimal, its sign included.
const DECIMAL_ROOM: usize = 20;

/// `v` (below 10^8) as exactly eight ASCII digits, the first in the lowest byte: the halves,
/// quarters and digits are split in the lanes of one word, with multiplications in place of
/// divisions.
fn eight_digits(v: u64) -> u64 {
    // 4-digit halves in 32-bit lanes, the high half first (lowest).
    let halves = (v / 10_000) | (v % 10_000) << 32;
    // x / 100 is (x * 10486) >> 20 for x below 10^4; pairs in 16-bit lanes.
    let high = ((halves * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let pairs = high | (halves - high * 100) << 16;
    // x / 10 is (x * 103) >> 10 for x below 100; digits in bytes.
    let tens = ((pairs * 103) >> 10) & 0x000f_000f_000f_000f;
    let digits = tens | (pairs - tens * 10) << 8;
    digits | 0x3030_3030_3030_3030
}

/// The bytes a JSON string literal must escape (and DEL, which we escape too).
fn needs_escape(b: u8) -> bool {
    (b < 0x20) | (b == b'"') | (b == b'\\') | (b == 0x7f)
}

/// Whether a scan stops at `b`: it [`needs_escape`], or, in a scan for `ASCII` bytes, is none.
#[inline(always)]
fn stops<const ASCII: bool>(b: u8) -> bool {
    needs_escape(b) | (ASCII & (b >= 0x80))
}

/// Bytes tested at once by [`plain_prefix`].
const CHUNK: usize = 32;

/// Whether any byte of `chunk` [`stops`] the scan: every byte tested, the answers or-ed, no
/// branch, so that the compiler makes it a few vector instructions.
#[inline(always)]
fn chunk_stops<const ASCII: bool>(chunk: &[u8; CHUNK]) -> bool {
    chunk.iter().fold(false, |any, &b| any | stops::<ASCII>(b))
}

/// Appends `s` as a JSON string literal. Runs of plain bytes are copied at once, 32 bytes
/// checked at a time; escaped are `"`, `\`, control characters and DEL (`\n`, `\r`,
/// `\t` by name, the others as `\u00XX`).
pub fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    escape_runs::<false>(s.as_bytes(), |run, escaped| {
        // `s` is split before and after escaped bytes, which are ASCII: always at a character
        // boundary.
        out.push_str(s.get(run).unwrap_or_default());
        if let Some(b) = escaped {
            let (escape, len) = escape_of(b);
            out.extend(escape[..len].iter().map(|&b| char::from(b)));
        }
    });
    out.push('"');
}

/// [`push_json_str`] into bytes, as a message's head is written.
pub fn push_json_bytes(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    put_json_str(out, s);
}

/// Writes `s` as a JSON string literal, as [`push_json_str`] does.
#[inline(always)]
fn put_json_str(out: &mut impl PutBytes, s: &str) {
    out.put(b"\"");
    put_escaped(out, s.as_bytes());
    out.put(b"\"");
}

/// Writes `text`, UTF-8, escaped as in a JSON string literal, without the quotes.
#[inline(always)]
fn put_escaped(out: &mut impl PutBytes, text: &[u8]) {
    escape_runs::<false>(text, |run, escaped| {
        out.put(text.get(run).unwrap_or_default());
        if let Some(b) = escaped {
            let (escape, len) = escape_of(b);
            out.put(&escape[..len]);
        }
    });
}

/// Writes a line's bytes as [`put_escaped`] writes text, with invalid UTF-8 replaced (U+FFFD,
/// as `String::from_utf8_lossy` replaces it), and returns the length of that text and whether
/// anything was replaced. Plain ASCII is copied as the scan for escapes finds it; from the
/// first byte that is not ASCII, the rest is checked (and replaced) as a whole, as an ASCII
/// byte always ends what came before it.
#[inline(always)]
fn put_line_escaped(out: &mut impl PutBytes, bytes: &[u8]) -> (usize, bool) {
    let ascii = escape_runs::<true>(bytes, |run, escaped| {
        out.put(bytes.get(run).unwrap_or_default());
        if let Some(b) = escaped {
            let (escape, len) = escape_of(b);
            out.put(&escape[..len]);
        }
    });
    let rest = bytes.get(ascii..).unwrap_or_default();
    let (len, replaced) = if rest.is_empty() {
        (bytes.len(), false)
    } else {
        let text = String::from_utf8_lossy(rest);
        put_escaped(out, text.as_bytes());
        (
            ascii + text.len(),
            matches!(text, std::borrow::Cow::Owned(_)),
        )
    };
    (len, replaced)
}

/// Splits `bytes` into runs that need no escaping, each given to `put` with the byte after it
/// that needs escaping (`None` after the last run). With `ASCII`, it stops at the first byte
/// that is not ASCII, after the run before it; returns where it stopped.
#[inline(always)]
fn escape_runs<const ASCII: bool>(
    bytes: &[u8],
    mut put: impl FnMut(std::ops::Range<usize>, Option<u8>),
) -> usize {
    let mut start = 0;
    let mut i = plain_prefix::<ASCII>(bytes);
    while let Some(&b) = bytes.get(i) {
        if ASCII && !b.is_ascii() {
            put(start..i, None);
            return i;
        }
        put(start..i, Some(b));
        start = i + 1;
        i = start + plain_prefix::<ASCII>(bytes.get(start..).unwrap_or_default());
    }
    put(start..bytes.len(), None);
    bytes.len()
}

/// How many bytes at the start of `bytes` need no escaping: a chunk at a time (the last one
/// ending with `bytes`, over bytes already checked), then one by one in the chunk (or the
/// rest) that has one.
fn plain_prefix<const ASCII: bool>(bytes: &[u8]) -> usize {
    let mut plain = 0;
    for chunk in bytes.chunks_exact(CHUNK) {
        match <&[u8; CHUNK]>::try_from(chunk) {
            Ok(chunk) if !chunk_stops::<ASCII>(chunk) => plain += CHUNK,
            _ => break,
        }
    }
    let last = bytes.len().saturating_sub(CHUNK);
    if plain > last && plain < bytes.len() {
        if let Ok(chunk) = <&[u8; CHUNK]>::try_from(&bytes[last..]) {
            if !chunk_stops::<ASCII>(chunk) {
                return bytes.len();
            }
        }
    }
    plain
        + bytes[plain..]
            .iter()
            .position(|&b| stops::<ASCII>(b))
            .unwrap_or(bytes.len() - plain)
}

/// The escape of one byte that [`needs_escape`]: its first `len` bytes.
fn escape_of(b: u8) -> ([u8; 6], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => (*b"\\\"    ", 2),
        b'\\' => (*b"\\\\    ", 2),
        b'\n' => (*b"\\n    ", 2),
        b'\r' => (*b"\\r    ", 2),
        b'\t' => (*b"\\t    ", 2),
        _ => (
            [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            6,
        ),
    }
}

/// Messages of the shape `make bench` measures, for the cost harnesses of the backends: one
/// container, 99-byte lines `bench line {i:08} 0123…`, a microsecond apart.
#[cfg(test)]
pub fn bench_lines(n: usize) -> Vec<Arc<LogMessage>> {
    let origin = bench_origin();
    (0..n).map(|i| bench_line(&origin, i)).collect()
}

/// The container of [`bench_lines`].
#[cfg(test)]
pub fn bench_origin() -> Arc<Origin> {
    Arc::new(Origin::new(
        Arc::from("0123456789abcdef".repeat(4)),
        "bench-lines".into(),
        LabelValue::from_label("bench-lines"),
        "bench-lines".into(),
        None,
        Arc::from("host"),
    ))
}

/// How many lines a cost harness runs: `CLD_COST_LINES` (30,000 to measure), else 3,000.
#[cfg(test)]
pub fn cost_lines() -> usize {
    std::env::var("CLD_COST_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// Line `i` of [`bench_lines`], from `origin`.
#[cfg(test)]
pub fn bench_line(origin: &Arc<Origin>, i: usize) -> Arc<LogMessage> {
    let text = format!("bench line {i:08} {}", "0123456789".repeat(9));
    test_line(
        origin,
        &text[..99],
        1_700_000_000_000_000_000 + i as i64 * 1000,
    )
}

/// A container line of `origin` saying `text`, stamped `ts_ns`, the first at that time.
#[cfg(test)]
pub fn test_line(origin: &Arc<Origin>, text: &str, ts_ns: i64) -> Arc<LogMessage> {
    let pos = Position { ts_ns, seen: 1 };
    LogMessage::shared(Draft {
        text,
        ts_ns,
        level: Level::Info,
        kind: SourceKind::Container,
        origin: origin.clone(),
        is_stderr: false,
        truncated: false,
        position: Some(pos),
        id: Id::Line(pos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Arc<Origin> {
        Arc::new(Origin::new(
            Arc::from("3f2a9c1b7d0e55aa"),
            "web".into(),
            LabelValue::from_label("1001"),
            "web".into(),
            Some(LabelValue::from_label("1001")),
            Arc::from("pi-kitchen"),
        ))
    }

    fn line(text: &str) -> LogMessage {
        LogMessage::new(line_draft(text))
    }

    fn line_draft(text: &str) -> Draft<'_> {
        Draft {
            text,
            ts_ns: 1_696_195_200_000_123_456,
            level: Level::Info,
            kind: SourceKind::Container,
            origin: origin(),
            is_stderr: false,
            truncated: false,
            position: Some(Position {
                ts_ns: 1_696_195_200_000_123_456,
                seen: 1,
            }),
            id: Id::Line(Position {
                ts_ns: 1_696_195_200_000_123_456,
                seen: 1,
            }),
        }
    }

    /// The flags and the position a message keeps in one byte or beside it give back what it
    /// was made from, made anew or written over a spare, with its head in place or boxed.
    #[test]
    fn a_message_gives_back_its_stream_cut_and_position() {
        let ts = 1_696_195_200_000_123_456;
        let positions = [
            None,
            Some(Position { ts_ns: ts, seen: 1 }),
            Some(Position { ts_ns: ts, seen: 2 }),
            Some(Position {
                ts_ns: ts + 5,
                seen: 1,
            }),
        ];
        let levels = [Level::Error, Level::Warn, Level::Info, Level::Debug];
        let kinds = [
            SourceKind::Container,
            SourceKind::System,
            SourceKind::Manager,
        ];
        let mut spare = Arc::new(LogMessage::new(line_draft("")));
        for (i, (position, kind)) in positions
            .iter()
            .flat_map(|p| kinds.iter().map(move |k| (p, k)))
            .enumerate()
        {
            for text in ["short", &"long ".repeat(40)] {
                let draft = || Draft {
                    kind: *kind,
                    level: levels[i % 4],
                    is_stderr: i % 2 == 1,
                    truncated: i % 3 == 1,
                    position: *position,
                    ..line_draft(text)
                };
                let made = LogMessage::new(draft());
                let rewritten = Arc::get_mut(&mut spare).expect("not shared");
                rewritten.reset(draft());
                rewritten.write_head(Text::Str(text), &draft().id);
                for m in [&made, &*spare] {
                    assert_eq!(m.kind, *kind);
                    assert_eq!(m.level, levels[i % 4]);
                    assert_eq!(m.is_stderr(), i % 2 == 1);
                    assert_eq!(m.truncated(), i % 3 == 1);
                    assert_eq!(m.position(), *position);
                    assert_eq!(m.text(), text);
                }
                assert_eq!(made.json(), spare.json());
            }
        }
    }

    #[test]
    fn a_line_id_gives_back_its_position() {
        let cases = [(0, 1), (1_696_195_200_000_123_456, 1), (5, 3)];
        for (ts_ns, seen) in cases {
            let pos = Position { ts_ns, seen };
            let id = line_id(&origin(), pos);
            assert_eq!(line_position(&id), Some(pos), "{id}");
        }
        assert_eq!(
            line_position("abc-17-2"),
            Some(Position { ts_ns: 17, seen: 3 })
        );
        for bad in [
            "",
            "abc",
            "3f2a-x-0",
            "3f2a-5-",
            "-5",
            "3f2a-5-4294967295",
            "manager-1-x",
        ] {
            assert_eq!(line_position(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_has_the_spec_shape() {
        let m = line("Server started on port 8080");
        assert_eq!(
            m.json(),
            r#"{"id":"3f2a9c1b7d0e-1696195200000123456-0","message":"Server started on port 8080","timestamp":1696195200000,"level":"info","source":{"type":"container","name":"web"},"appId":1001,"serviceId":1001,"serviceName":"web","containerId":"3f2a9c1b7d0e55aa","isStdErr":false,"isSystem":false,"host":"pi-kitchen"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&m.json()).expect("valid json");
        assert_eq!(v["appId"], 1001);
    }

    #[test]
    fn system_stderr_and_truncated_flags() {
        let o = origin();
        let m = LogMessage::new(Draft {
            text: "exited with code 137",
            ts_ns: 5_000_000,
            level: Level::Warn,
            kind: SourceKind::System,
            origin: o.clone(),
            is_stderr: true,
            truncated: true,
            position: None,
            id: Id::Given(event_id(&o, 5_000_000, "die\"x")),
        });
        assert_eq!(
            m.json(),
            r#"{"id":"3f2a9c1b7d0e-5000000-die_x","message":"exited with code 137","timestamp":5,"level":"warn","source":{"type":"system","name":"web"},"appId":1001,"serviceId":1001,"serviceName":"web","containerId":"3f2a9c1b7d0e55aa","isStdErr":true,"isSystem":true,"host":"pi-kitchen","truncated":true}"#
        );
        let mut twice = String::from("x");
        m.write_json(&mut twice);
        m.write_json(&mut twice);
        assert_eq!(
            twice,
            format!("x{0}{0}", m.json()),
            "appends, same bytes every time"
        );
        assert_eq!(m.json_len(), m.json().len());
        let quoted = LogMessage::new(Draft {
            id: Id::Given("a\"b\\c\nd".into()),
            ..line_draft("t")
        });
        assert_eq!(quoted.id(), "a_b_c_d", "an id never needs escaping");
        let v: serde_json::Value = serde_json::from_str(&quoted.json()).expect("valid json");
        assert_eq!(v["id"], "a_b_c_d");
    }

    #[test]
    fn escapes_round_trip() {
        let text = "quote \" back \\ nl \n tab \t bell \u{7} del \u{7f} é 😀";
        let m = line(text);
        let v: serde_json::Value = serde_json::from_str(&m.json()).expect("valid json");
        assert_eq!(v["message"], text);
        assert_eq!(m.text(), text);
        assert_eq!(line("plain").text(), "plain");
        assert_eq!(m.id(), "3f2a9c1b7d0e-1696195200000123456-0");
        assert_eq!(m.json_len(), m.json().len());
    }

    #[test]
    fn decimals() {
        let mut cases = vec![
            0,
            7,
            -7,
            9,
            10,
            99,
            100,
            -100,
            1_696_195_200_000,
            i64::MAX,
            i64::MIN,
        ];
        let mut p = 1i64;
        while let Some(next) = p.checked_mul(10) {
            cases.extend([p - 1, p, p + 1, -p]);
            p = next;
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.extend([x as i64, (x >> (x % 64)) as i64]);
        }
        // Times in a burst: the digits above the last eight repeat, then change.
        for base in [1_696_195_199_950_000_000i64, 99_999_999, 999_999_999_999] {
            cases.extend((0..400).map(|k| base + k * 997_331));
        }
        for n in cases {
            assert_eq!(Digits::of(n).bytes(), n.to_string().as_bytes());
            let pos = Position {
                ts_ns: n,
                seen: (n as u32).wrapping_add(1),
            };
            let want = format!("3f2a9c1b7d0e-{n}-{}", pos.seen.saturating_sub(1));
            assert_eq!(line_id(&origin(), pos), want);
        }
    }

    /// The escaping JSON parsers expect, byte for byte, for every ASCII byte at every offset
    /// of the eight-byte words.
    #[test]
    fn escapes_every_byte_in_every_place() {
        let simple = |s: &str| {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        out.push_str(&format!("\\u{:04x}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        };
        for b in 0u8..0x80 {
            for at in 0..17 {
                let mut text = "é".repeat(at / 2) + &"a".repeat(at % 2);
                text.push(char::from(b));
                text.push_str("tail ü");
                let mut out = String::new();
                push_json_str(&mut out, &text);
                assert_eq!(out, simple(&text), "byte {b:#x} at {at}");
                let mut bytes = Vec::new();
                push_json_bytes(&mut bytes, &text);
                assert_eq!(bytes, out.as_bytes(), "byte {b:#x} at {at}");
                let back: String = serde_json::from_str(&out).expect("valid JSON");
                assert_eq!(back, text);
            }
        }
    }

    /// A sink sized for the message's JSON (or line) and [`RENDER_SLACK`], as a batch's payload
    /// and a file's buffer are, is not grown by rendering it.
    fn fits_a_sized_sink(m: &LogMessage) {
        for line in [false, true] {
            let mut sized = Vec::with_capacity(m.json_len() + usize::from(line) + RENDER_SLACK);
            let room = sized.capacity();
            match line {
                false => m.write_json(&mut sized),
                true => m.write_json_line(&mut sized),
            }
            assert_eq!(sized.capacity(), room, "{m:?}");
        }
    }

    /// The JSON as `format!` and serde write it, for any time, id and flags: the pieces
    /// [`LogMessage::new`] writes once give the same bytes.
    #[test]
    fn json_is_the_same_for_any_time_and_id() {
        let o = origin();
        let times = [
            0,
            1,
            999_999,
            1_000_000,
            -1,
            -1_000_001,
            1_696_195_200_000_123_456,
            i64::MAX,
            i64::MIN,
        ];
        let ids = |ts_ns: i64| {
            [
                Id::Line(Position { ts_ns, seen: 1 }),
                Id::Line(Position {
                    ts_ns: ts_ns.wrapping_add(1),
                    seen: 12,
                }),
                Id::Line(Position { ts_ns, seen: 0 }),
                Id::Given(format!("given-{ts_ns}")),
            ]
        };
        for ts_ns in times {
            for id in ids(ts_ns) {
                for (truncated, is_stderr) in [(false, false), (true, true)] {
                    let text = "say \"hi\"\n";
                    let m = LogMessage::new(Draft {
                        id: id.clone(),
                        ts_ns,
                        truncated,
                        is_stderr,
                        ..line_draft(text)
                    });
                    let id_text = match &id {
                        Id::Line(pos) => line_id(&o, *pos),
                        Id::Given(g) => g.clone(),
                    };
                    let want = format!(
                        "{{\"id\":\"{id_text}\",\"message\":{},\"timestamp\":{},\"level\":\"info\",\"source\":{{\"type\":\"container\"{}{}}}",
                        serde_json::to_string(text).expect("a string"),
                        ts_ns.div_euclid(1_000_000),
                        std::str::from_utf8(o.tail(is_stderr, false)).expect("UTF-8"),
                        if truncated { ",\"truncated\":true" } else { "" },
                    );
                    assert_eq!(m.json(), want);
                    assert_eq!(m.json_len(), want.len());
                    assert_eq!(m.id(), id_text);
                    assert_eq!(m.text(), text);
                    let mut bytes = Vec::new();
                    m.write_json(&mut bytes);
                    assert_eq!(bytes, want.as_bytes());
                    fits_a_sized_sink(&m);
                }
            }
        }
    }

    /// The memory ring holds thousands of messages: a line of 100 bytes is one block of 208
    /// bytes of glibc's, the `Arc`'s counts included, and no box.
    #[test]
    fn a_line_of_100_bytes_is_one_208_byte_block() {
        let counts = 2 * std::mem::size_of::<usize>();
        let size = std::mem::size_of::<LogMessage>();
        assert!(size + counts <= 200, "{size}");
        let m = line(&"x".repeat(100));
        assert!(m.extra.is_none());
        assert_eq!(m.position().map(|p| p.seen), Some(1));
        assert_eq!(
            m.ms_in_id(m.head()).map(|d| &d[..]),
            Some(&b"1696195200000"[..])
        );
    }

    /// A given id longer than [`MAX_ID`] is cut at a character's end; the JSON stays whole.
    #[test]
    fn a_long_given_id_is_cut() {
        for id in ["x".repeat(300), "é".repeat(200)] {
            let m = LogMessage::new(Draft {
                id: Id::Given(id.clone()),
                ..line_draft("hi")
            });
            assert!(m.id().len() <= MAX_ID && m.id().len() > MAX_ID - 4);
            assert!(id.starts_with(m.id()));
            let v: serde_json::Value = serde_json::from_str(&m.json()).expect("JSON");
            assert_eq!(v["id"], m.id());
            assert_eq!(v["message"], "hi");
            assert_eq!(m.json_len(), m.json().len());
        }
    }

    /// Heads that fit in the message and heads that do not, and heads that stop fitting
    /// part way because of escapes, read and render alike.
    #[test]
    fn heads_in_place_and_boxed_are_the_same() {
        let o = origin();
        for len in (0..2 * INLINE).step_by(7).chain(100..130) {
            for fill in ["x", "\"", "é", "\u{1}"] {
                let text: String = "a".repeat(len / 2) + &fill.repeat(len - len / 2);
                let m = line(&text);
                let want = format!(
                    "{{\"id\":\"3f2a9c1b7d0e-1696195200000123456-0\",\"message\":{},\"timestamp\":1696195200000,\"level\":\"info\",\"source\":{{\"type\":\"container\"{}}}",
                    serde_json::to_string(&text).expect("a string"),
                    std::str::from_utf8(o.tail(false, false)).expect("UTF-8"),
                );
                assert_eq!(m.json(), want, "{len} {fill:?}");
                let mut bytes = Vec::new();
                m.write_json(&mut bytes);
                assert_eq!(bytes, want.as_bytes());
                assert_eq!(m.json_len(), want.len());
                assert_eq!(m.text(), text);
                assert_eq!(m.id(), "3f2a9c1b7d0e-1696195200000123456-0");
            }
        }
    }

    /// The lines' tails share one allocation and `system` tails are rendered when first asked
    /// for; each is the tail it names, the second time too, and comparing origins ignores
    /// which were rendered.
    #[test]
    fn tails_of_each_stream_and_kind() {
        let (o, fresh) = (origin(), origin());
        for _ in 0..2 {
            for is_stderr in [false, true] {
                for is_system in [false, true] {
                    let want = format!(
                        ",\"name\":\"web\"}},\"appId\":1001,\"serviceId\":1001,\"serviceName\":\"web\",\"containerId\":\"3f2a9c1b7d0e55aa\",\"isStdErr\":{is_stderr},\"isSystem\":{is_system},\"host\":\"pi-kitchen\""
                    );
                    assert_eq!(o.tail(is_stderr, is_system), want.as_bytes());
                }
            }
        }
        assert_eq!(o, fresh);
    }

    #[test]
    fn label_values() {
        assert_eq!(
            LabelValue::from_label("1001"),
            LabelValue::Number("1001".into())
        );
        assert_eq!(
            LabelValue::from_label("0123"),
            LabelValue::Text("0123".into())
        );
        assert_eq!(
            LabelValue::from_label("shop"),
            LabelValue::Text("shop".into())
        );
    }

    #[test]
    fn level_order() {
        assert!(Level::Error.at_least(Level::Warn));
        assert!(Level::Warn.at_least(Level::Warn));
        assert!(!Level::Info.at_least(Level::Warn));
        assert_eq!(Level::parse_name("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse_name("loud"), None);
    }

    /// A line given as bytes makes the message its text replaced would make: same JSON, same
    /// text, and the answer says whether anything was replaced.
    fn same_as_replaced(bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let want = LogMessage::shared(line_draft(&text));
        let (got, replaced) = LogMessage::shared_line(line_draft(""), bytes);
        assert_eq!(got.json(), want.json(), "{bytes:?}");
        assert_eq!(got.head(), want.head(), "{bytes:?}");
        assert_eq!(got.text(), text, "{bytes:?}");
        assert_eq!(got.flags, want.flags, "{bytes:?}");
        assert_eq!(replaced, std::str::from_utf8(bytes).is_err(), "{bytes:?}");
    }

    /// Every kind of byte and sequence, at every place around the 32-byte chunks, in lines
    /// kept in the message and in boxed ones.
    #[test]
    fn a_line_as_bytes_is_its_text_replaced() {
        let pieces: &[&[u8]] = &[
            b"\xff",
            b"\xc3",
            b"\xe2\x82",
            b"\xf0\x9f\x98",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\x80\x80",
            "é".as_bytes(),
            "€".as_bytes(),
            "😀".as_bytes(),
            b"\"",
            b"\\",
            b"\n",
            b"\x7f",
            b"\x00",
            b"a",
        ];
        for long in [0, 200] {
            for at in 0..70 {
                for piece in pieces {
                    for after in pieces {
                        let mut line = vec![b'x'; at + long];
                        line.extend_from_slice(piece);
                        line.extend_from_slice(after);
                        same_as_replaced(&line);
                        line.extend_from_slice(b"tail of the line");
                        same_as_replaced(&line);
                    }
                }
            }
        }
        same_as_replaced(b"");
        same_as_replaced(&vec![b'y'; 1 << 20]);
        let mut big = vec![b'z'; 1 << 20];
        big[(1 << 20) - 33] = 0xe2;
        same_as_replaced(&big);
    }
}
