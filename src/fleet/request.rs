//! A log query over MQTT (docs/CONTRACT.md §10), as values: a request's payload and properties
//! in, a [`Request`] (the filters of `/api/v1/logs`, where to answer, the correlation) or the
//! error to answer out; and [`Parts`], which cuts an answer into messages that each fit the
//! broker's packet limit.
//!
//! Pure: no socket, no clock. The filters are parsed by the HTTP API's own parser
//! ([`Filter::parse`]), so an error names the parameter the same way.

use crate::api::query::{BadParam, Filter};
use crate::backend::mqtt::wire::Message;

/// The largest `limit` a query over MQTT takes.
pub const MAX_LIMIT: usize = 10_000;

/// A query to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filter: Filter,
    pub reply: Reply,
}

/// Where and how an answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The topic the answer is published to.
    pub topic: String,
    /// The request's correlation, as the answers' `correlationId` (a JSON string, or `null`).
    pub correlation_json: String,
    /// MQTT 5: the request's correlation data, sent back as the answers' property.
    pub correlation_data: Option<Vec<u8>>,
}

/// What a request comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A query to answer.
    Query(Request),
    /// A request to answer with this error.
    Bad(Reply, String),
    /// No usable reply topic: nothing can be answered (why).
    Unanswerable(String),
}

/// Reads a request: the reply topic and correlation from the MQTT 5 properties when there are
/// any, else from the JSON's `replyTo` and `correlationId`; the rest of the JSON are filters.
pub fn parse(msg: &Message) -> Parsed {
    let doc: Result<serde_json::Map<String, serde_json::Value>, _> =
        serde_json::from_slice(&msg.payload);
    let obj = doc.as_ref().ok();
    let field = |k: &str| obj.and_then(|o| o.get(k)).and_then(|v| v.as_str());
    let topic = msg
        .response_topic
        .clone()
        .or_else(|| field("replyTo").map(str::to_string));
    let Some(topic) = topic else {
        return Parsed::Unanswerable("no replyTo (nor MQTT 5 response topic)".into());
    };
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Parsed::Unanswerable(format!("reply topic {topic:?} is not a topic"));
    }
    let correlation_json = match (&msg.correlation, field("correlationId")) {
        (Some(data), _) => json_string(&String::from_utf8_lossy(data)),
        (None, Some(id)) => json_string(id),
        (None, None) => "null".to_string(),
    };
    let reply = Reply {
        topic,
        correlation_json,
        correlation_data: msg.correlation.clone(),
    };
    let Ok(obj) = doc else {
        return Parsed::Bad(reply, "bad request: not a JSON object".into());
    };
    match filter(&obj) {
        Ok(filter) => Parsed::Query(Request { filter, reply }),
        Err(e) => Parsed::Bad(reply, e.to_string()),
    }
}

/// The filters of a request's JSON, as `/api/v1/logs` reads them from a query string.
fn filter(obj: &serde_json::Map<String, serde_json::Value>) -> Result<Filter, BadParam> {
    let mut pairs = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => continue,
            _ => {
                return Err(BadParam {
                    name: k.clone(),
                    reason: "a string or a number".into(),
                })
            }
        };
        pairs.push((k.clone(), value));
    }
    let f = Filter::parse(&pairs, &["replyTo", "correlationId"])?;
    if f.limit > MAX_LIMIT {
        return Err(BadParam {
            name: "limit".into(),
            reason: format!("a whole number from 1 to {MAX_LIMIT}"),
        });
    }
    Ok(f)
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::message::push_json_str(&mut out, s);
    out
}

/// The error answer: `{"correlationId":…,"error":"…"}`.
pub fn error_payload(reply: &Reply, error: &str) -> Vec<u8> {
    format!(
        "{{\"correlationId\":{},\"error\":{}}}",
        reply.correlation_json,
        json_string(error)
    )
    .into_bytes()
}

/// Bytes of a part's end, `],"part":N,"last":false}`, at most.
const SUFFIX_MAX: usize = r#"],"part":4294967295,"last":false}"#.len();

/// Cuts an answer into parts `{"correlationId":…,"logs":[…],"part":n,"last":b}` of at most
/// `budget` bytes each, oldest message first: messages are pushed one at a time, and a part is
/// handed to `emit` when the next message would not fit it (and the last at [`Parts::finish`]).
/// Holds at most one part.
pub struct Parts {
    prefix: String,
    budget: usize,
    buf: Vec<u8>,
    in_part: usize,
    part: u32,
    /// Messages too big for any part, left out.
    pub skipped: usize,
}

impl Parts {
    pub fn new(correlation_json: &str, budget: usize) -> Parts {
        let prefix = format!("{{\"correlationId\":{correlation_json},\"logs\":[");
        let mut buf = Vec::with_capacity(budget.min(64 << 10));
        buf.extend_from_slice(prefix.as_bytes());
        Parts {
            prefix,
            budget,
            buf,
            in_part: 0,
            part: 0,
            skipped: 0,
        }
    }

