//! `container-logd logs`: reads a running agent's logs through its HTTP API (`API_LISTEN`,
//! `API_TOKEN` from the same environment), prints `time service level message`, coloured by
//! level on a terminal, or the JSON lines as they came with `--json`; `-f` follows the live
//! stream and resumes with `Last-Event-ID` after a break.
//!
//! It only reads from the agent: it must never write to the agent's files or state, and never
//! print the token.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FAILED, OK, USAGE};
use crate::api::query::parse_time;
use crate::config::{Config, Secret};
use crate::message::Level;

const HELP: &str = "\
usage: container-logd logs [--broker URL --host NAME] [--app ID] [--service NAME] [--level LEVEL] [--since TIME] [--limit N] [-f|--follow] [--json]
       container-logd logs --broker URL --hosts [--json]

  --app ID         only this app (appId)
  --service NAME   only this service
  --level LEVEL    this level and worse: error, warn, info, debug
  --since TIME     from this time: ms since the epoch, RFC 3339, or an age like 90s, 10m, 2h, 1d
  --limit N        at most the newest N lines (default 1000)
  -f, --follow     keep printing new lines as they come
  --json           print the messages as JSON lines, as the agent sends them
  --broker URL     read over MQTT through this broker (default: MQTT_BROKER) …
  --host NAME      … from the agent whose {hostname} is NAME (it needs MQTT_QUERY=true)
  --hosts          list the hosts whose status the broker holds, with their health

The agent is reached at API_LISTEN (default 127.0.0.1:7780), with API_TOKEN when set; over MQTT
with the MQTT_* variables (credentials, TLS, version, topics with {hostname} as NAME).";

/// How long a follow waits without a byte (heartbeats come every 15 s) before it reconnects.
const STALL: Duration = Duration::from_secs(45);
const CONNECT: Duration = Duration::from_secs(3);
/// The longest wait between reconnects while following.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the user asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub app: Option<String>,
    pub service: Option<String>,
    pub level: Option<Level>,
    /// ms since the epoch.
    pub since_ms: Option<i64>,
    pub limit: Option<usize>,
    pub follow: bool,
    pub json: bool,
    pub help: bool,
    /// Read over MQTT through this broker (`MQTT_BROKER` when only `--host`/`--hosts`).
    pub broker: Option<String>,
    /// Read over MQTT from this host.
    pub host: Option<String>,
    /// List the hosts over MQTT.
    pub hosts: bool,
}

/// Why `logs` failed; each says what to do about it.
#[derive(Debug)]
pub enum Error {
    /// The command line is wrong.
    Usage(String),
    /// The configuration in the environment is wrong.
    Config(crate::config::Error),
    /// `API_LISTEN=off`: there is no API to read from.
    ApiOff,
    /// Nothing answers at the address.
    Unreachable { addr: String, detail: String },
    /// The agent answered with an error status.
    Status { status: u16, body: String },
    /// The agent's answer could not be read.
    Read(String),
    /// The broker could not be reached, or its connection broke (`--broker`).
    Broker(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}\n\n{HELP}"),
            Error::Config(e) => write!(f, "configuration: {e}"),
            Error::ApiOff => f.write_str(
                "API_LISTEN=off: the agent serves no API; set API_LISTEN (e.g. 127.0.0.1:7780) \
                 for the agent and for this command",
            ),
            Error::Unreachable { addr, detail } => write!(
                f,
                "agent not running at {addr} ({detail}): start it with `systemctl start \
                 container-logd` or `container-logd run`, or set API_LISTEN to where it listens"
            ),
            Error::Status { status: 401, .. } => f.write_str(
                "the agent wants a token: set API_TOKEN to the agent's token (see \
                 /etc/default/container-logd)",
            ),
            Error::Status { status, body } => write!(f, "the agent answered {status}: {body}"),
            Error::Read(m) => write!(f, "cannot read the agent's answer: {m}"),
            Error::Broker(m) => write!(
                f,
                "broker: {m} (check --broker or MQTT_BROKER, and MQTT_USERNAME, MQTT_PASSWORD, \
                 MQTT_CA_FILE, MQTT_VERSION as the agents have them)"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    fn code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) => USAGE,
            Error::Status { status: 400, .. } => USAGE,
            _ => FAILED,
        }
    }
}

