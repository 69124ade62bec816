//! `container-logd logs --broker URL --host NAME` and `--hosts`: the same reading as `logs`,
//! over MQTT (docs/CONTRACT.md §10), for an agent reachable only through its broker. The
//! connection's credentials, TLS and MQTT version come from the same `MQTT_*` variables; the
//! host's topics from the same templates (`MQTT_QUERY_TOPIC`, `MQTT_BASE_TOPIC`,
//! `MQTT_STATUS_TOPIC`) with `{hostname}` replaced by NAME (by `+` to list hosts).
//!
//! A read sends one query and prints its answer's parts in order. With `-f` the host's live
//! topics are subscribed *before* the query is sent and what they bring meanwhile is held; after
//! the answer's last part it is printed without the ids the answer already had, then the live
//! messages as they come: no gap and no duplicate at the seam. It only reads: it never
//! publishes anything but its query, and never prints the password.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use super::logs::{format_line, split_array, Args, Error};
use crate::api::query::Filter;
use crate::backend::mqtt::wire::{self, Message};
use crate::config::{Config, MqttConfig, VARS};
use crate::fleet::search::json_matches;

/// How long a query waits for its answer's next part.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// How long `--hosts` waits for retained statuses after its subscription is confirmed.
const RETAINED_WAIT: Duration = Duration::from_millis(700);
/// The read wait while following (keep-alive is looked at in between).
const TICK: Duration = Duration::from_secs(1);
/// Live messages held while the answer comes; more is an error (the host logs faster than its
/// answer arrives).
const HOLD_MAX: usize = 100_000;

/// Runs `logs` over MQTT.
pub fn run(a: &Args, colour: bool, out: &mut impl Write) -> Result<(), Error> {
    let (cfg, options) = broker(a)?;
    let (mut w, mut r, _) = wire::connect(&options).map_err(|e| Error::Unreachable {
        addr: format!("{}:{}", cfg.host, cfg.port),
        detail: e.to_string(),
    })?;
    let result = match &a.host {
        None => hosts(&mut w, &mut r, a, out),
        Some(host) => read(&mut w, &mut r, &options, host, a, colour, out),
    };
    let _ = w.disconnect();
    result
}

/// The MQTT settings (with `--broker` as `MQTT_BROKER`), and connection options of the
/// command's own: a client id of its own, no will.
fn broker(a: &Args) -> Result<(MqttConfig, wire::Options), Error> {
    let mut vars: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    if let Some(url) = &a.broker {
        vars.insert("MQTT_BROKER".into(), url.clone());
    }
    let cfg = Config::from_env(&vars).map_err(Error::Config)?;
    let Some(m) = cfg.mqtt else {
        return Err(Error::Usage(
            "--broker URL (or MQTT_BROKER) is needed".into(),
        ));
    };
    let mut options = crate::backend::mqtt::options(&m, "", "")
        .map_err(|e| Error::Read(format!("tls settings: {e}")))?;
    options.client_id = format!("container-logd-cli-{}", std::process::id());
    options.will = None;
    options.max_incoming_packet = 16 << 20;
    Ok((m, options))
}

/// A topic template's value in the environment (or its default), with `{hostname}` → `name`.
fn template(var: &str, name: &str) -> String {
    let default = VARS
        .iter()
        .find(|v| v.name == var)
        .map_or("", |v| v.default);
    let value = std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    value
        .trim()
        .replace("{hostname}", name)
        .trim_end_matches('/')
        .to_string()
}

fn lost(e: impl std::fmt::Display) -> Error {
    Error::Read(format!("broker connection: {e}"))
}

/// The query's JSON: the filters, and where to answer.
fn request(a: &Args, reply: &str, correlation: &str) -> String {
    let mut q = serde_json::json!({"replyTo": reply, "correlationId": correlation});
    if let Some(v) = &a.app {
        q["appId"] = v.clone().into();
    }
    if let Some(v) = &a.service {
        q["service"] = v.clone().into();
    }
    if let Some(v) = a.level {
        q["level"] = v.as_str().into();
    }
    if let Some(v) = a.since_ms {
        q["since"] = v.into();
    }
    if let Some(v) = a.limit {
        q["limit"] = v.into();
    }
    q.to_string()
}

/// The filter the live messages are held to: the query's, without its limit.
fn live_filter(a: &Args) -> Filter {
    Filter {
        app_id: a.app.clone(),
        service: a.service.clone(),
        level: a.level,
        since_ms: a.since_ms,
        ..Filter::default()
    }
}

/// The items of the `"logs":[…]` array of an answer part or a batch, byte for byte.
fn logs_of(payload: &str) -> Result<Vec<&str>, String> {
    let start = payload.find("\"logs\":[").ok_or("no logs")? + "\"logs\":".len();
    let end = payload.rfind(']').ok_or("no logs")?;
    if end < start {
        return Err("no logs".into());
    }
    split_array(&payload[start..=end])
}

