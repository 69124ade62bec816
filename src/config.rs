//! Configuration: environment strings in, a validated, typed [`Config`] out.
//!
//! One table, [`VARS`], holds every variable of docs/CONTRACT.md §3 with its default, its one-line help
//! and its parser; [`Config::from_env`] applies each row (the value, or else the default), then
//! checks in a second pass what spans several variables. An error names the variable and the
//! bad value. `--help` and the settings file's test read the same table. This module never
//! logs secrets: [`Secret`] prints as `***`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::engine::Addr;
use crate::message::Level;

/// A configuration problem; the agent exits with code 2 on any of these.
#[derive(Debug)]
pub enum Error {
    /// A variable holds a value we cannot use.
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// The value as given, trimmed (never a secret's value: their parsers accept anything).
        value: String,
        /// What was expected.
        expected: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid {
                var,
                value,
                expected,
            } => write!(f, "{var}={value:?} is not valid: {expected}"),
        }
    }
}

impl std::error::Error for Error {}

/// A string that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a container never seen before starts reading (`SINCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinceMode {
    /// Everything the engine has for containers started after the agent's last stop, else now.
    Cursor,
    /// Everything the engine still has.
    All,
    /// Only lines written from now on.
    Now,
}

/// A container-name pattern with `*` and `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.to_string())
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with one back-tracking point per `*`: linear enough for names.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// The MQTT backend's settings; absent when `MQTT_BROKER=off`.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtts://` given.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: String,
    /// The base topic with `{hostname}` already substituted.
    pub base_topic: String,
    pub qos: u8,
    pub retain: bool,
    pub batch: bool,
    pub batch_interval: Duration,
    pub batch_max: usize,
    pub keepalive: Duration,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub spool_max_bytes: u64,
    /// The status topic with `{hostname}` already substituted.
    pub status_topic: String,
    /// The protocol spoken with the broker.
    pub version: MqttVersion,
    /// The message expiry interval of every log publish (MQTT 5 only); `None`: no expiry.
    pub message_expiry: Option<u32>,
    /// Answer log queries on `query_topic` (docs/CONTRACT.md §10).
    pub query: bool,
    pub query_topic: String,
    /// Publish Home Assistant discovery configs under `ha_prefix`; a service's are removed
    /// `ha_expiry` after its last line.
    pub ha_discovery: bool,
    pub ha_prefix: String,
    pub ha_expiry: Duration,
}

/// The MQTT protocol version (`MQTT_VERSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

impl MqttVersion {
    /// As a user writes it: `3.1.1` or `5`.
    pub fn as_str(self) -> &'static str {
        match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub docker_host: String,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_max_memory: usize,
    pub log_file_persistence: bool,
    pub log_file_max_bytes: u64,
    pub log_file_keep: u32,
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
    pub app_id_labels: Vec<String>,
    pub service_name_labels: Vec<String>,
    pub service_id_labels: Vec<String>,
    pub level_stdout: Level,
    pub level_stderr: Level,
    pub max_line_bytes: usize,
    pub multiline: bool,
    pub rate_limit_lines: u32,
    pub rate_limit_burst: u32,
    pub since: SinceMode,
    pub api_listen: Option<SocketAddr>,
    pub api_token: Option<Secret>,
    /// Connections the API serves at once, live streams included; one more gets 503.
    pub api_max_connections: usize,
    /// How long a connection has to send a complete request head.
    pub api_header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub api_idle_timeout: Duration,
    pub mqtt: Option<MqttConfig>,
    pub log_level: log::LevelFilter,
    pub hostname: String,
}

/// One environment variable: its name, default, meaning and parser, in one place. [`VARS`]
/// lists them all; [`Config::from_env`], `--help` and the settings file's test read it.
pub struct Var {
    /// The variable's name, e.g. `LOG_DIR`.
    pub name: &'static str,
    /// The default, written as a user would write the value; empty means none.
    pub default: &'static str,
    /// One line that says what the variable does (the settings file has the same line).
    pub help: &'static str,
    /// Checks a value and writes it into the draft; on failure, says what was expected.
    apply: fn(&mut Draft, &str) -> Result<(), String>,
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.default)
    }
}

