//! Topic names and payload shapes of docs/CONTRACT.md §5: which topic a message goes to, how a topic level
//! is sanitised and how a batch payload is built from the messages' JSON.
//!
//! Pure functions on strings only. This module never does I/O and never changes a message's
//! JSON: the payload of a single message is `LogMessage::write_json`'s output, byte for byte.

use crate::message::{LogMessage, SourceKind};

/// Replaces what MQTT gives a meaning to inside one topic level (`/`, `+`, `#`) and control
/// characters with `_`, so a service named `a/b` cannot open a new level or a wildcard.
pub fn sanitize_level(level: &str) -> String {
    if level.is_empty() {
        return "_".to_string();
    }
    level
        .chars()
        .map(|c| match c {
            '/' | '+' | '#' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// The topic a single message is published to (without the `/batch` suffix).
pub fn topic_for(base: &str, msg: &LogMessage) -> String {
    let level = msg.level.as_str();
    match msg.kind {
        SourceKind::Container => format!(
            "{base}/{}/{}/{level}",
            sanitize_level(msg.origin.app_id.as_str()),
            sanitize_level(&msg.origin.service_name)
        ),
        SourceKind::System => format!("{base}/system/{level}"),
        SourceKind::Manager => format!("{base}/manager/{level}"),
    }
}

/// The topic of a batch of messages that all share `topic`.
pub fn batch_topic(topic: &str) -> String {
    format!("{topic}/batch")
}

/// Bytes a batch payload adds around its messages: `{"count":N,"logs":[` … `]}` and commas.
pub fn batch_overhead(count: usize) -> usize {
    r#"{"count":,"logs":[]}"#.len() + 20 + count
}

/// Builds `{"count":N,"logs":[json,json,…]}`: `write(i, out)` appends message `i`'s JSON object,
/// unchanged; `bytes` is what the messages add up to.
pub fn batch_payload(
    mut out: Vec<u8>,
    count: usize,
    bytes: usize,
    mut write: impl FnMut(usize, &mut Vec<u8>),
) -> Vec<u8> {
    out.clear();
    // The last message's render reserves a little more than it writes: room for it too.
    out.reserve(bytes + batch_overhead(count) + crate::message::RENDER_SLACK);
    out.extend_from_slice(b"{\"count\":");
    out.extend_from_slice(count.to_string().as_bytes());
    out.extend_from_slice(b",\"logs\":[");
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        write(i, &mut out);
    }
    out.extend_from_slice(b"]}");
    out
}

/// What the retained online status says about the agent's health (docs/CONTRACT.md §10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    /// When the agent started, RFC 3339 (UTC).
    pub started_at: String,
    /// Containers followed.
    pub containers: usize,
    /// Bytes waiting in the disk spool.
    pub spool_bytes: u64,
    /// Messages lost for good, over the backends.
    pub dropped: u64,
    /// Whether the engine answers.
    pub engine_up: bool,
    /// Container lines read in the last minute.
    pub lines_per_min: u64,
}

/// The retained status payload of docs/CONTRACT.md §5, with the health of §10 when given (the
/// last will has none).
pub fn status_payload(status: &str, host: &str, version: &str, health: Option<&Health>) -> String {
    let mut out = String::from("{\"status\":");
    crate::message::push_json_str(&mut out, status);
    out.push_str(",\"host\":");
    crate::message::push_json_str(&mut out, host);
    out.push_str(",\"version\":");
    crate::message::push_json_str(&mut out, version);
    if let Some(h) = health {
        out.push_str(",\"startedAt\":");
        crate::message::push_json_str(&mut out, &h.started_at);
        out.push_str(&format!(
            ",\"containers\":{},\"spoolBytes\":{},\"dropped\":{},\"engine\":\"{}\",\"linesPerMin\":{}",
            h.containers,
            h.spool_bytes,
            h.dropped,
            if h.engine_up { "up" } else { "down" },
            h.lines_per_min
        ));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Draft, LabelValue, Level, Origin, Position};
    use std::sync::Arc;

    fn msg(kind: SourceKind, app: &str, service: &str, level: Level) -> LogMessage {
        LogMessage::new(Draft {
            text: "hello",
            ts_ns: 1_000,
            level,
            kind,
            origin: Arc::new(Origin::new(
                Arc::from("c1"),
                service.into(),
                LabelValue::from_label(app),
                service.into(),
                None,
                Arc::from("pi"),
            )),
            is_stderr: false,
            truncated: false,
            position: Some(Position {
                ts_ns: 1_000,
                seen: 1,
            }),
            id: crate::message::Id::Given("c1-1000-0".into()),
        })
    }

    #[test]
    fn levels_are_sanitised() {
        assert_eq!(sanitize_level("web"), "web");
        assert_eq!(sanitize_level("a/b+c#d"), "a_b_c_d");
        assert_eq!(sanitize_level("tab\there\nnl\u{7f}"), "tab_here_nl_");
        assert_eq!(sanitize_level(""), "_");
        assert_eq!(sanitize_level("é😀"), "é😀");
    }

    #[test]
    fn topics_by_kind() {
        let base = "container-manager/logs";
        let m = msg(SourceKind::Container, "1001", "web", Level::Error);
        assert_eq!(topic_for(base, &m), "container-manager/logs/1001/web/error");
        let m = msg(SourceKind::Container, "shop", "a/b", Level::Info);
        assert_eq!(topic_for(base, &m), "container-manager/logs/shop/a_b/info");
        let m = msg(SourceKind::System, "1001", "web", Level::Warn);
        assert_eq!(topic_for(base, &m), "container-manager/logs/system/warn");
        let m = msg(SourceKind::Manager, "x", "y", Level::Error);
        assert_eq!(topic_for(base, &m), "container-manager/logs/manager/error");
        assert_eq!(batch_topic("t/x"), "t/x/batch");
    }

    #[test]
    fn batch_payload_shape() {
        let a = r#"{"id":"a"}"#;
        let b = r#"{"id":"b"}"#;
        let p = batch_payload(Vec::new(), 2, a.len() + b.len(), |i, out| {
            out.extend_from_slice([a, b][i].as_bytes())
        });
        assert_eq!(p, br#"{"count":2,"logs":[{"id":"a"},{"id":"b"}]}"#);
        let v: serde_json::Value = serde_json::from_slice(&p).expect("valid json");
        assert_eq!(v["count"], 2);
        assert!(batch_overhead(2) >= p.len() - a.len() - b.len());
    }

    /// A batch of messages is written into the room reserved for it: its buffer is not
    /// grown (doubled) for the last message.
    #[test]
    fn a_batch_of_messages_fits_its_reserved_room() {
        let origin = crate::message::bench_origin();
        for n in [1, 2, 50] {
            let msgs: Vec<_> = (0..n)
                .map(|i| crate::message::test_line(&origin, "hi", 1_700_000_000_000_000_000 + i))
                .collect();
            let bytes = msgs.iter().map(|m| m.json_len()).sum();
            let p = batch_payload(Vec::new(), n as usize, bytes, |i, out| {
                msgs[i].write_json(out)
            });
            let reserved = bytes + batch_overhead(n as usize) + crate::message::RENDER_SLACK;
            assert!(p.capacity() <= reserved, "{} > {reserved}", p.capacity());
        }
    }

    #[test]
    fn status_shape() {
        assert_eq!(
            status_payload("offline", "pi", "0.1.0", None),
            r#"{"status":"offline","host":"pi","version":"0.1.0"}"#
        );
        let h = Health {
            started_at: "2026-11-30T00:00:00Z".into(),
            containers: 3,
            spool_bytes: 10,
            dropped: 2,
            engine_up: true,
            lines_per_min: 600,
        };
        assert_eq!(
            status_payload("online", "pi", "0.1.0", Some(&h)),
            r#"{"status":"online","host":"pi","version":"0.1.0","startedAt":"2026-11-30T00:00:00Z","containers":3,"spoolBytes":10,"dropped":2,"engine":"up","linesPerMin":600}"#
        );
    }
}
