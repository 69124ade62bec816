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

/// How long a query waits for its answer's next part before it is sent again, and how many
/// times it is sent.
const ASK_WAIT: Duration = Duration::from_secs(3);
const ASKS: u32 = 5;
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
    let broker = format!("{}:{}", cfg.host, cfg.port);
    let (mut w, mut r, _) = wire::connect(&options)
        .map_err(|e| Error::Broker(format!("cannot connect to {broker}: {e}")))?;
    match &a.host {
        None => {
            let listed = hosts(&mut w, &mut r, a, out);
            let _ = w.disconnect();
            listed
        }
        Some(host) => {
            let mut reading = Reading {
                a,
                host,
                options: &options,
                colour,
                out,
                printed: Printed::default(),
                asked: 0,
            };
            reading.run(w, r)
        }
    }
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
    let hostname = cfg.hostname.clone();
    let Some(m) = cfg.mqtt else {
        return Err(Error::Usage(
            "--broker URL (or MQTT_BROKER) is needed".into(),
        ));
    };
    let mut options = crate::backend::mqtt::options(&m, "", "")
        .map_err(|e| Error::Read(format!("tls settings: {e}")))?;
    options.client_id = format!("container-logd-cli-{hostname}-{}", std::process::id());
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
    Error::Broker(format!("connection lost: {e}"))
}