/// Every variable, in SPEC order. Each is applied once by [`Config::from_env`], with its value
/// or else its default, so every default lives here and nowhere else.
pub static VARS: &[Var] = &[
    Var {
        name: "DOCKER_HOST",
        default: "unix:///var/run/docker.sock",
        help: "The engine's socket (balenaEngine: unix:///var/run/balena-engine.sock); \
               tcp://host:port for a read-only docker-socket-proxy.",
        apply: |d, v| set(&mut d.cfg.docker_host, docker_host(v)),
    },
    Var {
        name: "LOG_DIR",
        default: "./data/logs",
        help: "Log files, one per service: LOG_DIR/{appId}/{serviceName}.log.",
        apply: |d, v| set(&mut d.cfg.log_dir, Ok(PathBuf::from(v))),
    },
    Var {
        name: "STATE_DIR",
        default: "./data/state",
        help: "Resume cursors and the MQTT spool.",
        apply: |d, v| set(&mut d.cfg.state_dir, Ok(PathBuf::from(v))),
    },
    Var {
        name: "LOG_MAX_MEMORY",
        default: "10000",
        help: "Log messages kept in memory for the HTTP API.",
        apply: |d, v| set(&mut d.cfg.log_max_memory, num(v, 1, 10_000_000)),
    },
    Var {
        name: "LOG_FILE_PERSISTENCE",
        default: "true",
        help: "Write log files at all (true/false).",
        apply: |d, v| set(&mut d.cfg.log_file_persistence, boolean(v)),
    },
    Var {
        name: "LOG_FILE_MAX_BYTES",
        default: "10485760",
        help: "Rotate a log file when it reaches this many bytes.",
        apply: |d, v| set(&mut d.cfg.log_file_max_bytes, num(v, 4096, u64::MAX / 2)),
    },
    Var {
        name: "LOG_FILE_KEEP",
        default: "3",
        help: "Rotated files kept per log file.",
        apply: |d, v| set(&mut d.cfg.log_file_keep, num(v, 0, 1000)),
    },
    Var {
        name: "CONTAINERS_INCLUDE",
        default: "",
        help: "Comma-separated glob patterns on container names to follow (empty: all).",
        apply: |d, v| set(&mut d.cfg.include, Ok(globs(v))),
    },
    Var {
        name: "CONTAINERS_EXCLUDE",
        default: "",
        help: "Comma-separated glob patterns on container names to skip (empty: none); \
               label container-logd.ignore=true also skips.",
        apply: |d, v| set(&mut d.cfg.exclude, Ok(globs(v))),
    },
    Var {
        name: "APP_ID_LABELS",
        default: "io.balena.app-id,com.docker.compose.project",
        help: "Labels tried in order for appId; none present: standalone.",
        apply: |d, v| set(&mut d.cfg.app_id_labels, Ok(list(v))),
    },
    Var {
        name: "SERVICE_NAME_LABELS",
        default: "io.balena.service-name,com.docker.compose.service",
        help: "Labels tried in order for serviceName; none present: the container name.",
        apply: |d, v| set(&mut d.cfg.service_name_labels, Ok(list(v))),
    },
    Var {
        name: "SERVICE_ID_LABELS",
        default: "io.balena.service-id",
        help: "Labels tried in order for serviceId; none present: null.",
        apply: |d, v| set(&mut d.cfg.service_id_labels, Ok(list(v))),
    },
    Var {
        name: "LEVEL_STDOUT",
        default: "info",
        help: "Level of a stdout line whose text names none (error, warn, info, debug).",
        apply: |d, v| set(&mut d.cfg.level_stdout, level(v)),
    },
    Var {
        name: "LEVEL_STDERR",
        default: "error",
        help: "Level of a stderr line whose text names none.",
        apply: |d, v| set(&mut d.cfg.level_stderr, level(v)),
    },
    Var {
        name: "MAX_LINE_BYTES",
        default: "65536",
        help: "Longer lines are cut and marked truncated.",
        apply: |d, v| set(&mut d.cfg.max_line_bytes, num(v, 64, 16 << 20)),
    },
    Var {
        name: "MULTILINE",
        default: "off",
        help: "auto: join stack traces and indented continuation lines to the line that \
               began them; off: never.",
        apply: |d, v| {
            set(
                &mut d.cfg.multiline,
                one_of(v, &[("off", false), ("auto", true)]),
            )
        },
    },
    Var {
        name: "RATE_LIMIT_LINES",
        default: "0",
        help: "Per container, lines per second kept (0: no limit); error lines are always kept.",
        apply: |d, v| set(&mut d.cfg.rate_limit_lines, num(v, 0, 1_000_000)),
    },
    Var {
        name: "RATE_LIMIT_BURST",
        default: "1000",
        help: "Per container, lines allowed in a burst above RATE_LIMIT_LINES.",
        apply: |d, v| set(&mut d.cfg.rate_limit_burst, num(v, 1, 10_000_000)),
    },
    Var {
        name: "SINCE",
        default: "cursor",
        help: "Where a container never seen before starts: cursor, all or now.",
        apply: |d, v| set(&mut d.cfg.since, one_of(v, SINCE_MODES)),
    },
    Var {
        name: "API_LISTEN",
        default: "127.0.0.1:7780",
        help: "Address of the HTTP API; off disables it.",
        apply: |d, v| set(&mut d.cfg.api_listen, listen(v)),
    },
    Var {
        name: "API_TOKEN",
        default: "",
        help: "Bearer token for the API (empty: none); required when API_LISTEN is not a \
               loopback address.",
        apply: |d, v| set(&mut d.cfg.api_token, Ok(optional(v).map(Secret::new))),
    },
    Var {
        name: "API_MAX_CONNECTIONS",
        default: "64",
        help: "API connections served at once, live streams included (each holds a thread); \
               one more is answered 503 and closed.",
        apply: |d, v| set(&mut d.cfg.api_max_connections, num(v, 1, 4096)),
    },
    Var {
        name: "API_HEADER_TIMEOUT_S",
        default: "10",
        help: "Seconds an API connection has to send a complete request head; then it is closed.",
        apply: |d, v| set(&mut d.cfg.api_header_timeout, secs(v, 1, 3600)),
    },
    Var {
        name: "API_IDLE_TIMEOUT_S",
        default: "60",
        help: "Seconds a keep-alive API connection may wait for its next request; then it is \
               closed.",
        apply: |d, v| set(&mut d.cfg.api_idle_timeout, secs(v, 1, 3600)),
    },
    Var {
        name: "MQTT_BROKER",
        default: "mqtt://localhost:1883",
        help: "The broker: mqtt://host:port or mqtts://host:port (TLS); off disables MQTT.",
        apply: apply_broker,
    },
    Var {
        name: "MQTT_USERNAME",
        default: "",
        help: "Broker user name (empty: none).",
        apply: |d, v| set(&mut d.mqtt.username, Ok(optional(v))),
    },
    Var {
        name: "MQTT_PASSWORD",
        default: "",
        help: "Broker password (empty: none); prefer MQTT_PASSWORD_FILE.",
        apply: |d, v| set(&mut d.mqtt.password, Ok(optional(v).map(Secret::new))),
    },
    Var {
        name: "MQTT_PASSWORD_FILE",
        default: "",
        help: "File holding the broker password (empty: none).",
        apply: |d, v| set(&mut d.password_file, Ok(path(v))),
    },
    Var {
        name: "MQTT_CLIENT_ID",
        default: "container-logd-{hostname}",
        help: "MQTT client id; {hostname} is replaced by the host name.",
        apply: |d, v| set(&mut d.mqtt.client_id, client_id(v, &d.cfg.hostname)),
    },
    Var {
        name: "MQTT_BASE_TOPIC",
        default: "container-manager/logs",
        help: "Topic prefix of every log message; may hold {hostname}, e.g. logs/{hostname}.",
        apply: |d, v| set(&mut d.mqtt.base_topic, topic(v, &d.cfg.hostname)),
    },
    Var {
        name: "MQTT_QOS",
        default: "1",
        help: "Quality of service: 0, 1 or 2.",
        apply: |d, v| set(&mut d.mqtt.qos, num(v, 0, 2)),
    },
    Var {
        name: "MQTT_RETAIN",
        default: "false",
        help: "Publish log messages retained (true/false).",
        apply: |d, v| set(&mut d.mqtt.retain, boolean(v)),
    },
    Var {
        name: "MQTT_BATCH",
        default: "false",
        help: "Publish batches of messages instead of one message each (true/false).",
        apply: |d, v| set(&mut d.mqtt.batch, boolean(v)),
    },
    Var {
        name: "MQTT_BATCH_INTERVAL_MS",
        default: "1000",
        help: "Longest wait before a batch goes out, in milliseconds.",
        apply: |d, v| set(&mut d.mqtt.batch_interval, millis(v, 10, 3_600_000)),
    },
    Var {
        name: "MQTT_BATCH_MAX",
        default: "50",
        help: "Most messages in one batch.",
        apply: |d, v| set(&mut d.mqtt.batch_max, num(v, 1, 10_000)),
    },
    Var {
        name: "MQTT_KEEPALIVE_S",
        default: "30",
        help: "MQTT keep-alive, in seconds.",
        apply: |d, v| set(&mut d.mqtt.keepalive, secs(v, 5, 65_535)),
    },
    Var {
        name: "MQTT_CA_FILE",
        default: "",
        help: "CA certificates (PEM) to trust for mqtts:// (empty: the system roots).",
        apply: |d, v| set(&mut d.mqtt.ca_file, Ok(path(v))),
    },
    Var {
        name: "MQTT_CLIENT_CERT_FILE",
        default: "",
        help: "Client certificate (PEM) for mqtts:// (empty: none).",
        apply: |d, v| set(&mut d.mqtt.client_cert_file, Ok(path(v))),
    },
    Var {
        name: "MQTT_CLIENT_KEY_FILE",
        default: "",
        help: "Client private key (PEM) for mqtts:// (empty: none).",
        apply: |d, v| set(&mut d.mqtt.client_key_file, Ok(path(v))),
    },
    Var {
        name: "MQTT_SPOOL_MAX_BYTES",
        default: "67108864",
        help: "Disk spool for messages the broker has not acknowledged, in bytes; oldest \
               dropped first.",
        apply: |d, v| set(&mut d.mqtt.spool_max_bytes, num(v, 0, u64::MAX / 2)),
    },
    Var {
        name: "MQTT_STATUS_TOPIC",
        default: "container-manager/status/{hostname}",
        help: "Retained online/offline status topic; may hold {hostname}.",
        apply: |d, v| set(&mut d.mqtt.status_topic, topic(v, &d.cfg.hostname)),
    },
    Var {
        name: "MQTT_VERSION",
        default: "3.1.1",
        help: "MQTT protocol version: 3.1.1 (also written 4) or 5.",
        apply: |d, v| set(&mut d.mqtt.version, one_of(v, MQTT_VERSIONS)),
    },
    Var {
        name: "MQTT_MESSAGE_EXPIRY_S",
        default: "",
        help: "MQTT 5 only: seconds a broker keeps a log message for a subscriber that is away \
               (empty: no expiry).",
        apply: |d, v| set(&mut d.mqtt.message_expiry, expiry(v)),
    },
    Var {
        name: "MQTT_QUERY",
        default: "false",
        help: "Answer log queries sent over MQTT (true/false).",
        apply: |d, v| set(&mut d.mqtt.query, boolean(v)),
    },
    Var {
        name: "MQTT_QUERY_TOPIC",
        default: "container-manager/query/{hostname}",
        help: "Topic the agent takes log queries on; may hold {hostname}.",
        apply: |d, v| set(&mut d.mqtt.query_topic, topic(v, &d.cfg.hostname)),
    },
    Var {
        name: "HA_DISCOVERY",
        default: "false",
        help: "Publish Home Assistant MQTT discovery configs for this host and its services \
               (true/false).",
        apply: |d, v| set(&mut d.mqtt.ha_discovery, boolean(v)),
    },
    Var {
        name: "HA_DISCOVERY_PREFIX",
        default: "homeassistant",
        help: "Home Assistant's discovery prefix.",
        apply: |d, v| set(&mut d.mqtt.ha_prefix, topic(v, &d.cfg.hostname)),
    },
    Var {
        name: "HA_DISCOVERY_EXPIRY_S",
        default: "86400",
        help: "Seconds after its last line that a service's discovery configs are removed \
               (shorter only for tests).",
        apply: |d, v| set(&mut d.mqtt.ha_expiry, secs(v, 1, 10 * 365 * 86_400)),
    },
    Var {
        name: "LOG_LEVEL",
        default: "info",
        help: "The agent's own verbosity: error, warn, info or debug.",
        apply: |d, v| set(&mut d.cfg.log_level, one_of(v, LOG_LEVELS)),
    },
];