    /// Adds one message's JSON; hands a full part to `emit` first when it does not fit.
    pub fn push<E>(
        &mut self,
        json: &[u8],
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.prefix.len() + json.len() + SUFFIX_MAX > self.budget {
            self.skipped += 1;
            return Ok(());
        }
        if self.buf.len() + 1 + json.len() + SUFFIX_MAX > self.budget && self.in_part > 0 {
            self.emit(false, emit)?;
        }
        if self.in_part > 0 {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(json);
        self.in_part += 1;
        Ok(())
    }

    /// Hands out the last part (an answer with no message is one empty part).
    pub fn finish<E>(mut self, emit: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<u32, E> {
        self.emit(true, emit)?;
        Ok(self.part)
    }

    fn emit<E>(
        &mut self,
        last: bool,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.part += 1;
        let suffix = format!("],\"part\":{},\"last\":{last}}}", self.part);
        self.buf.extend_from_slice(suffix.as_bytes());
        let r = emit(&self.buf);
        self.buf.clear();
        self.buf.extend_from_slice(self.prefix.as_bytes());
        self.in_part = 0;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Level;

    fn msg(payload: &str) -> Message {
        Message {
            topic: "q".into(),
            payload: payload.as_bytes().to_vec(),
            retain: false,
            response_topic: None,
            correlation: None,
        }
    }

    #[test]
    fn a_311_request_carries_its_reply_topic_and_correlation() {
        let p = parse(&msg(
            r#"{"replyTo":"r/1","correlationId":"c-1","appId":1001,"level":"warn","limit":5}"#,
        ));
        let Parsed::Query(r) = p else {
            panic!("a query: {p:?}")
        };
        assert_eq!(r.reply.topic, "r/1");
        assert_eq!(r.reply.correlation_json, r#""c-1""#);
        assert_eq!(r.reply.correlation_data, None);
        assert_eq!(r.filter.app_id.as_deref(), Some("1001"));
        assert_eq!(r.filter.level, Some(Level::Warn));
        assert_eq!(r.filter.limit, 5);
    }

    #[test]
    fn a_v5_request_uses_its_properties() {
        let mut m = msg(r#"{"service":"web"}"#);
        m.response_topic = Some("r/5".into());
        m.correlation = Some(b"xyz".to_vec());
        let Parsed::Query(r) = parse(&m) else {
            panic!("a query")
        };
        assert_eq!(r.reply.topic, "r/5");
        assert_eq!(r.reply.correlation_json, r#""xyz""#);
        assert_eq!(r.reply.correlation_data.as_deref(), Some(&b"xyz"[..]));
        assert_eq!(r.filter.limit, crate::api::query::DEFAULT_LIMIT);
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        let bad = |p: &str| match parse(&msg(p)) {
            Parsed::Bad(reply, e) => (reply.correlation_json, e),
            other => panic!("bad: {other:?}"),
        };
        let (c, e) = bad(r#"{"replyTo":"r","correlationId":"7","level":"loud"}"#);
        assert_eq!(c, r#""7""#);
        assert!(e.starts_with("bad parameter 'level': "), "{e}");
        assert!(bad(r#"{"replyTo":"r","limit":10001}"#)
            .1
            .contains("'limit'"));
        assert!(bad(r#"{"replyTo":"r","colour":"red"}"#)
            .1
            .contains("'colour'"));
        assert!(bad(r#"{"replyTo":"r","q":["a"]}"#).1.contains("'q'"));
        assert!(bad(r#"{"replyTo":"r","since":"yesterday"}"#)
            .1
            .contains("'since'"));
        let e = error_payload(
            &Reply {
                topic: "r".into(),
                correlation_json: "\"7\"".into(),
                correlation_data: None,
            },
            "bad parameter 'level': x",
        );
        assert_eq!(
            e,
            br#"{"correlationId":"7","error":"bad parameter 'level': x"}"#
        );
    }

    #[test]
    fn no_reply_topic_is_unanswerable() {
        assert!(matches!(parse(&msg("{}")), Parsed::Unanswerable(_)));
        assert!(matches!(
            parse(&msg(r#"{"replyTo":"a/#"}"#)),
            Parsed::Unanswerable(_)
        ));
        let mut m = msg("not json");
        m.response_topic = Some("r".into());
        assert!(matches!(parse(&m), Parsed::Bad(_, _)));
    }

    #[test]
    fn parts_fit_the_budget_and_keep_the_order() {
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut emit = |p: &[u8]| -> Result<(), ()> {
            got.push(p.to_vec());
            Ok(())
        };
        let mut parts = Parts::new("\"c\"", 120);
        for i in 0..10 {
            let line = format!("{{\"id\":\"{i:02}-xxxxxxxxxx\"}}");
            let _ = parts.push(line.as_bytes(), &mut emit);
        }
        let _ = parts.push(&[b'x'; 200], &mut emit);
        let n = parts.finish(&mut emit).unwrap_or(0);
        assert_eq!(n as usize, got.len());
        assert!(got.len() > 1, "several parts");
        let mut ids = Vec::new();
        for (i, p) in got.iter().enumerate() {
            assert!(p.len() <= 120, "part {i} is {} bytes", p.len());
            let v: serde_json::Value = serde_json::from_slice(p).expect("json");
            assert_eq!(v["correlationId"], "c");
            assert_eq!(v["part"], i + 1);
            assert_eq!(v["last"], i + 1 == got.len());
            for l in v["logs"].as_array().expect("logs") {
                ids.push(l["id"].as_str().unwrap_or_default()[..2].to_string());
            }
        }
        let want: Vec<String> = (0..10).map(|i| format!("{i:02}")).collect();
        assert_eq!(ids, want);
        let mut empty: Vec<Vec<u8>> = Vec::new();
        let n = Parts::new("null", 100)
            .finish(&mut |p: &[u8]| -> Result<(), ()> {
                empty.push(p.to_vec());
                Ok(())
            })
            .unwrap_or(0);
        assert_eq!(n, 1);
        assert_eq!(
            empty[0],
            br#"{"correlationId":null,"logs":[],"part":1,"last":true}"#
        );
    }
}
