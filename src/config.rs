//! Configuration: environment strings in, a validated, typed [`Config`] out.
//!
//! Every default lives in [`Config::default`]; [`Config::from_env`] reads each variable of
//! docs/CONTRACT.md §3, checks it, and names the variable and the bad value when it fails. This module never
//! logs secrets: [`Secret`] prints as `***`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::message::Level;

/// A configuration problem; the agent exits with code 2 on any of these.
#[derive(Debug)]
pub enum Error {
    /// A variable holds a value we cannot use.
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// The value as given (never a secret's value).
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
    pub mqtt: Option<MqttConfig>,
    pub log_level: log::LevelFilter,
    pub hostname: String,
}

impl Default for Config {
    fn default() -> Config {
        let hostname = read_hostname();
        Config {
            docker_host: "unix:///var/run/docker.sock".into(),
            log_dir: PathBuf::from("./data/logs"),
            state_dir: PathBuf::from("./data/state"),
            log_max_memory: 10_000,
            log_file_persistence: true,
            log_file_max_bytes: 10_485_760,
            log_file_keep: 3,
            include: Vec::new(),
            exclude: Vec::new(),
            app_id_labels: vec![
                "io.balena.app-id".into(),
                "com.docker.compose.project".into(),
            ],
            service_name_labels: vec![
                "io.balena.service-name".into(),
                "com.docker.compose.service".into(),
            ],
            service_id_labels: vec!["io.balena.service-id".into()],
            level_stdout: Level::Info,
            level_stderr: Level::Error,
            max_line_bytes: 65_536,
            multiline: false,
            rate_limit_lines: 0,
            rate_limit_burst: 1000,
            since: SinceMode::Cursor,
            api_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7780))),
            api_token: None,
            mqtt: Some(MqttConfig::default_for(&hostname)),
            log_level: log::LevelFilter::Info,
            hostname,
        }
    }
}

impl MqttConfig {
    fn default_for(hostname: &str) -> MqttConfig {
        MqttConfig {
            tls: false,
            host: "localhost".into(),
            port: 1883,
            username: None,
            password: None,
            client_id: format!("container-logd-{hostname}"),
            base_topic: "container-manager/logs".into(),
            qos: 1,
            retain: false,
            batch: false,
            batch_interval: Duration::from_millis(1000),
            batch_max: 50,
            keepalive: Duration::from_secs(30),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            spool_max_bytes: 67_108_864,
            status_topic: format!("container-manager/status/{hostname}"),
        }
    }
}

/// Every variable this module reads, in SPEC order (also used by `check` and the env file test).
pub const VARIABLES: &[&str] = &[
    "DOCKER_HOST",
    "LOG_DIR",
    "STATE_DIR",
    "LOG_MAX_MEMORY",
    "LOG_FILE_PERSISTENCE",
    "LOG_FILE_MAX_BYTES",
    "LOG_FILE_KEEP",
    "CONTAINERS_INCLUDE",
    "CONTAINERS_EXCLUDE",
    "APP_ID_LABELS",
    "SERVICE_NAME_LABELS",
    "SERVICE_ID_LABELS",
    "LEVEL_STDOUT",
    "LEVEL_STDERR",
    "MAX_LINE_BYTES",
    "MULTILINE",
    "RATE_LIMIT_LINES",
    "RATE_LIMIT_BURST",
    "SINCE",
    "API_LISTEN",
    "API_TOKEN",
    "MQTT_BROKER",
    "MQTT_USERNAME",
    "MQTT_PASSWORD",
    "MQTT_PASSWORD_FILE",
    "MQTT_CLIENT_ID",
    "MQTT_BASE_TOPIC",
    "MQTT_QOS",
    "MQTT_RETAIN",
    "MQTT_BATCH",
    "MQTT_BATCH_INTERVAL_MS",
    "MQTT_BATCH_MAX",
    "MQTT_KEEPALIVE_S",
    "MQTT_CA_FILE",
    "MQTT_CLIENT_CERT_FILE",
    "MQTT_CLIENT_KEY_FILE",
    "MQTT_SPOOL_MAX_BYTES",
    "MQTT_STATUS_TOPIC",
    "LOG_LEVEL",
];

/// Raw variables by name; an empty value counts as unset.
struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

fn invalid(var: &'static str, value: &str, expected: &str) -> Error {
    Error::Invalid {
        var,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

fn parse_num<T: std::str::FromStr + PartialOrd + fmt::Display>(
    env: &Env,
    var: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, Error> {
    let Some(v) = env.get(var) else {
        return Ok(default);
    };
    match v.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(invalid(
            var,
            v,
            &format!("a whole number from {min} to {max}"),
        )),
    }
}

fn parse_bool(env: &Env, var: &'static str, default: bool) -> Result<bool, Error> {
    let Some(v) = env.get(var) else {
        return Ok(default);
    };
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(var, v, "true or false")),
    }
}