const SINCE_MODES: &[(&str, SinceMode)] = &[
    ("cursor", SinceMode::Cursor),
    ("all", SinceMode::All),
    ("now", SinceMode::Now),
];

const MQTT_VERSIONS: &[(&str, MqttVersion)] = &[
    ("3.1.1", MqttVersion::V311),
    ("4", MqttVersion::V311),
    ("5", MqttVersion::V5),
];

const LOG_LEVELS: &[(&str, log::LevelFilter)] = &[
    ("error", log::LevelFilter::Error),
    ("warn", log::LevelFilter::Warn),
    ("warning", log::LevelFilter::Warn),
    ("info", log::LevelFilter::Info),
    ("debug", log::LevelFilter::Debug),
    ("trace", log::LevelFilter::Trace),
];

/// What the first pass fills in, one variable at a time: the configuration, the MQTT settings
/// kept aside until the second pass knows whether MQTT is on, and the one raw value the second
/// pass needs.
struct Draft {
    cfg: Config,
    mqtt: MqttConfig,
    mqtt_on: bool,
    password_file: Option<PathBuf>,
}

impl Draft {
    /// Placeholders only, never defaults: [`Config::from_env`] applies every variable of
    /// [`VARS`] (its value or its default) before anything reads them.
    fn blank(hostname: String) -> Draft {
        let cfg = Config {
            docker_host: String::new(),
            log_dir: PathBuf::new(),
            state_dir: PathBuf::new(),
            log_max_memory: 0,
            log_file_persistence: false,
            log_file_max_bytes: 0,
            log_file_keep: 0,
            include: Vec::new(),
            exclude: Vec::new(),
            app_id_labels: Vec::new(),
            service_name_labels: Vec::new(),
            service_id_labels: Vec::new(),
            level_stdout: Level::Info,
            level_stderr: Level::Info,
            max_line_bytes: 0,
            multiline: false,
            rate_limit_lines: 0,
            rate_limit_burst: 0,
            since: SinceMode::Cursor,
            api_listen: None,
            api_token: None,
            api_max_connections: 0,
            api_header_timeout: Duration::ZERO,
            api_idle_timeout: Duration::ZERO,
            mqtt: None,
            log_level: log::LevelFilter::Off,
            hostname,
        };
        Draft {
            cfg,
            mqtt: MqttConfig::blank(),
            mqtt_on: false,
            password_file: None,
        }
    }