/// The query's JSON: the filters (`since` given apart), and where to answer.
fn request(a: &Args, since_ms: Option<i64>, limit: Option<usize>, reply: &str, id: &str) -> String {
    let mut q = serde_json::json!({"replyTo": reply, "correlationId": id});
    if let Some(v) = &a.app {
        q["appId"] = v.clone().into();
    }
    if let Some(v) = &a.service {
        q["service"] = v.clone().into();
    }
    if let Some(v) = a.level {
        q["level"] = v.as_str().into();
    }
    if let Some(v) = since_ms {
        q["since"] = v.into();
    }
    if let Some(v) = limit {
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

/// The ids printed lately (the newest [`RECENT`]), and the time of the newest line printed:
/// a line is printed once across the seam between an answer and the live topics, and across
/// a reconnect (whose catch-up query starts at that time).
#[derive(Default)]
struct Printed {
    ids: HashSet<String>,
    order: VecDeque<String>,
    last_ms: Option<i64>,
}

/// Ids remembered; far more than one millisecond's lines.
const RECENT: usize = 20_000;

impl Printed {
    /// Whether `id` was printed lately; if not, it is now remembered.
    fn first_time(&mut self, id: &str, ms: i64) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == RECENT {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        self.last_ms = Some(self.last_ms.map_or(ms, |l| l.max(ms)));
        true
    }
}

/// Why a read stopped.
enum Stop {
    /// Done (no `-f`), or stdout closed.
    Done,
    /// The broker connection broke: `-f` connects again.
    Lost(Error),
}

/// What a message on the reply topic was.
enum Part {
    /// Another query's, or not ours.
    Other,
    /// The next part, printed; more follow.
    More,
    /// The last part, printed (or stdout closed).
    Last,
}

/// `logs --broker --host`: the query and its answer, then with `-f` the live topics, again
/// after every reconnect.
struct Reading<'a, W: Write> {
    a: &'a Args,
    host: &'a str,
    options: &'a wire::Options,
    colour: bool,
    out: &'a mut W,
    printed: Printed,
    /// Queries sent so far (each has a correlation id of its own).
    asked: u64,
}

impl<W: Write> Reading<'_, W> {
    fn run(&mut self, mut w: wire::Writer, mut r: wire::Reader) -> Result<(), Error> {
        let mut first = true;
        let mut backoff = Duration::from_millis(500);
        loop {
            let stop = self.session(&mut w, &mut r, first);
            let _ = w.disconnect();
            let e = match stop {
                Ok(Stop::Done) => return Ok(()),
                Err(e) => return Err(e),
                Ok(Stop::Lost(e)) if !self.a.follow => return Err(e),
                Ok(Stop::Lost(e)) => e,
            };
            first = false;
            loop {
                eprintln!("container-logd logs: {e}; reconnecting in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match wire::connect(self.options) {
                    Ok((w2, r2, _)) => {
                        (w, r) = (w2, r2);
                        eprintln!("container-logd logs: reconnected");
                        backoff = Duration::from_millis(500);
                        break;
                    }
                    Err(err) => eprintln!("container-logd logs: {}", lost(err)),
                }
            }
        }
    }

    /// One connection: subscribes, queries (after a reconnect: from the newest line printed,
    /// as many as a query gives), prints the answer and then, with `-f`, the live topics.
    fn session(
        &mut self,
        w: &mut wire::Writer,
        r: &mut wire::Reader,
        first: bool,
    ) -> Result<Stop, Error> {
        let reply = format!("container-logd/reply/{}", self.options.client_id);
        let live = format!("{}/#", template("MQTT_BASE_TOPIC", self.host));
        let mut filters = vec![reply.as_str()];
        if self.a.follow {
            filters.push(&live);
        }
        let subscribed = w
            .subscribe(1, &filters)
            .and_then(|()| w.flush())
            .map_err(wire::Error::from)
            .and_then(|()| {
                // The SUBACK comes before anything of the subscriptions.
                r.set_read_timeout(Some(ASK_WAIT))?;
                while r.next_message()?.is_some() {}
                r.set_read_timeout(Some(TICK)).map_err(wire::Error::from)
            });
        if let Err(e) = subscribed {
            return Ok(Stop::Lost(lost(e)));
        }
        let mut held = VecDeque::new();
        match self.ask(w, r, &reply, first, &mut held)? {
            Stop::Done if self.a.follow => {}
            stop => return Ok(stop),
        }
        let f = live_filter(self.a);
        for m in held {
            if !self.print_live(&m, &f) {
                return Ok(Stop::Done);
            }
        }
        Ok(self.follow(w, r, &reply, &f))
    }

    /// Sends the query and prints its answer; sends it again (under a new correlation id)
    /// when no part came for [`ASK_WAIT`]: the agent may be reconnecting itself.
    fn ask(
        &mut self,
        w: &mut wire::Writer,
        r: &mut wire::Reader,
        reply: &str,
        first: bool,
        held: &mut VecDeque<Message>,
    ) -> Result<Stop, Error> {
        let (since, limit) = match (first, self.printed.last_ms) {
            (false, Some(ms)) => (Some(ms), Some(crate::fleet::request::MAX_LIMIT)),
            _ => (self.a.since_ms, self.a.limit),
        };
        let query = template("MQTT_QUERY_TOPIC", self.host);
        for attempt in 0..ASKS {
            self.asked += 1;
            let correlation = format!("cli-{}-{}", std::process::id(), self.asked);
            let body = request(self.a, since, limit, reply, &correlation);
            let sent = w
                .publish(0, &query, body.as_bytes(), 0, false, false)
                .and_then(|()| w.flush());
            if let Err(e) = sent {
                return Ok(Stop::Lost(lost(e)));
            }
            match self.answer(r, reply, &correlation, held)? {
                Some(stop) => return Ok(stop),
                None if attempt + 1 < ASKS => {
                    log::debug!("no answer yet from {}; asking again", self.host);
                }
                None => {}
            }
        }
        Err(Error::Read(format!(
            "no answer from {} within {} s: is the agent there, with MQTT_QUERY=true and the \
             same MQTT_QUERY_TOPIC?",
            self.host,
            (ASK_WAIT * ASKS).as_secs()
        )))
    }

    /// Prints the answer's parts in order until the last; holds live messages meanwhile.
    /// `None` when no part came for [`ASK_WAIT`].
    fn answer(
        &mut self,
        r: &mut wire::Reader,
        reply: &str,
        correlation: &str,
        held: &mut VecDeque<Message>,
    ) -> Result<Option<Stop>, Error> {
        let mut next = 1u64;
        let mut deadline = Instant::now() + ASK_WAIT;
        loop {
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let m = match r.next_message() {
                Ok(Some(m)) => m,
                Ok(None) | Err(wire::Error::Timeout) => continue,
                Err(e) => return Ok(Some(Stop::Lost(lost(e)))),
            };
            if m.topic != reply {
                if self.a.follow {
                    if held.len() >= HOLD_MAX {
                        return Err(Error::Read("the live topics outran the answer".into()));
                    }
                    held.push_back(m);
                }
                continue;
            }
            match self.part(&m, correlation, next)? {
                Part::Other => {}
                Part::More => {
                    next += 1;
                    deadline = Instant::now() + ASK_WAIT;
                }
                Part::Last => return Ok(Some(Stop::Done)),
            }
        }
    }

    /// Prints part `next` of the answer to `correlation`.
    fn part(&mut self, m: &Message, correlation: &str, next: u64) -> Result<Part, Error> {
        let text = String::from_utf8_lossy(&m.payload);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return Ok(Part::Other);
        };
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
            if !self.print(item, None) {
                return Ok(Part::Last);
            }
        }
        Ok(if v["last"] == true {
            Part::Last
        } else {
            Part::More
        })
    }

    /// Prints one message's JSON as `logs` does, unless `f` refuses it or it was printed
    /// already; false when stdout is closed.
    fn print(&mut self, item: &str, f: Option<&Filter>) -> bool {
        let all = Filter::default();
        let Some((ok, id, ms)) = json_matches(item, f.unwrap_or(&all)) else {
            return true;
        };
        if !ok || !self.printed.first_time(&id, ms) {
            return true;
        }
        let line = if self.a.json {
            item.to_string()
        } else {
            format_line(item, self.colour)
        };
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .is_ok()
    }

    /// Prints the messages of a live publish (one, or a batch) that pass `f`; false when
    /// stdout is closed.
    fn print_live(&mut self, m: &Message, f: &Filter) -> bool {
        let text = String::from_utf8_lossy(&m.payload);
        let items = if m.topic.ends_with("/batch") {
            logs_of(&text).unwrap_or_default()
        } else {
            vec![text.as_ref()]
        };
        items.into_iter().all(|item| self.print(item, Some(f)))
    }

    /// Prints the live messages as they come, pinging the broker to keep the connection.
    fn follow(
        &mut self,
        w: &mut wire::Writer,
        r: &mut wire::Reader,
        reply: &str,
        f: &Filter,
    ) -> Stop {
        if let Err(e) = r.set_read_timeout(Some(TICK)) {
            return Stop::Lost(lost(e));
        }
        let mut last_write = Instant::now();
        loop {
            match r.next_message() {
                Ok(Some(m)) if m.topic != reply => {
                    if !self.print_live(&m, f) {
                        return Stop::Done;
                    }
                }
                Ok(_) | Err(wire::Error::Timeout) => {}
                Err(e) => return Stop::Lost(lost(e)),
            }
            if last_write.elapsed() >= self.options.keep_alive / 2 {
                if let Err(e) = w.ping().and_then(|()| w.flush()) {
                    return Stop::Lost(lost(e));
                }
                last_write = Instant::now();
            }
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
    r.set_read_timeout(Some(ASK_WAIT * ASKS)).map_err(lost)?;
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
        let v: serde_json::Value =
            serde_json::from_str(&request(&a, Some(7), a.limit, "r/1", "c")).expect("json");
        assert_eq!(v["appId"], "1001");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["limit"], 5);
        assert_eq!(v["replyTo"], "r/1");
        assert_eq!(v["correlationId"], "c");
        assert_eq!(v["since"], 7);
    }

    #[test]
    fn a_line_is_printed_once() {
        let mut p = Printed::default();
        assert!(p.first_time("a", 5));
        assert!(!p.first_time("a", 5));
        assert!(p.first_time("b", 3));
        assert_eq!(p.last_ms, Some(5));
        for i in 0..RECENT {
            p.first_time(&i.to_string(), 6);
        }
        assert!(p.first_time("a", 7), "forgotten beyond RECENT");
    }
}
