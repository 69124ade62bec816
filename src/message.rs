//! The log message of SPEC §4: one value per container line, lifecycle event or agent warning,
//! encoded to JSON once, when it is made, so that files, MQTT and the API carry the same bytes.
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
}

impl Origin {
    /// The origin of the agent's own (`manager`) messages.
    pub fn manager(host: Arc<str>) -> Origin {
        Origin {
            container_id: Arc::from(""),
            name: "container-logd".into(),
            app_id: LabelValue::Text("manager".into()),
            service_name: "container-logd".into(),
            service_id: None,
            host,
        }
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
/// The id and the text live only inside `json` (ranges point at them), so a message costs one
/// allocation for its bytes, not three: the memory ring holds thousands of them on a Pi.
#[derive(Debug)]
pub struct LogMessage {
    /// Byte range of the id inside `json` (ids need no escaping).
    id_at: (u32, u32),
    /// Byte range of the text's JSON string literal (with its quotes) inside `json`.
    text_at: (u32, u32),
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
    /// The message as one JSON object, no trailing newline.
    pub json: String,
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
        let mut json = String::with_capacity(d.text.len() + 320);
        let (id_at, text_at) = encode(&mut json, &d.id, &d);
        let text_escaped = (text_at.1 - text_at.0) as usize != d.text.len() + 2;
        LogMessage {
            id_at,
            text_at,
            text_escaped,
            ts_ns: d.ts_ns,
            level: d.level,
            kind: d.kind,
            origin: d.origin,
            is_stderr: d.is_stderr,
            truncated: d.truncated,
            position: d.position,
            json,
        }
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.ts_ns.div_euclid(1_000_000)
    }

    /// The stable id.
    pub fn id(&self) -> &str {
        self.json
            .get(self.id_at.0 as usize..self.id_at.1 as usize)
            .unwrap_or_default()
    }

    /// The text of the line.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let literal = self
            .json
            .get(self.text_at.0 as usize..self.text_at.1 as usize)
            .unwrap_or("\"\"");
        if !self.text_escaped {
            return std::borrow::Cow::Borrowed(&literal[1..literal.len() - 1]);
        }
        // Only messages with quotes, backslashes or control characters pay for this.
        std::borrow::Cow::Owned(serde_json::from_str::<String>(literal).unwrap_or_default())
    }
}

/// Writes the JSON; returns where the id (inside its quotes) and the text literal are.
fn encode(out: &mut String, id: &str, d: &Draft) -> ((u32, u32), (u32, u32)) {
    let o = &d.origin;
    out.push_str("{\"id\":");
    let id_start = out.len() + 1;
    push_json_str(out, id);
    let id_at = (id_start as u32, (out.len() - 1) as u32);
    out.push_str(",\"message\":");
    let text_start = out.len();
    push_json_str(out, &d.text);
    let text_at = (text_start as u32, out.len() as u32);
    let _ = write!(out, ",\"timestamp\":{}", d.ts_ns.div_euclid(1_000_000));
    out.push_str(",\"level\":\"");
    out.push_str(d.level.as_str());
    out.push_str("\",\"source\":{\"type\":\"");
    out.push_str(d.kind.as_str());
    out.push_str("\",\"name\":");
    push_json_str(out, &o.name);
    out.push_str("},\"appId\":");
    o.app_id.write_json(out);
    out.push_str(",\"serviceId\":");
    match &o.service_id {
        Some(v) => v.write_json(out),
        None => out.push_str("null"),
    }
    out.push_str(",\"serviceName\":");
    push_json_str(out, &o.service_name);
    out.push_str(",\"containerId\":");
    push_json_str(out, &o.container_id);
    let _ = write!(
        out,
        ",\"isStdErr\":{},\"isSystem\":{},\"host\":",
        d.is_stderr,
        d.kind == SourceKind::System
    );
    push_json_str(out, &o.host);
    if d.truncated {
        out.push_str(",\"truncated\":true");
    }
    out.push('}');
    (id_at, text_at)
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
        Arc::new(Origin {
            container_id: Arc::from("3f2a9c1b7d0e55aa"),
            name: "web".into(),
            app_id: LabelValue::from_label("1001"),
            service_name: "web".into(),
            service_id: Some(LabelValue::from_label("1001")),
            host: Arc::from("pi-kitchen"),
        })
    }

    fn line(text: &str) -> LogMessage {
        LogMessage::new(Draft {
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
        })
    }

    #[test]
    fn json_has_the_spec_shape() {
        let m = line("Server started on port 8080");
        assert_eq!(
            m.json,
            r#"{"id":"3f2a9c1b7d0e-1696195200000123456-0","message":"Server started on port 8080","timestamp":1696195200000,"level":"info","source":{"type":"container","name":"web"},"appId":1001,"serviceId":1001,"serviceName":"web","containerId":"3f2a9c1b7d0e55aa","isStdErr":false,"isSystem":false,"host":"pi-kitchen"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&m.json).expect("valid json");
        assert_eq!(v["appId"], 1001);
    }

    #[test]
    fn escapes_round_trip() {
        let text = "quote \" back \\ nl \n tab \t bell \u{7} del \u{7f} é 😀";
        let m = line(text);
        let v: serde_json::Value = serde_json::from_str(&m.json).expect("valid json");
        assert_eq!(v["message"], text);
        assert_eq!(m.text(), text);
        assert_eq!(line("plain").text(), "plain");
        assert_eq!(m.id(), "3f2a9c1b7d0e-1696195200000123456-0");
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
