//! Parsing `/events`: one JSON object per line of the body, of which only container events
//! become an [`Event`]. Also splits the body into lines, since an object may be cut anywhere
//! between two reads.
//!
//! Pure: bytes in, events out. The legacy `status`/`id`/`from` fields are not used; recent
//! API versions dropped them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Error, Event};

/// A line longer than this is not an event we could want; refusing it bounds our memory.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "Action")]
    action: Option<String>,
    #[serde(rename = "Actor")]
    actor: Option<RawActor>,
    #[serde(rename = "timeNano")]
    time_nano: Option<i64>,
    time: Option<i64>,
}

#[derive(Deserialize)]
struct RawActor {
    #[serde(rename = "ID")]
    id: Option<String>,
    #[serde(rename = "Attributes")]
    attributes: Option<BTreeMap<String, serde_json::Value>>,
}

/// Parses one event object. Events of other types (networks, images, …) give `Ok(None)`.
pub fn parse_event(line: &[u8]) -> Result<Option<Event>, Error> {
    let raw: RawEvent = serde_json::from_slice(line)
        .map_err(|e| Error::Protocol(format!("bad event JSON: {e}")))?;
    if raw.kind.as_deref() != Some("container") {
        return Ok(None);
    }
    let action = raw
        .action
        .ok_or_else(|| Error::Protocol("container event without Action".into()))?;
    let actor = raw
        .actor
        .ok_or_else(|| Error::Protocol("container event without Actor".into()))?;
    let id = actor
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Error::Protocol("container event without Actor.ID".into()))?;
    let attributes = actor
        .attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            // Attributes are strings; anything else is kept in its JSON form.
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect();
    let time_nano = raw
        .time_nano
        .or_else(|| raw.time.and_then(|t| t.checked_mul(1_000_000_000)))
        .unwrap_or(0);
    Ok(Some(Event {
        action,
        id,
        attributes,
        time_nano,
    }))
}

/// Splits the `/events` body into lines and parses them.
#[derive(Debug, Default)]
pub struct EventSplitter {
    line: Vec<u8>,
    /// The current line went over [`MAX_EVENT_BYTES`].
    too_long: bool,
}

impl EventSplitter {
    pub fn new() -> EventSplitter {
        EventSplitter::default()
    }

    /// Takes the next body bytes; calls `emit` for each container event completed by them.
    pub fn feed(&mut self, mut input: &[u8], emit: &mut impl FnMut(Event)) -> Result<(), Error> {
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.push(&input[..i]);
                    input = &input[i + 1..];
                    self.end_line(emit)?;
                }
                None => {
                    self.push(input);
                    input = &[];
                }
            }
        }
        Ok(())
    }

    /// The body ended: a last object without its `\n` still counts.
    pub fn finish(&mut self, emit: &mut impl FnMut(Event)) -> Result<(), Error> {
        self.end_line(emit)
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            self.too_long = true;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, emit: &mut impl FnMut(Event)) -> Result<(), Error> {
        if std::mem::take(&mut self.too_long) {
            self.line.clear();
            return Err(Error::Protocol(format!(
                "event longer than {MAX_EVENT_BYTES} bytes"
            )));
        }
        let parsed = if self.line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            parse_event(&self.line)?
        };
        self.line.clear();
        if let Some(ev) = parsed {
            emit(ev);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: &[u8] = include_bytes!("../../tests/data/events.http");

    /// A followed events stream has no end yet: only the bytes so far.
    fn body(resp: &[u8]) -> Vec<u8> {
        crate::engine::chunked::recorded_body(resp).0
    }

    fn split(pieces: &[&[u8]]) -> Vec<Event> {
        let mut s = EventSplitter::new();
        let mut out = Vec::new();
        for p in pieces {
            s.feed(p, &mut |e| out.push(e)).unwrap();
        }
        s.finish(&mut |e| out.push(e)).unwrap();
        out
    }

    #[test]
    fn parses_the_recorded_events() {
        let b = body(EVENTS);
        let events = split(&[&b]);
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        assert!(
            actions.starts_with(&["create", "attach", "start", "die"]),
            "{actions:?}"
        );
        let first = &events[0];
        assert_eq!(
            first.id,
            "bba2a0043a4ff8c6f79b49749fe45e5cdabd4e8a31b5fed76eab9b3d12f94071"
        );
        assert_eq!(first.attributes["name"], "eng-cap-plain");
        assert_eq!(first.attributes["image"], "bb:test");
        assert_eq!(first.time_nano, 1_795_572_603_141_352_471);
        let die = &events[3];
        assert_eq!(die.attributes["exitCode"], "0");
        for cut in 0..=b.len() {
            assert_eq!(split(&[&b[..cut], &b[cut..]]), events, "cut {cut}");
        }
    }

    /// Podman's events: the same shape, its own actions (`init`, `sync`, `cleanup`) beside
    /// Docker's, `exitCode` on `die`.
    #[test]
    fn parses_recorded_podman_events() {
        let events = split(&[&body(include_bytes!("../../tests/data/podman-events.http"))]);
        let of = |name: &str| -> Vec<&str> {
            events
                .iter()
                .filter(|e| e.attributes.get("name").is_some_and(|n| n == name))
                .map(|e| e.action.as_str())
                .collect()
        };
        let split_ctr = of("rec-split");
        assert!(
            split_ctr.starts_with(&["create", "init", "start"]),
            "{split_ctr:?}"
        );
        assert!(split_ctr.contains(&"die"), "{split_ctr:?}");
        let die = events.iter().find(|e| e.action == "die").unwrap();
        assert_eq!(die.attributes["exitCode"], "0");
        assert_eq!(die.id.len(), 64);
        assert!(die.time_nano > 1_795_986_000_000_000_000);
    }

    #[test]
    fn skips_other_types_and_reads_health() {
        assert_eq!(
            parse_event(br#"{"Type":"network","Action":"connect","Actor":{"ID":"n"}}"#).unwrap(),
            None
        );
        assert_eq!(
            parse_event(br#"{"status":"start","id":"abc"}"#).unwrap(),
            None
        );
        let e = parse_event(
            br#"{"Type":"container","Action":"health_status: healthy","Actor":{"ID":"abc","Attributes":{"n":1,"com.x":"y"}},"time":5}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.action, "health_status: healthy");
        assert_eq!(e.attributes["n"], "1");
        assert_eq!(e.attributes["com.x"], "y");
        assert_eq!(e.time_nano, 5_000_000_000);
    }

    #[test]
    fn rejects_broken_events() {
        for line in [
            &b"{"[..],
            b"[]",
            b"not json",
            br#"{"Type":"container","Actor":{"ID":"a"}}"#,
            br#"{"Type":"container","Action":"start"}"#,
            br#"{"Type":"container","Action":"start","Actor":{"ID":""}}"#,
            br#"{"Type":"container","Action":7,"Actor":{"ID":"a"}}"#,
        ] {
            assert!(
                parse_event(line).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn refuses_endless_lines_and_recovers() {
        let mut s = EventSplitter::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        s.feed(&big, &mut |_| {}).unwrap();
        assert!(s.feed(b"\n", &mut |_| {}).is_err());
        let mut out = Vec::new();
        s.feed(
            b"{\"Type\":\"container\",\"Action\":\"stop\",\"Actor\":{\"ID\":\"a\"}}\n\n",
            &mut |e| out.push(e),
        )
        .unwrap();
        assert_eq!(out.len(), 1);
    }
}