fn parse_list(env: &Env, var: &'static str, default: &[String]) -> Vec<String> {
    match env.get(var) {
        None => default.to_vec(),
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    }
}

fn parse_level(env: &Env, var: &'static str, default: Level) -> Result<Level, Error> {
    let Some(v) = env.get(var) else {
        return Ok(default);
    };
    Level::parse_name(v).ok_or_else(|| invalid(var, v, "one of error, warn, info, debug"))
}

fn path_var(env: &Env, var: &'static str, default: &std::path::Path) -> PathBuf {
    env.get(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.to_path_buf())
}

impl Config {
    /// Reads the process environment.
    pub fn from_process_env() -> Result<Config, Error> {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::from_env(&vars)
    }

    /// Builds the configuration from variables given by name.
    pub fn from_env(vars: &HashMap<String, String>) -> Result<Config, Error> {
        let env = Env(vars);
        let d = Config::default();

        let docker_host = env.get("DOCKER_HOST").unwrap_or(&d.docker_host).to_string();
        if !(docker_host.starts_with("unix://") || docker_host.starts_with("tcp://"))
            || docker_host.len() <= "unix://".len()
        {
            return Err(invalid(
                "DOCKER_HOST",
                &docker_host,
                "unix:///path/to/socket or tcp://host:port",
            ));
        }

        let api_listen =
            match env.get("API_LISTEN") {
                Some("off") => None,
                Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                    invalid("API_LISTEN", v, "ip:port, e.g. 127.0.0.1:7780, or off")
                })?),
                None => d.api_listen,
            };
        let api_token = env.get("API_TOKEN").map(|t| Secret::new(t.to_string()));
        if let Some(addr) = api_listen {
            if !addr.ip().is_loopback() && api_token.is_none() {
                return Err(invalid(
                    "API_LISTEN",
                    &addr.to_string(),
                    "a loopback address unless API_TOKEN is set",
                ));
            }
        }

        let since = match env.get("SINCE") {
            None => d.since,
            Some(v) => match v {
                "cursor" => SinceMode::Cursor,
                "all" => SinceMode::All,
                "now" => SinceMode::Now,
                _ => return Err(invalid("SINCE", v, "cursor, all or now")),
            },
        };
        let multiline = match env.get("MULTILINE") {
            None | Some("off") => false,
            Some("auto") => true,
            Some(v) => return Err(invalid("MULTILINE", v, "off or auto")),
        };
        let log_level = match env.get("LOG_LEVEL") {
            None => d.log_level,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "error" => log::LevelFilter::Error,
                "warn" | "warning" => log::LevelFilter::Warn,
                "info" => log::LevelFilter::Info,
                "debug" => log::LevelFilter::Debug,
                "trace" => log::LevelFilter::Trace,
                _ => {
                    return Err(invalid(
                        "LOG_LEVEL",
                        v,
                        "one of error, warn, info, debug, trace",
                    ))
                }
            },
        };
        let hostname = d.hostname.clone();
        let mqtt = mqtt_from_env(&env, &hostname)?;

        let globs = |var| {
            parse_list(&env, var, &[])
                .iter()
                .map(|p| Glob::new(p))
                .collect()
        };

        Ok(Config {
            docker_host,
            log_dir: path_var(&env, "LOG_DIR", &d.log_dir),
            state_dir: path_var(&env, "STATE_DIR", &d.state_dir),
            log_max_memory: parse_num(&env, "LOG_MAX_MEMORY", d.log_max_memory, 1, 10_000_000)?,
            log_file_persistence: parse_bool(&env, "LOG_FILE_PERSISTENCE", true)?,
            log_file_max_bytes: parse_num(
                &env,
                "LOG_FILE_MAX_BYTES",
                d.log_file_max_bytes,
                4096,
                u64::MAX / 2,
            )?,
            log_file_keep: parse_num(&env, "LOG_FILE_KEEP", d.log_file_keep, 0, 1000)?,
            include: globs("CONTAINERS_INCLUDE"),
            exclude: globs("CONTAINERS_EXCLUDE"),
            app_id_labels: parse_list(&env, "APP_ID_LABELS", &d.app_id_labels),
            service_name_labels: parse_list(&env, "SERVICE_NAME_LABELS", &d.service_name_labels),
            service_id_labels: parse_list(&env, "SERVICE_ID_LABELS", &d.service_id_labels),
            level_stdout: parse_level(&env, "LEVEL_STDOUT", d.level_stdout)?,
            level_stderr: parse_level(&env, "LEVEL_STDERR", d.level_stderr)?,
            max_line_bytes: parse_num(&env, "MAX_LINE_BYTES", d.max_line_bytes, 64, 16 << 20)?,
            multiline,
            rate_limit_lines: parse_num(&env, "RATE_LIMIT_LINES", 0, 0, 1_000_000)?,
            rate_limit_burst: parse_num(&env, "RATE_LIMIT_BURST", 1000, 1, 10_000_000)?,
            since,
            api_listen,
            api_token,
            mqtt,
            log_level,
            hostname,
        })
    }

    /// Whether a container of this name is followed at all (labels are checked elsewhere).
    pub fn wants_container(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(name)))
            && !self.exclude.iter().any(|g| g.matches(name))
    }
}