    /// The second pass: what spans several variables, and the files they name (opened only
    /// when MQTT is on).
    fn finish(self) -> Result<Config, Error> {
        let Draft {
            mut cfg,
            mut mqtt,
            mqtt_on,
            password_file,
        } = self;
        if let Some(addr) = cfg.api_listen {
            if !addr.ip().is_loopback() && cfg.api_token.is_none() {
                return Err(invalid(
                    "API_LISTEN",
                    &addr.to_string(),
                    "a loopback address unless API_TOKEN is set",
                ));
            }
        }
        if let (Some(_), Some(path)) = (&mqtt.password, &password_file) {
            return Err(invalid(
                "MQTT_PASSWORD_FILE",
                &path.display().to_string(),
                "not both MQTT_PASSWORD and MQTT_PASSWORD_FILE",
            ));
        }
        if mqtt_on {
            check_tls_files(&mqtt)?;
            if let Some(path) = password_file {
                mqtt.password = Some(read_password(&path)?);
            }
            cfg.mqtt = Some(mqtt);
        } else {
            check_cert_and_key(&mqtt)?;
        }
        Ok(cfg)
    }
}

impl MqttConfig {
    /// Placeholders only, as in [`Draft::blank`].
    fn blank() -> MqttConfig {
        MqttConfig {
            tls: false,
            host: String::new(),
            port: 0,
            username: None,
            password: None,
            client_id: String::new(),
            base_topic: String::new(),
            qos: 0,
            retain: false,
            batch: false,
            batch_interval: Duration::ZERO,
            batch_max: 0,
            keepalive: Duration::ZERO,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            spool_max_bytes: 0,
            status_topic: String::new(),
            version: MqttVersion::V311,
            message_expiry: None,
            query: false,
            query_topic: String::new(),
            ha_discovery: false,
            ha_prefix: String::new(),
            ha_expiry: Duration::ZERO,
        }
    }
}