/// Parses `--since`: ms since the epoch, RFC 3339, or an age (`90s`, `10m`, `2h`, `1d`).
pub fn parse_since(s: &str, now_ms: i64) -> Option<i64> {
    let unit = match s.as_bytes().last()? {
        b's' => Some(1_000),
        b'm' => Some(60_000),
        b'h' => Some(3_600_000),
        b'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(unit) = unit {
        if let Ok(n) = s[..s.len() - 1].parse::<i64>() {
            return (n >= 0).then(|| now_ms - n.saturating_mul(unit));
        }
    }
    parse_time(s)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses the arguments after `logs`.
pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => Err(format!("{name} needs {what}")),
            }
        };
        match name {
            "--app" => a.app = Some(value("an app id")?),
            "--service" => a.service = Some(value("a service name")?),
            "--level" => {
                let v = value("a level")?;
                a.level = Some(Level::parse_name(&v).ok_or_else(|| {
                    format!("--level {v:?}: expected one of error, warn, info, debug")
                })?);
            }
            "--since" => {
                let v = value("a time")?;
                a.since_ms = Some(parse_since(&v, now_ms()).ok_or_else(|| {
                    format!(
                        "--since {v:?}: expected ms since the epoch, RFC 3339 or an age like 10m"
                    )
                })?);
            }
            "--limit" => {
                let v = value("a number")?;
                a.limit = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=crate::api::query::MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            format!(
                                "--limit {v:?}: expected a whole number from 1 to {}",
                                crate::api::query::MAX_LIMIT
                            )
                        })?,
                );
            }
            "--broker" => a.broker = Some(value("a broker URL")?),
            "--host" => a.host = Some(value("a host name")?),
            "--hosts" if inline.is_none() => a.hosts = true,
            "-f" | "--follow" if inline.is_none() => a.follow = true,
            "--json" if inline.is_none() => a.json = true,
            "-h" | "--help" if inline.is_none() => a.help = true,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    check_mqtt_args(&a)?;
    Ok(a)
}

/// What goes together for a read over MQTT.
fn check_mqtt_args(a: &Args) -> Result<(), String> {
    match (&a.host, a.hosts, &a.broker) {
        (Some(_), true, _) => Err("--host and --hosts do not go together".into()),
        (None, false, Some(_)) => Err("--broker needs --host NAME or --hosts".into()),
        _ if a.hosts && a.follow => Err("--hosts does not follow".into()),
        _ => Ok(()),
    }
}