/// Reads the host's logs: one query, then (with `-f`) its live topics.
#[allow(clippy::too_many_arguments)]
fn read(
    w: &mut wire::Writer,
    r: &mut wire::Reader,
    options: &wire::Options,
    host: &str,
    a: &Args,
    colour: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let reply = format!("container-logd/reply/{}", options.client_id);
    let live = format!("{}/#", template("MQTT_BASE_TOPIC", host));
    let mut filters = vec![reply.as_str()];
    if a.follow {
        filters.push(&live);
    }
    w.subscribe(1, &filters).map_err(lost)?;
    w.flush().map_err(lost)?;
    // The SUBACK comes before anything of the subscriptions.
    r.set_read_timeout(Some(ANSWER_WAIT)).map_err(lost)?;
    while r.next_message().map_err(lost)?.is_some() {}
    let correlation = format!("cli-{}", std::process::id());
    let query = template("MQTT_QUERY_TOPIC", host);
    let body = request(a, &reply, &correlation);
    w.publish(0, &query, body.as_bytes(), 0, false, false)
        .and_then(|()| w.flush())
        .map_err(lost)?;
    let mut seam = Seam::new(a.follow);
    answer(r, &reply, &correlation, host, &mut seam, a, colour, out)?;
    if !a.follow {
        return Ok(());
    }
    let f = live_filter(a);
    let ids = std::mem::take(&mut seam.ids);
    for m in std::mem::take(&mut seam.held) {
        print_live(&m, &f, Some(&ids), a, colour, out)?;
    }
    follow(w, r, options, &reply, &f, a, colour, out)
}

/// The answer's ids and the live messages held until it is whole.
struct Seam {
    follow: bool,
    ids: HashSet<String>,
    held: VecDeque<Message>,
}

impl Seam {
    fn new(follow: bool) -> Seam {
        Seam {
            follow,
            ids: HashSet::new(),
            held: VecDeque::new(),
        }
    }
}

/// Prints the answer's parts in order until the last; holds live messages meanwhile.
#[allow(clippy::too_many_arguments)]
fn answer(
    r: &mut wire::Reader,
    reply: &str,
    correlation: &str,
    host: &str,
    seam: &mut Seam,
    a: &Args,
    colour: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let mut next = 1u64;
    loop {
        let m = match r.next_message() {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(wire::Error::Timeout) => {
                return Err(Error::Read(format!(
                    "no answer from {host} within {} s: is the agent there, with \
                     MQTT_QUERY=true and the same MQTT_QUERY_TOPIC?",
                    ANSWER_WAIT.as_secs()
                )))
            }
            Err(e) => return Err(lost(e)),
        };
        if m.topic != reply {
            if seam.follow {
                if seam.held.len() >= HOLD_MAX {
                    return Err(Error::Read("the live topics outran the answer".into()));
                }
                seam.held.push_back(m);
            }
            continue;
        }
        match part(&m, correlation, next, seam, a, colour, out)? {
            Part::Other => {}
            Part::More => next += 1,
            Part::Last => return Ok(()),
        }
    }
}

/// What a message on the reply topic was.
enum Part {
    /// Another query's, or not ours.
    Other,
    /// Part `next`, printed; more follow.
    More,
    /// The last part, printed (or stdout closed).
    Last,
}

/// Prints part `next` of the answer to `correlation`.
#[allow(clippy::too_many_arguments)]
fn part(
    m: &Message,
    correlation: &str,
    next: u64,
    seam: &mut Seam,
    a: &Args,
    colour: bool,
    out: &mut impl Write,
) -> Result<Part, Error> {
    let text = String::from_utf8_lossy(&m.payload);
    let v: serde_json::Value = serde_json::from_str(&text).map_err(lost)?;
    if v["correlationId"] != correlation {
        return Ok(Part::Other);
    }
    if let Some(e) = v["error"].as_str() {
        return Err(Error::Status {
            status: 400,
            body: e.to_string(),
        });
    }
    if v["part"].as_u64() != Some(next) {
        return Err(Error::Read(format!(
            "part {} of the answer came where part {next} was due (a part was lost)",
            v["part"]
        )));
    }
    for item in logs_of(&text).map_err(Error::Read)? {
        if seam.follow {
            if let Some((_, id)) = json_matches(item, &Filter::default()) {
                seam.ids.insert(id);
            }
        }
        if !print(item, a, colour, out) {
            return Ok(Part::Last);
        }
    }
    Ok(if v["last"] == true {
        Part::Last
    } else {
        Part::More
    })
}