fn check_cert_and_key(m: &MqttConfig) -> Result<(), Error> {
    let missing = match (&m.client_cert_file, &m.client_key_file) {
        (Some(_), None) => "MQTT_CLIENT_KEY_FILE",
        (None, Some(_)) => "MQTT_CLIENT_CERT_FILE",
        _ => return Ok(()),
    };
    Err(invalid(
        missing,
        "",
        "set together with its pair (certificate and key)",
    ))
}

/// Each TLS file exists, then the certificate and key come as a pair.
fn check_tls_files(m: &MqttConfig) -> Result<(), Error> {
    let files = [
        ("MQTT_CA_FILE", &m.ca_file),
        ("MQTT_CLIENT_CERT_FILE", &m.client_cert_file),
        ("MQTT_CLIENT_KEY_FILE", &m.client_key_file),
    ];
    for (var, file) in files {
        match file {
            Some(path) if !path.is_file() => {
                return Err(invalid(
                    var,
                    &path.display().to_string(),
                    "an existing, readable file",
                ))
            }
            _ => {}
        }
    }
    check_cert_and_key(m)
}

fn read_password(path: &Path) -> Result<Secret, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Secret::new(s.trim_end_matches(['\r', '\n']).to_string())),
        Err(e) => Err(invalid(
            "MQTT_PASSWORD_FILE",
            &path.display().to_string(),
            &format!("a readable file ({e})"),
        )),
    }
}

fn invalid(var: &'static str, value: &str, expected: &str) -> Error {
    Error::Invalid {
        var,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

// The parsers: a value in (never empty unless the default is), a typed value or what was
// expected out. Those of secrets accept everything, so an error never shows a secret.

/// Stores a parsed value: keeps the table's rows one line each.
fn set<T>(slot: &mut T, parsed: Result<T, String>) -> Result<(), String> {
    *slot = parsed?;
    Ok(())
}

fn num<T: FromStr + PartialOrd + fmt::Display>(v: &str, min: T, max: T) -> Result<T, String> {
    match v.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("a whole number from {min} to {max}")),
    }
}

fn millis(v: &str, min: u64, max: u64) -> Result<Duration, String> {
    num(v, min, max).map(Duration::from_millis)
}

fn secs(v: &str, min: u64, max: u64) -> Result<Duration, String> {
    num(v, min, max).map(Duration::from_secs)
}

fn boolean(v: &str) -> Result<bool, String> {
    one_of(
        v,
        &[
            ("true", true),
            ("1", true),
            ("yes", true),
            ("on", true),
            ("false", false),
            ("0", false),
            ("no", false),
            ("off", false),
        ],
    )
    .map_err(|_| "true or false".to_string())
}

/// One of a few words (any case).
fn one_of<T: Copy>(v: &str, words: &[(&str, T)]) -> Result<T, String> {
    match words.iter().find(|(w, _)| w.eq_ignore_ascii_case(v)) {
        Some(&(_, t)) => Ok(t),
        None => {
            let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
            Err(format!("one of {}", names.join(", ")))
        }
    }
}

/// The value, or `None` for the empty default.
fn optional(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

/// A path, or `None` for the empty default.
fn path(v: &str) -> Option<PathBuf> {
    optional(v).map(PathBuf::from)
}

/// A comma-separated list; blanks around and between items are dropped.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn globs(v: &str) -> Vec<Glob> {
    list(v).iter().map(|p| Glob::new(p)).collect()
}

fn level(v: &str) -> Result<Level, String> {
    Level::parse_name(v).ok_or_else(|| "one of error, warn, info, debug".to_string())
}

/// Checked by the engine's own parser, the one the agent connects with.
fn docker_host(v: &str) -> Result<String, String> {
    match Addr::parse(v) {
        Ok(_) => Ok(v.to_string()),
        Err(why) => Err(format!(
            "{why}; expected unix:///path/to/socket or tcp://host[:port]"
        )),
    }
}

fn listen(v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "off" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| "ip:port, e.g. 127.0.0.1:7780, or off".to_string())
}

