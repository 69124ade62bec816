//! The log message of docs/CONTRACT.md §4: one value per container line, lifecycle event or agent warning.
//! A message keeps only what is its own (id, text, time, level); the JSON is rendered from it
//! and its shared [`Origin`] whenever a backend writes it, always to the same bytes, so files,
//! MQTT and the API carry identical objects while the memory ring holds a fraction of them.
//!
//! This module owns the JSON shape. It never decides levels (see `monitor::level`) and never
//! does I/O.

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
    /// Everything of a message's JSON after `"source":{"type":…"`, without the closing brace,
    /// rendered once for each [`tail_index`]: `,"name":…},"appId":…,"serviceId":…,
    /// "serviceName":…,"containerId":…,"isStdErr":…,"isSystem":…,"host":…`.
    tails: [Box<str>; 4],
}

/// Which of [`Origin`]'s tails a message takes.
fn tail_index(is_stderr: bool, is_system: bool) -> usize {
    usize::from(is_stderr) | usize::from(is_system) << 1
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
        let mut ident_json = String::from(",\"name\":");
        push_json_str(&mut ident_json, &name);
        ident_json.push_str("},\"appId\":");
        app_id.write_json(&mut ident_json);
        ident_json.push_str(",\"serviceId\":");
        match &service_id {
            Some(v) => v.write_json(&mut ident_json),
            None => ident_json.push_str("null"),
        }
        ident_json.push_str(",\"serviceName\":");
        push_json_str(&mut ident_json, &service_name);
        ident_json.push_str(",\"containerId\":");
        push_json_str(&mut ident_json, &container_id);
        let tail = |i: usize| {
            let mut t = ident_json.clone();
            t.push_str(match i & 1 {
                0 => ",\"isStdErr\":false",
                _ => ",\"isStdErr\":true",
            });
            t.push_str(match i & 2 {
                0 => ",\"isSystem\":false",
                _ => ",\"isSystem\":true",
            });
            t.push_str(",\"host\":");
            push_json_str(&mut t, &host);
            t.into_boxed_str()
        };
        let tails = [tail(0), tail(1), tail(2), tail(3)];
        Origin {
            container_id,
            name,
            app_id,
            service_name,
            service_id,
            host,
            tails,
        }
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
/// Its own bytes are one allocation, the id followed by the text as a JSON string literal:
/// the memory ring holds thousands of messages on a Pi, and what every message of a container
/// repeats (names, labels, ids, host) lives once, in its [`Origin`].
#[derive(Debug)]
pub struct LogMessage {
    /// The id (which needs no escaping), then the text's JSON string literal with its quotes.
    lit: Box<str>,
    id_len: u32,
    /// The length of [`LogMessage::write_json`]'s output, counted once when made.
    json_len: u32,
    /// The text needed escaping, so its literal differs from the text.
    text_escaped: bool,
    pub ts_ns: i64,
    pub level: Level,
    pub kind: SourceKind,
    pub origin: Arc<Origin>,
    pub is_stderr: bool,
    pub truncated: bool,
    /// Where this line sits in its container's log; `None` for system and manager messages.
    pub position: Option<Position>,
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

/// What a message is made from; [`LogMessage::new`] adds the id and the JSON.
pub struct Draft {
    pub text: String,
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
    let mut id = String::with_capacity(line_id_len(origin, pos));
    push_line_id(&mut id, origin, pos);
    id
}

/// Appends `{short id}-{ts_ns}-{index}`, the id of the line at `pos`.
fn push_line_id(out: &mut String, origin: &Origin, pos: Position) {
    out.push_str(origin.short_id());
    // The two numbers and their dashes, made as bytes and checked as text once.
    let mut tail = [0u8; 42];
    let mut len = 0;
    let mut buf = [0u8; 20];
    for n in [pos.ts_ns, i64::from(pos.seen.saturating_sub(1))] {
        let digits = decimal_digits(n, &mut buf);
        tail[len] = b'-';
        tail[len + 1..len + 1 + digits.len()].copy_from_slice(digits);
        len += 1 + digits.len();
    }
    // Digits and dashes are ASCII: this never falls back.
    out.push_str(std::str::from_utf8(&tail[..len]).unwrap_or_default());
}

/// The length of [`line_id`]'s output.
fn line_id_len(origin: &Origin, pos: Position) -> usize {
    origin.short_id().len()
        + 2
        + decimal_len(pos.ts_ns)
        + decimal_len(i64::from(pos.seen.saturating_sub(1)))
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

/// Where a message's JSON goes: a `String` (the API), bytes (files, MQTT payloads), or a count
/// of its bytes.
pub trait JsonSink {
    fn put(&mut self, piece: &str);
    fn put_decimal(&mut self, n: i64);
    fn reserve_for(&mut self, additional: usize);
}

impl JsonSink for String {
    fn put(&mut self, piece: &str) {
        self.push_str(piece);
    }

    fn put_decimal(&mut self, n: i64) {
        push_decimal(self, n);
    }

    fn reserve_for(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl JsonSink for Vec<u8> {
    fn put(&mut self, piece: &str) {
        self.extend_from_slice(piece.as_bytes());
    }

    fn put_decimal(&mut self, n: i64) {
        let mut buf = [0u8; 20];
        self.extend_from_slice(decimal_digits(n, &mut buf));
    }

    fn reserve_for(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

/// Counts what would be written.
struct Count(usize);

impl JsonSink for Count {
    fn put(&mut self, piece: &str) {
        self.0 += piece.len();
    }

    fn put_decimal(&mut self, n: i64) {
        self.0 += decimal_len(n);
    }

    fn reserve_for(&mut self, _: usize) {}
}

impl LogMessage {
    pub fn new(d: Draft) -> LogMessage {
        let id_len = match &d.id {
            Id::Line(pos) => line_id_len(&d.origin, *pos),
            Id::Given(id) => id.len(),
        };
        // Exact unless the text needs escaping, so that the box below takes the buffer as is.
        let mut lit = String::with_capacity(id_len + d.text.len() + 2);
        match &d.id {
            Id::Line(pos) => push_line_id(&mut lit, &d.origin, *pos),
            // Ids are made from hex ids, numbers and sanitised actions; anything else is
            // replaced so that the id never needs escaping.
            Id::Given(id) => lit.extend(id.chars().map(|c| {
                if c.is_control() || c == '"' || c == '\\' {
                    '_'
                } else {
                    c
                }
            })),
        }
        let id_len = lit.len() as u32;
        push_json_str(&mut lit, &d.text);
        let text_escaped = lit.len() - id_len as usize != d.text.len() + 2;
        let mut msg = LogMessage {
            lit: lit.into_boxed_str(),
            id_len,
            json_len: 0,
            text_escaped,
            ts_ns: d.ts_ns,
            level: d.level,
            kind: d.kind,
            origin: d.origin,
            is_stderr: d.is_stderr,
            truncated: d.truncated,
            position: d.position,
        };
        let mut count = Count(0);
        msg.render(&mut count);
        msg.json_len = u32::try_from(count.0).unwrap_or(u32::MAX);
        msg
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.ts_ns.div_euclid(1_000_000)
    }

    /// The stable id.
    pub fn id(&self) -> &str {
        self.lit.get(..self.id_len as usize).unwrap_or_default()
    }

    /// The text's JSON string literal, quotes included.
    fn text_literal(&self) -> &str {
        self.lit.get(self.id_len as usize..).unwrap_or("\"\"")
    }

    /// The text of the line.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let literal = self.text_literal();
        if !self.text_escaped {
            return std::borrow::Cow::Borrowed(&literal[1..literal.len() - 1]);
        }
        // Only messages with quotes, backslashes or control characters pay for this.
        std::borrow::Cow::Owned(serde_json::from_str::<String>(literal).unwrap_or_default())
    }

    /// Appends the message as one JSON object (docs/CONTRACT.md §4), no trailing newline. The
    /// same message always gives the same bytes.
    pub fn write_json(&self, out: &mut impl JsonSink) {
        out.reserve_for(self.json_len());
        self.render(out);
    }

    /// The length of [`LogMessage::write_json`]'s output, without making it.
    pub fn json_len(&self) -> usize {
        self.json_len as usize
    }

    /// Hands the JSON to `out` piece by piece; the one place that knows the shape (with the
    /// pieces [`Origin::new`] and [`level_and_kind`] make once).
    fn render(&self, out: &mut impl JsonSink) {
        out.put("{\"id\":\"");
        out.put(self.id());
        out.put("\",\"message\":");
        out.put(self.text_literal());
        out.put(",\"timestamp\":");
        out.put_decimal(self.timestamp_ms());
        out.put(level_and_kind(self.level, self.kind));
        let system = self.kind == SourceKind::System;
        out.put(&self.origin.tails[tail_index(self.is_stderr, system)]);
        out.put(if self.truncated {
            ",\"truncated\":true}"
        } else {
            "}"
        });
    }

    /// The message as one JSON object, no trailing newline.
    pub fn json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
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

/// Appends `n` in decimal, without `fmt`: ids and timestamps are written for every line.
fn push_decimal(out: &mut String, n: i64) {
    let mut buf = [0u8; 20];
    let digits = decimal_digits(n, &mut buf);
    // Digits and a sign are ASCII: this never falls back.
    out.push_str(std::str::from_utf8(digits).unwrap_or("0"));
}

/// `n` in decimal, written into the end of `buf` (20 bytes hold any i64).
fn decimal_digits(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
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
    &buf[i..]
}

/// The number of bytes [`push_decimal`] writes.
fn decimal_len(n: i64) -> usize {
    let digits = n
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |l| l as usize + 1);
    digits + usize::from(n < 0)
}

/// The bytes a JSON string literal must escape (and DEL, which we escape too).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f
}

/// Whether any of the eight bytes of `w` [`needs_escape`]: the zero-byte test of
/// "Bit Twiddling Hacks" (exact, not only likely), for `< 0x20` and for `"`, `\` and DEL.
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Each term has a byte's high bit set where that byte is a zero (below 0x20 for the first),
    // given that the byte's own high bit is clear (`!w`); one test for all four, no branches.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let marks = below_space
        | zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        | zero(w ^ (ONES * 0x7f));
    marks & HIGH != 0
}

/// Appends `s` as a JSON string literal. Runs of plain bytes are copied at once, eight bytes
/// checked at a time; escaped are `"`, `\`, control characters and DEL (`\n`, `\r`, `\t` by
/// name, the others as `\u00XX`).
pub fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = plain_prefix(bytes);
    while i < bytes.len() {
        // `bytes[i]` needs escaping; it is ASCII, so `i` is a character boundary.
        out.push_str(&s[start..i]);
        push_escape(out, bytes[i]);
        start = i + 1;
        i = start + plain_prefix(&bytes[start..]);
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// How many bytes at the start of `bytes` need no escaping: eight at a time, then one by one.
fn plain_prefix(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut plain = 0;
    for w in &mut words {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if word_needs_escape(w) {
            break;
        }
        plain += 8;
    }
    plain
        + bytes[plain..]
            .iter()
            .position(|&b| needs_escape(b))
            .unwrap_or(bytes.len() - plain)
}

/// Appends the escape of one byte that [`needs_escape`].
fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.push_str("\\\""),
        b'\\' => out.push_str("\\\\"),
        b'\n' => out.push_str("\\n"),
        b'\r' => out.push_str("\\r"),
        b'\t' => out.push_str("\\t"),
        _ => {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
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

    fn line_draft(text: &str) -> Draft {
        Draft {
            text: text.into(),
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
            text: "exited with code 137".into(),
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
        for n in cases {
            let mut out = String::from("x");
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}"));
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
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
                let back: String = serde_json::from_str(&out).expect("valid JSON");
                assert_eq!(back, text);
            }
        }
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
}