/// Prints one message's JSON as `logs` does; false when stdout is closed.
fn print(item: &str, a: &Args, colour: bool, out: &mut impl Write) -> bool {
    let line = if a.json {
        item.to_string()
    } else {
        format_line(item, colour)
    };
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// Prints the messages of a live publish (one, or a batch) that pass `f` and are not in `skip`.
fn print_live(
    m: &Message,
    f: &Filter,
    skip: Option<&HashSet<String>>,
    a: &Args,
    colour: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let text = String::from_utf8_lossy(&m.payload);
    let items = if m.topic.ends_with("/batch") {
        logs_of(&text).unwrap_or_default()
    } else {
        vec![text.as_ref()]
    };
    for item in items {
        let Some((true, id)) = json_matches(item, f) else {
            continue;
        };
        if skip.is_some_and(|s| s.contains(&id)) {
            continue;
        }
        if !print(item, a, colour, out) {
            return Err(Error::Read("stdout closed".into()));
        }
    }
    Ok(())
}

/// Prints the live messages as they come, pinging the broker to keep the connection.
#[allow(clippy::too_many_arguments)]
fn follow(
    w: &mut wire::Writer,
    r: &mut wire::Reader,
    options: &wire::Options,
    reply: &str,
    f: &Filter,
    a: &Args,
    colour: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    r.set_read_timeout(Some(TICK)).map_err(lost)?;
    let mut last_write = Instant::now();
    loop {
        match r.next_message() {
            Ok(Some(m)) if m.topic != reply => match print_live(&m, f, None, a, colour, out) {
                Err(Error::Read(e)) if e == "stdout closed" => return Ok(()),
                other => other?,
            },
            Ok(_) | Err(wire::Error::Timeout) => {}
            Err(e) => return Err(lost(e)),
        }
        if last_write.elapsed() >= options.keep_alive / 2 {
            w.ping().and_then(|()| w.flush()).map_err(lost)?;
            last_write = Instant::now();
        }
    }
}

/// `--hosts`: one line per host whose retained status the broker holds.
fn hosts(
    w: &mut wire::Writer,
    r: &mut wire::Reader,
    a: &Args,
    out: &mut impl Write,
) -> Result<(), Error> {
    let filter = template("MQTT_STATUS_TOPIC", "+");
    w.subscribe(1, &[filter.as_str()]).map_err(lost)?;
    w.flush().map_err(lost)?;
    r.set_read_timeout(Some(ANSWER_WAIT)).map_err(lost)?;
    // The SUBACK, then the retained statuses at once.
    while r.next_message().map_err(lost)?.is_some() {}
    r.set_read_timeout(Some(RETAINED_WAIT)).map_err(lost)?;
    let mut found = std::collections::BTreeMap::new();
    loop {
        match r.next_message() {
            Ok(Some(m)) if m.retain => {
                let name = m.topic.rsplit('/').next().unwrap_or_default().to_string();
                found.insert(name, m.payload);
            }
            Ok(_) => {}
            Err(wire::Error::Timeout) => break,
            Err(e) => return Err(lost(e)),
        }
    }
    for (name, payload) in found {
        let text = String::from_utf8_lossy(&payload);
        let line = if a.json {
            text.into_owned()
        } else {
            host_line(&name, &text)
        };
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(())
}

/// `NAME  online  containers=3 engine=up lines/min=120 spool=0 dropped=0 version=… since=…`.
pub fn host_line(name: &str, status: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(status).unwrap_or_default();
    let field = |k: &str| match &v[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "{name}  {}  containers={} engine={} lines/min={} spool={} dropped={} version={} since={}",
        field("status"),
        field("containers"),
        field("engine"),
        field("linesPerMin"),
        field("spoolBytes"),
        field("dropped"),
        field("version"),
        field("startedAt"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_cut_out_byte_for_byte() {
        let part = r#"{"correlationId":"x \"logs\":[","logs":[{"b":1,"a":"]"},{"c":2}],"part":1,"last":true}"#;
        assert_eq!(
            logs_of(part).expect("logs"),
            [r#"{"b":1,"a":"]"}"#, r#"{"c":2}"#]
        );
        let batch = r#"{"count":1,"logs":[{"id":"a"}]}"#;
        assert_eq!(logs_of(batch).expect("logs"), [r#"{"id":"a"}"#]);
        assert_eq!(
            logs_of(r#"{"correlationId":null,"logs":[],"part":1,"last":true}"#).expect("empty"),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_host_line() {
        let s = r#"{"status":"online","host":"pi","version":"0.1.0","startedAt":"2026-11-30T00:00:00Z","containers":3,"spoolBytes":0,"dropped":1,"engine":"up","linesPerMin":12}"#;
        assert_eq!(
            host_line("pi-a", s),
            "pi-a  online  containers=3 engine=up lines/min=12 spool=0 dropped=1 \
             version=0.1.0 since=2026-11-30T00:00:00Z"
        );
        assert!(host_line("pi-b", r#"{"status":"offline"}"#).contains("containers=-"));
    }

    #[test]
    fn a_request_carries_the_filters() {
        let a = Args {
            app: Some("1001".into()),
            level: Some(crate::message::Level::Warn),
            limit: Some(5),
            ..Args::default()
        };
        let v: serde_json::Value = serde_json::from_str(&request(&a, "r/1", "c")).expect("json");
        assert_eq!(v["appId"], "1001");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["limit"], 5);
        assert_eq!(v["replyTo"], "r/1");
        assert_eq!(v["correlationId"], "c");
    }
}