/// Appends `name=value` to a query string, percent-encoding the value.
fn push_param(q: &mut String, name: &str, value: &str) {
    q.push(if q.is_empty() { '?' } else { '&' });
    q.push_str(name);
    q.push('=');
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The query string of the filters (and, unless resuming, of the backlog).
fn query(a: &Args, backlog: bool) -> String {
    let mut q = String::new();
    if let Some(v) = &a.app {
        push_param(&mut q, "appId", v);
    }
    if let Some(v) = &a.service {
        push_param(&mut q, "service", v);
    }
    if let Some(l) = a.level {
        push_param(&mut q, "level", l.as_str());
    }
    if backlog {
        if let Some(s) = a.since_ms {
            push_param(&mut q, "since", &s.to_string());
        }
        let limit = a.limit.unwrap_or(crate::api::query::DEFAULT_LIMIT);
        push_param(&mut q, "limit", &limit.to_string());
    }
    q
}

/// Splits the agent's JSON array (`[{…},{…}]`) into its elements, byte for byte as sent.
pub fn split_array(body: &str) -> Result<Vec<&str>, String> {
    let s = body.trim();
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or("not a JSON array")?;
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut esc, mut start) = (0i32, false, false, 0usize);
    for (i, c) in inner.char_indices() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced JSON".into());
        }
    }
    if depth != 0 || in_str {
        return Err("unbalanced JSON".into());
    }
    let last = inner[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    Ok(out)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of ms since the epoch (UTC: the agent's hosts rarely agree on a
/// zone, and UTC lines sort as text).
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = crate::engine::timestamp::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// One printed line: `time service level message`.
pub fn format_line(json: &str, colour: bool) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_string();
    };
    let time = v["timestamp"].as_i64().map(format_time).unwrap_or_default();
    let service = v["serviceName"]
        .as_str()
        .or_else(|| v["source"]["name"].as_str())
        .unwrap_or("-");
    let level = v["level"].as_str().unwrap_or("info");
    let message = v["message"].as_str().unwrap_or("");
    if !colour {
        return format!("{time} {service} {level:<5} {message}");
    }
    let (on, msg_on) = match level {
        "error" => ("\x1b[1;31m", "\x1b[31m"),
        "warn" => ("\x1b[1;33m", "\x1b[33m"),
        "debug" => ("\x1b[2m", "\x1b[2m"),
        _ => ("\x1b[1m", ""),
    };
    let msg_off = if msg_on.is_empty() { "" } else { "\x1b[0m" };
    format!(
        "\x1b[2m{time}\x1b[0m \x1b[36m{service}\x1b[0m {on}{level:<5}\x1b[0m {msg_on}{message}{msg_off}"
    )
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads Server-Sent Events line by line (the parts of the format our agent sends).
#[derive(Default)]
pub struct SseParser {
    cur: Event,
    has_data: bool,
}

impl SseParser {
    /// Takes one line without its line end; returns an event when a blank line ends one.
    pub fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let has = std::mem::take(&mut self.has_data);
            let ev = std::mem::take(&mut self.cur);
            return (has || ev.event.is_some()).then_some(ev);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if self.has_data {
                    self.cur.data.push('\n');
                }
                self.cur.data.push_str(value);
                self.has_data = true;
            }
            "id" => self.cur.id = Some(value.to_string()),
            "event" => self.cur.event = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// Where the agent's API is, as an address this host can connect to.
fn target(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

struct Client {
    agent: ureq::Agent,
    base: String,
    addr: String,
    token: Option<Secret>,
}

impl Client {
    fn get(
        &self,
        path_query: &str,
        last_event_id: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let mut req = self.agent.get(format!("{}{path_query}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {}", t.expose()));
        }
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let mut resp = req.call().map_err(|e| match e {
            ureq::Error::Io(io) => Error::Unreachable {
                addr: self.addr.clone(),
                detail: io.to_string(),
            },
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => Error::Unreachable {
                addr: self.addr.clone(),
                detail: e.to_string(),
            },
            ureq::Error::Timeout(_) => Error::Unreachable {
                addr: self.addr.clone(),
                detail: "no answer in time".into(),
            },
            other => Error::Read(other.to_string()),
        })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp
                .body_mut()
                .read_to_string()
                .unwrap_or_default()
                .trim()
                .to_string();
            let body = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(body);
            return Err(Error::Status { status, body });
        }
        Ok(resp)
    }
}

/// Runs `logs` with the arguments after the word `logs`; returns the exit code.
pub fn main(args: &[String]) -> u8 {
    match run(args) {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("container-logd logs: {e}");
            e.code()
        }
    }
}