fn apply_broker(d: &mut Draft, v: &str) -> Result<(), String> {
    d.mqtt_on = v != "off";
    if d.mqtt_on {
        (d.mqtt.tls, d.mqtt.host, d.mqtt.port) = broker(v)?;
    }
    Ok(())
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`: (TLS, host, port).
fn broker(v: &str) -> Result<(bool, String, u16), String> {
    let expected = || "mqtt://host[:port], mqtts://host[:port] or off".to_string();
    let (tls, rest) = if let Some(r) = v.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = v.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(expected());
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h, p),
            _ => return Err(expected()),
        },
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(expected());
    }
    Ok((tls, host.to_string(), port))
}

/// A message expiry interval: none for the empty default, else 1 to 2³²−1 seconds.
fn expiry(v: &str) -> Result<Option<u32>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    num(v, 1, u32::MAX).map(Some)
}

fn client_id(v: &str, hostname: &str) -> Result<String, String> {
    let id = v.replace("{hostname}", hostname);
    if id.len() > 65535 {
        return Err("at most 65535 bytes".into());
    }
    Ok(id)
}

/// A topic with `{hostname}` substituted and trailing `/` dropped.
fn topic(v: &str, hostname: &str) -> Result<String, String> {
    let t = v.replace("{hostname}", hostname);
    let t = t.trim_end_matches('/');
    if t.is_empty() || t.contains('+') || t.contains('#') || t.starts_with('/') {
        return Err("a topic without wildcards (+, #) or a leading /".into());
    }
    Ok(t.to_string())
}

impl Config {
    /// Reads the process environment.
    pub fn from_process_env() -> Result<Config, Error> {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::from_env(&vars)
    }

    /// Builds the configuration from variables given by name: applies every variable of
    /// [`VARS`] (an empty or blank value counts as unset and gives the default), then checks
    /// what spans several of them.
    pub fn from_env(vars: &HashMap<String, String>) -> Result<Config, Error> {
        let mut draft = Draft::blank(read_hostname());
        for var in VARS {
            let value = vars
                .get(var.name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .unwrap_or(var.default);
            (var.apply)(&mut draft, value)
                .map_err(|expected| invalid(var.name, value, &expected))?;
        }
        draft.finish()
    }

    /// Whether a container of this name is followed at all (labels are checked elsewhere).
    pub fn wants_container(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(name)))
            && !self.exclude.iter().any(|g| g.matches(name))
    }
}

fn read_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err_var(pairs: &[(&str, &str)]) -> &'static str {
        match Config::from_env(&env(pairs)) {
            Err(Error::Invalid { var, .. }) => var,
            Ok(_) => panic!("accepted {pairs:?}"),
        }
    }

    #[test]
    fn defaults_are_the_spec_defaults() {
        let c = Config::from_env(&env(&[])).expect("defaults");
        assert_eq!(c.docker_host, "unix:///var/run/docker.sock");
        assert_eq!(c.log_max_memory, 10_000);
        assert_eq!(c.log_file_max_bytes, 10_485_760);
        assert_eq!(c.log_file_keep, 3);
        assert_eq!(c.max_line_bytes, 65_536);
        assert_eq!(c.api_listen, Some("127.0.0.1:7780".parse().expect("addr")));
        let m = c.mqtt.expect("mqtt on by default");
        assert_eq!((m.host.as_str(), m.port, m.qos), ("localhost", 1883, 1));
        assert_eq!(m.base_topic, "container-manager/logs");
        assert_eq!(
            m.status_topic,
            format!("container-manager/status/{}", c.hostname)
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(err_var(&[("MQTT_QOS", "3")]), "MQTT_QOS");
        assert_eq!(err_var(&[("LOG_MAX_MEMORY", "lots")]), "LOG_MAX_MEMORY");
        assert_eq!(err_var(&[("DOCKER_HOST", "http://x")]), "DOCKER_HOST");
        assert_eq!(err_var(&[("MQTT_BROKER", "amqp://x")]), "MQTT_BROKER");
        assert_eq!(err_var(&[("SINCE", "yesterday")]), "SINCE");
        assert_eq!(err_var(&[("LEVEL_STDERR", "loud")]), "LEVEL_STDERR");
        assert_eq!(err_var(&[("API_LISTEN", "0.0.0.0:7780")]), "API_LISTEN");
        assert_eq!(err_var(&[("MQTT_RETAIN", "maybe")]), "MQTT_RETAIN");
        assert_eq!(err_var(&[("MQTT_BASE_TOPIC", "a/#")]), "MQTT_BASE_TOPIC");
        assert_eq!(err_var(&[("MQTT_VERSION", "3.1")]), "MQTT_VERSION");
        assert_eq!(err_var(&[("MQTT_VERSION", "6")]), "MQTT_VERSION");
        for bad in ["-1", "x", "4294967296", "1.5"] {
            assert_eq!(
                err_var(&[("MQTT_MESSAGE_EXPIRY_S", bad)]),
                "MQTT_MESSAGE_EXPIRY_S"
            );
        }
    }

    #[test]
    fn mqtt_version_and_message_expiry() {
        let m = |pairs: &[(&str, &str)]| {
            Config::from_env(&env(pairs))
                .expect("valid")
                .mqtt
                .expect("on")
        };
        let d = m(&[]);
        assert_eq!((d.version, d.message_expiry), (MqttVersion::V311, None));
        assert_eq!(m(&[("MQTT_VERSION", "4")]).version, MqttVersion::V311);
        let v5 = m(&[("MQTT_VERSION", "5"), ("MQTT_MESSAGE_EXPIRY_S", "3600")]);
        assert_eq!(
            (v5.version, v5.message_expiry),
            (MqttVersion::V5, Some(3600))
        );
        assert_eq!(
            m(&[("MQTT_MESSAGE_EXPIRY_S", "4294967295")]).message_expiry,
            Some(u32::MAX)
        );
    }

    #[test]
    fn public_api_needs_a_token() {
        let c = Config::from_env(&env(&[("API_LISTEN", "0.0.0.0:7780"), ("API_TOKEN", "t")]))
            .expect("token given");
        assert!(c.api_token.is_some());
        assert_eq!(format!("{:?}", c.api_token), "Some(***)");
    }

    #[test]
    fn broker_url_forms() {
        let m = |url| {
            Config::from_env(&env(&[("MQTT_BROKER", url)]))
                .expect("valid")
                .mqtt
                .expect("on")
        };
        let a = m("mqtts://broker.example:8884");
        assert!(a.tls);
        assert_eq!((a.host.as_str(), a.port), ("broker.example", 8884));
        assert_eq!(m("mqtts://b").port, 8883);
        assert_eq!(m("mqtt://127.0.0.1").port, 1883);
        assert!(Config::from_env(&env(&[("MQTT_BROKER", "off")]))
            .expect("off")
            .mqtt
            .is_none());
    }

    #[test]
    fn hostname_in_topics() {
        let c = Config::from_env(&env(&[("MQTT_BASE_TOPIC", "logs/{hostname}/")])).expect("ok");
        assert_eq!(
            c.mqtt.expect("on").base_topic,
            format!("logs/{}", c.hostname)
        );
    }

    #[test]
    fn globs() {
        assert!(Glob::new("web*").matches("web-1"));
        assert!(Glob::new("*db").matches("postgres-db"));
        assert!(Glob::new("a?c").matches("abc"));
        assert!(!Glob::new("a?c").matches("abbc"));
        assert!(Glob::new("*").matches(""));
        let c = Config::from_env(&env(&[
            ("CONTAINERS_INCLUDE", "web*, db"),
            ("CONTAINERS_EXCLUDE", "web-test"),
        ]))
        .expect("ok");
        assert!(c.wants_container("web-1"));
        assert!(c.wants_container("db"));
        assert!(!c.wants_container("web-test"));
        assert!(!c.wants_container("cache"));
    }
    #[test]
    fn every_variable_has_a_unique_name_and_one_line_help() {
        for (i, var) in VARS.iter().enumerate() {
            assert!(
                !var.name.is_empty()
                    && var
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "{var:?}"
            );
            assert!(
                VARS[..i].iter().all(|v| v.name != var.name),
                "{} twice",
                var.name
            );
            assert!(var.help.len() > 10, "{} has no help", var.name);
            assert!(
                !var.help.contains('\n'),
                "{}'s help is not one line",
                var.name
            );
            assert_eq!(var.default.trim(), var.default, "{}", var.name);
        }
    }

    #[test]
    fn defaults_parse_and_writing_them_out_changes_nothing() {
        let implicit = Config::from_env(&env(&[])).expect("the defaults");
        let all: Vec<(&str, &str)> = VARS.iter().map(|v| (v.name, v.default)).collect();
        let explicit = Config::from_env(&env(&all)).expect("the defaults written out");
        assert_eq!(format!("{implicit:?}"), format!("{explicit:?}"));
        for var in VARS {
            let c = Config::from_env(&env(&[(var.name, var.default)]));
            assert!(c.is_ok(), "{}={}: {:?}", var.name, var.default, c.err());
        }
    }

    /// Variables whose every value is usable: paths, lists, names and secrets.
    const ANY_TEXT: &[&str] = &[
        "LOG_DIR",
        "STATE_DIR",
        "CONTAINERS_INCLUDE",
        "CONTAINERS_EXCLUDE",
        "APP_ID_LABELS",
        "SERVICE_NAME_LABELS",
        "SERVICE_ID_LABELS",
        "API_TOKEN",
        "MQTT_USERNAME",
        "MQTT_PASSWORD",
    ];

    /// A bad value for every other variable.
    fn bad_values() -> Vec<(&'static str, String)> {
        let bad = [
            ("DOCKER_HOST", "tcp://h:2375/path"),
            ("LOG_MAX_MEMORY", "lots"),
            ("LOG_FILE_PERSISTENCE", "sometimes"),
            ("LOG_FILE_MAX_BYTES", "100"),
            ("LOG_FILE_KEEP", "-1"),
            ("LEVEL_STDOUT", "loud"),
            ("LEVEL_STDERR", "loud"),
            ("MAX_LINE_BYTES", "1"),
            ("MULTILINE", "on"),
            ("RATE_LIMIT_LINES", "1e3"),
            ("RATE_LIMIT_BURST", "0"),
            ("SINCE", "yesterday"),
            ("API_LISTEN", "localhost:7780"),
            ("API_MAX_CONNECTIONS", "0"),
            ("API_HEADER_TIMEOUT_S", "0"),
            ("API_IDLE_TIMEOUT_S", "1h"),
            ("MQTT_BROKER", "amqp://x"),
            ("MQTT_PASSWORD_FILE", "/nonexistent/password"),
            ("MQTT_BASE_TOPIC", "a/+/b"),
            ("MQTT_QOS", "3"),
            ("MQTT_RETAIN", "maybe"),
            ("MQTT_BATCH", "2"),
            ("MQTT_BATCH_INTERVAL_MS", "1"),
            ("MQTT_BATCH_MAX", "0"),
            ("MQTT_KEEPALIVE_S", "65536"),
            ("MQTT_CA_FILE", "/nonexistent/ca.pem"),
            ("MQTT_CLIENT_CERT_FILE", "/nonexistent/cert.pem"),
            ("MQTT_CLIENT_KEY_FILE", "/nonexistent/key.pem"),
            ("MQTT_SPOOL_MAX_BYTES", "-5"),
            ("MQTT_STATUS_TOPIC", "/status"),
            ("MQTT_VERSION", "3"),
            ("MQTT_MESSAGE_EXPIRY_S", "0"),
            ("MQTT_QUERY", "yes please"),
            ("MQTT_QUERY_TOPIC", "q/#"),
            ("HA_DISCOVERY", "2"),
            ("HA_DISCOVERY_PREFIX", "/ha"),
            ("HA_DISCOVERY_EXPIRY_S", "0"),
            ("LOG_LEVEL", "chatty"),
        ];
        let mut out: Vec<(&str, String)> = bad.iter().map(|&(k, v)| (k, v.to_string())).collect();
        out.push(("MQTT_CLIENT_ID", "x".repeat(65536)));
        out
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let bad = bad_values();
        for var in VARS {
            let n = bad.iter().filter(|(name, _)| *name == var.name).count()
                + usize::from(ANY_TEXT.contains(&var.name));
            assert_eq!(
                n, 1,
                "{}: give it one bad value or list it as any text",
                var.name
            );
        }
        for (var, value) in &bad {
            assert_eq!(err_var(&[(var, value)]), *var, "{var}={value}");
        }
    }

    #[test]
    fn docker_host_is_checked_by_the_engine_parser() {
        for good in [
            "unix:///var/run/balena-engine.sock",
            "tcp://127.0.0.1:2375",
            "tcp://docker-proxy:2375/",
            "tcp://[::1]",
            " tcp://proxy:2375 ",
        ] {
            let c = Config::from_env(&env(&[("DOCKER_HOST", good)])).expect(good);
            assert_eq!(c.docker_host, good.trim());
            assert!(
                crate::engine::Engine::new(&c.docker_host).is_ok(),
                "{good:?}"
            );
        }
        for bad in [
            "tcp://h:2375/path",
            "http://x",
            "unix://",
            "tcp://h:notaport",
            "tcp://h:0",
            "tcp://h:70000",
            "tcp://",
            "tcp://user@h:2375",
            "ssh://me@host",
            "/var/run/docker.sock",
        ] {
            assert_eq!(err_var(&[("DOCKER_HOST", bad)]), "DOCKER_HOST", "{bad:?}");
        }
        let e = Config::from_env(&env(&[("DOCKER_HOST", "tcp://h:notaport")]));
        let text = e.expect_err("bad port").to_string();
        assert!(
            text.starts_with("DOCKER_HOST=\"tcp://h:notaport\""),
            "{text}"
        );
        assert!(text.contains("port"), "{text}");
    }

    #[test]
    fn cross_variable_checks() {
        let dir =
            std::env::temp_dir().join(format!("container-logd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret\n").expect("password file");
        let pw = pw.to_str().expect("utf-8 path");
        let c = Config::from_env(&env(&[("MQTT_PASSWORD_FILE", pw)])).expect("file");
        let m = c.mqtt.expect("on");
        assert_eq!(m.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(
            err_var(&[("MQTT_PASSWORD", "a"), ("MQTT_PASSWORD_FILE", pw)]),
            "MQTT_PASSWORD_FILE"
        );
        assert_eq!(
            err_var(&[("MQTT_CLIENT_CERT_FILE", pw)]),
            "MQTT_CLIENT_KEY_FILE"
        );
        assert_eq!(
            err_var(&[("MQTT_CLIENT_KEY_FILE", pw)]),
            "MQTT_CLIENT_CERT_FILE"
        );
        let tls = Config::from_env(&env(&[
            ("MQTT_BROKER", "mqtts://b"),
            ("MQTT_CA_FILE", pw),
            ("MQTT_CLIENT_CERT_FILE", pw),
            ("MQTT_CLIENT_KEY_FILE", pw),
        ]))
        .expect("tls files");
        assert!(tls.mqtt.expect("on").client_key_file.is_some());
        // With MQTT off its values are still checked, but its files are not opened.
        let off = [
            ("MQTT_BROKER", "off"),
            ("MQTT_CA_FILE", "/nonexistent/ca.pem"),
        ];
        assert!(Config::from_env(&env(&off)).expect("off").mqtt.is_none());
        assert_eq!(
            err_var(&[("MQTT_BROKER", "off"), ("MQTT_QOS", "7")]),
            "MQTT_QOS"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    const SETTINGS: &str = include_str!("../etc/default/container-logd");
    const UNIT: &str = include_str!("../etc/container-logd.service");

    /// A `#NAME=value` line of the settings file: (name, value).
    fn setting(line: &str) -> Option<(&str, &str)> {
        let (name, value) = line.strip_prefix('#')?.split_once('=')?;
        let is_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        is_name.then_some((name, value))
    }

    #[test]
    fn settings_file_documents_the_table() {
        let lines: Vec<&str> = SETTINGS.lines().collect();
        let documented: Vec<(usize, &str, &str)> = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| setting(l).map(|(name, value)| (i, name, value)))
            .collect();
        let names: Vec<&str> = documented.iter().map(|d| d.1).collect();
        let table: Vec<&str> = VARS.iter().map(|v| v.name).collect();
        assert_eq!(
            names, table,
            "the settings file lists the table's variables, once, in order"
        );
        // The unit sets some variables itself; the file shows the value the service gets.
        let unit: HashMap<&str, &str> = UNIT
            .lines()
            .filter_map(|l| l.strip_prefix("Environment=")?.split_once('='))
            .collect();
        for (&(i, name, value), var) in documented.iter().zip(VARS) {
            let expected = unit.get(name).copied().unwrap_or(var.default);
            assert_eq!(value, expected, "the settings file's default of {name}");
            let above = if i > 0 { lines[i - 1] } else { "" };
            assert_eq!(above, format!("# {}", var.help), "the line above #{name}=");
        }
        for line in &lines {
            let line = line.trim();
            assert!(
                line.is_empty() || line.starts_with('#'),
                "the settings file sets something by default: {line:?}"
            );
        }
    }
}