fn mqtt_from_env(env: &Env, hostname: &str) -> Result<Option<MqttConfig>, Error> {
    let d = MqttConfig::default_for(hostname);
    let broker = env.get("MQTT_BROKER").unwrap_or("mqtt://localhost:1883");
    if broker == "off" {
        return Ok(None);
    }
    let bad = |expected: &str| invalid("MQTT_BROKER", broker, expected);
    let expected = "mqtt://host[:port], mqtts://host[:port] or off";
    let (tls, rest) = if let Some(r) = broker.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = broker.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad(expected));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h, p),
            _ => return Err(bad(expected)),
        },
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(bad(expected));
    }

    let password = match (env.get("MQTT_PASSWORD"), env.get("MQTT_PASSWORD_FILE")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "MQTT_PASSWORD_FILE",
                env.get("MQTT_PASSWORD_FILE").unwrap_or_default(),
                "not both MQTT_PASSWORD and MQTT_PASSWORD_FILE",
            ))
        }
        (Some(p), None) => Some(Secret::new(p.to_string())),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(s) => Some(Secret::new(s.trim_end_matches(['\r', '\n']).to_string())),
            Err(e) => {
                return Err(invalid(
                    "MQTT_PASSWORD_FILE",
                    path,
                    &format!("a readable file ({e})"),
                ))
            }
        },
        (None, None) => None,
    };
    let file = |var: &'static str| -> Result<Option<PathBuf>, Error> {
        match env.get(var) {
            None => Ok(None),
            Some(p) if std::path::Path::new(p).is_file() => Ok(Some(PathBuf::from(p))),
            Some(p) => Err(invalid(var, p, "an existing, readable file")),
        }
    };
    let ca_file = file("MQTT_CA_FILE")?;
    let client_cert_file = file("MQTT_CLIENT_CERT_FILE")?;
    let client_key_file = file("MQTT_CLIENT_KEY_FILE")?;
    if client_cert_file.is_some() != client_key_file.is_some() {
        let var = if client_cert_file.is_some() {
            "MQTT_CLIENT_KEY_FILE"
        } else {
            "MQTT_CLIENT_CERT_FILE"
        };
        return Err(invalid(
            var,
            "",
            "set together with its pair (certificate and key)",
        ));
    }

    let topic = |var: &'static str, default: &str| -> Result<String, Error> {
        let raw = env.get(var).unwrap_or(default);
        let t = raw.replace("{hostname}", hostname);
        let t = t.trim_end_matches('/').to_string();
        if t.is_empty() || t.contains('+') || t.contains('#') || t.starts_with('/') {
            return Err(invalid(
                var,
                raw,
                "a topic without wildcards (+, #) or a leading /",
            ));
        }
        Ok(t)
    };
    let client_id = env
        .get("MQTT_CLIENT_ID")
        .map(|c| c.replace("{hostname}", hostname))
        .unwrap_or(d.client_id);
    if client_id.len() > 65535 {
        return Err(invalid("MQTT_CLIENT_ID", &client_id, "at most 65535 bytes"));
    }

    Ok(Some(MqttConfig {
        tls,
        host: host.to_string(),
        port,
        username: env.get("MQTT_USERNAME").map(String::from),
        password,
        client_id,
        base_topic: topic("MQTT_BASE_TOPIC", "container-manager/logs")?,
        qos: parse_num(env, "MQTT_QOS", 1u8, 0, 2)?,
        retain: parse_bool(env, "MQTT_RETAIN", false)?,
        batch: parse_bool(env, "MQTT_BATCH", false)?,
        batch_interval: Duration::from_millis(parse_num(
            env,
            "MQTT_BATCH_INTERVAL_MS",
            1000u64,
            10,
            3_600_000,
        )?),
        batch_max: parse_num(env, "MQTT_BATCH_MAX", d.batch_max, 1, 10_000)?,
        keepalive: Duration::from_secs(parse_num(env, "MQTT_KEEPALIVE_S", 30u64, 5, 65_535)?),
        ca_file,
        client_cert_file,
        client_key_file,
        spool_max_bytes: parse_num(
            env,
            "MQTT_SPOOL_MAX_BYTES",
            d.spool_max_bytes,
            0,
            u64::MAX / 2,
        )?,
        status_topic: topic("MQTT_STATUS_TOPIC", "container-manager/status/{hostname}")?,
    }))
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
}