fn run(args: &[String]) -> Result<(), Error> {
    let a = parse_args(args).map_err(Error::Usage)?;
    if a.help {
        println!("{HELP}");
        return Ok(());
    }
    let colour =
        !a.json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    if a.host.is_some() || a.hosts {
        return super::fleet::run(&a, colour, &mut std::io::stdout().lock());
    }
    let cfg = Config::from_process_env().map_err(Error::Config)?;
    let listen = cfg.api_listen.ok_or(Error::ApiOff)?;
    let addr = target(listen);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT))
        .timeout_per_read(Some(STALL))
        .build()
        .into();
    let client = Client {
        agent,
        base: format!("http://{addr}"),
        addr: addr.to_string(),
        token: cfg.api_token.clone(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.follow {
        follow(&client, &a, colour, &mut out)
    } else {
        let mut resp = client.get(&format!("/api/v1/logs{}", query(&a, true)), None)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|e| Error::Read(e.to_string()))?;
        for item in split_array(&body).map_err(Error::Read)? {
            let line = if a.json {
                item.to_string()
            } else {
                format_line(item, colour)
            };
            // A closed pipe (`| head`) is a normal way to stop.
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        Ok(())
    }
}

/// Prints the live stream; after a break, reconnects with the last id so nothing is missed or
/// printed twice. Ends only on a broken stdout or an error the user must fix.
fn follow(client: &Client, a: &Args, colour: bool, out: &mut impl Write) -> Result<(), Error> {
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(500);
    let mut connected_once = false;
    loop {
        let path = format!("/api/v1/logs/stream{}", query(a, last_id.is_none()));
        let resp = match client.get(&path, last_id.as_deref()) {
            Ok(r) => r,
            // Before the first line the user learns at once that the agent is not there.
            Err(e @ Error::Unreachable { .. }) if !connected_once => return Err(e),
            Err(
                e @ (Error::Status {
                    status: 400 | 401, ..
                }
                | Error::Config(_)),
            ) => return Err(e),
            Err(e) => {
                eprintln!("container-logd logs: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if connected_once {
            eprintln!("container-logd logs: reconnected");
        }
        connected_once = true;
        backoff = Duration::from_millis(500);
        let reader = BufReader::new(resp.into_body().into_reader());
        let mut parser = SseParser::default();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Some(ev) = parser.line(line.trim_end_matches('\r')) else {
                continue;
            };
            if ev.event.as_deref() == Some("overflow") {
                eprintln!("container-logd logs: fell behind the agent; catching up");
                break;
            }
            if ev.id.is_some() {
                last_id = ev.id;
            }
            let text = if a.json {
                ev.data
            } else {
                format_line(&ev.data, colour)
            };
            if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
        eprintln!("container-logd logs: stream ended; reconnecting");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        let v: Vec<String> = s.split_whitespace().map(str::to_string).collect();
        parse_args(&v)
    }

    #[test]
    fn arguments() {
        let a = args("--app 1001 --service=web --level warning -f --json --limit 5").expect("ok");
        assert_eq!(a.app.as_deref(), Some("1001"));
        assert_eq!(a.service.as_deref(), Some("web"));
        assert_eq!(a.level, Some(Level::Warn));
        assert!(a.follow && a.json);
        assert_eq!(a.limit, Some(5));
        assert!(args("--level loud").is_err());
        assert!(args("--limit 0").is_err());
        assert!(args("--app").is_err());
        assert!(args("--colour").is_err());
        assert_eq!(
            query(&a, true),
            "?appId=1001&service=web&level=warn&limit=5"
        );
        assert_eq!(query(&a, false), "?appId=1001&service=web&level=warn");
    }

    #[test]
    fn since_forms() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_since("10m", now), Some(now - 600_000));
        assert_eq!(parse_since("2h", now), Some(now - 7_200_000));
        assert_eq!(parse_since("1696195200000", now), Some(1_696_195_200_000));
        assert_eq!(
            parse_since("2023-10-01T21:20:00Z", now),
            Some(1_696_195_200_000)
        );
        assert_eq!(parse_since("soon", now), None);
    }

    #[test]
    fn array_split_keeps_bytes() {
        let body = r#"[{"a":"x,]}\"y","b":[1,2]},{"c":{"d":1}}]"#;
        assert_eq!(
            split_array(body).expect("ok"),
            vec![r#"{"a":"x,]}\"y","b":[1,2]}"#, r#"{"c":{"d":1}}"#]
        );
        assert_eq!(split_array("[]").expect("ok"), Vec::<&str>::new());
        assert!(split_array("{}").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_696_195_200_123), "2023-10-01T21:20:00.123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines() {
        let j = r#"{"message":"hi","timestamp":0,"level":"warn","serviceName":"web"}"#;
        assert_eq!(
            format_line(j, false),
            "1970-01-01T00:00:00.000Z web warn  hi"
        );
        assert!(format_line(j, true).contains("\x1b[33mhi"));
    }

    #[test]
    fn sse_events() {
        let mut p = SseParser::default();
        let mut got = Vec::new();
        for l in [
            "retry: 2000",
            ": connected",
            "",
            "id: a-1",
            "data: {\"x\":1}",
            "",
            ": heartbeat",
            "",
            "event: overflow",
            "data: {}",
            "",
        ] {
            got.extend(p.line(l));
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id.as_deref(), Some("a-1"));
        assert_eq!(got[0].data, "{\"x\":1}");
        assert_eq!(got[1].event.as_deref(), Some("overflow"));
    }
}
