//! The log message of docs/CONTRACT.md §4: one value per container line, lifecycle event or agent warning.
//! A message keeps only what is its own (id, text, time, level); the JSON is rendered from it
//! and its shared [`Origin`] whenever a backend writes it, always to the same bytes, so files,
//! MQTT and the API carry identical objects while the memory ring holds a fraction of them.
//!
//! This module owns the JSON shape. It never decides levels (see `monitor::level`) and never
//! does I/O.

use std::fmt::Write as _;
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
    /// `,"name":…},"appId":…,"serviceId":…,"serviceName":…,"containerId":…`, rendered once.
    ident_json: String,
    /// `,"host":…`, rendered once.
    host_json: String,
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
        let mut host_json = String::from(",\"host\":");
        push_json_str(&mut host_json, &host);
        Origin {
            container_id,
            name,
            app_id,
            service_name,
            service_id,
            host,
            ident_json,
            host_json,
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
    /// The stable id (see [`line_id`], [`event_id`], [`manager_id`]).
    pub id: String,
}

/// The id of a container line: the same engine line always gets the same id.
pub fn line_id(origin: &Origin, pos: Position) -> String {
    format!(
        "{}-{}-{}",
        origin.short_id(),
        pos.ts_ns,
        pos.seen.saturating_sub(1)
    )
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

impl LogMessage {
    pub fn new(d: Draft) -> LogMessage {
        let mut lit = String::with_capacity(d.id.len() + d.text.len() + 2);
        // Ids are made here from hex ids, numbers and sanitised actions; anything else is
        // replaced so that the id never needs escaping.
        lit.extend(d.id.chars().map(|c| {
            if c.is_control() || c == '"' || c == '\\' {
                '_'
            } else {
                c
            }
        }));
        let id_len = lit.len() as u32;
        push_json_str(&mut lit, &d.text);
        let text_escaped = lit.len() - id_len as usize != d.text.len() + 2;
        LogMessage {
            lit: lit.into_boxed_str(),
            id_len,
            text_escaped,
            ts_ns: d.ts_ns,
            level: d.level,
            kind: d.kind,
            origin: d.origin,
            is_stderr: d.is_stderr,
            truncated: d.truncated,
            position: d.position,
        }
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

    /// Appends the message as one JSON object (docs/CONTRACT.md §4), no trailing newline. The same message
    /// always gives the same bytes.
    pub fn write_json(&self, out: &mut String) {
        out.reserve(self.json_len());
        self.render(&mut |piece: &str| out.push_str(piece));
    }

    /// The length of [`LogMessage::write_json`]'s output, without making it.
    pub fn json_len(&self) -> usize {
        let mut len = 0;
        self.render(&mut |piece: &str| len += piece.len());
        len
    }

    /// Hands the JSON to `put` piece by piece; the one place that knows the shape.
    fn render(&self, put: &mut impl FnMut(&str)) {
        let o = &self.origin;
        put("{\"id\":\"");
        put(self.id());
        put("\",\"message\":");
        put(self.text_literal());
        put(",\"timestamp\":");
        let mut digits = [0u8; 20];
        put(decimal(self.timestamp_ms(), &mut digits));
        put(",\"level\":\"");
        put(self.level.as_str());
        put("\",\"source\":{\"type\":\"");
        put(self.kind.as_str());
        put("\"");
        put(&o.ident_json);
        put(if self.is_stderr {
            ",\"isStdErr\":true"
        } else {
            ",\"isStdErr\":false"
        });
        put(if self.kind == SourceKind::System {
            ",\"isSystem\":true"
        } else {
            ",\"isSystem\":false"
        });
        put(&o.host_json);
        if self.truncated {
            put(",\"truncated\":true");
        }
        put("}");
    }

    /// The message as one JSON object, no trailing newline.
    pub fn json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }
}

/// `n` in decimal, written into the end of `buf` (20 bytes hold any i64).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
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
            id: line_id(
                &origin(),
                Position {
                    ts_ns: 1_696_195_200_000_123_456,
                    seen: 1,
                },
            ),
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
            id: event_id(&o, 5_000_000, "die\"x"),
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
            id: "a\"b\\c\nd".into(),
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
        let mut b = [0u8; 20];
        for n in [0, 7, -7, 10, 1_696_195_200_000, i64::MAX, i64::MIN, -1_000] {
            assert_eq!(decimal(n, &mut b), n.to_string());
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
