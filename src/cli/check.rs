//! `container-logd check`: validates the configuration, then probes what the agent will need
//! (the engine and its socket, the broker with its TLS and credentials, the writable
//! directories, the spool, the API port) and prints one line per check: ✓ or ✗, the reason,
//! and for a ✗ what to do about it.
//!
//! It only probes: it must never change the agent's state (the probe files it writes are
//! removed at once, the broker session uses a client id of its own so it cannot push the
//! running agent off the broker) and never prints a secret.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::{FAILED, OK, USAGE};
use crate::backend::mqtt::wire;
use crate::config::{Config, MqttConfig, MqttVersion};
use crate::engine::Engine;

/// How long the broker has to accept us.
const BROKER_WAIT: Duration = Duration::from_secs(5);

/// One group of checks run against the configuration.
type Check<'a> = &'a dyn Fn(&Config) -> Vec<Outcome>;

/// The result of one check.
pub struct Outcome {
    pub name: &'static str,
    pub ok: bool,
    pub text: String,
}

fn pass(name: &'static str, text: impl Into<String>) -> Outcome {
    Outcome {
        name,
        ok: true,
        text: text.into(),
    }
}

fn fail(name: &'static str, text: impl Into<String>) -> Outcome {
    Outcome {
        name,
        ok: false,
        text: text.into(),
    }
}

/// Runs every check; returns the exit code.
pub fn main(args: &[String]) -> u8 {
    if let Some(a) = args.first() {
        if a == "-h" || a == "--help" {
            println!("usage: container-logd check\n\nChecks the configuration (environment variables), the engine, the broker, the directories and the API port; exits 0 only if all pass.");
            return OK;
        }
        eprintln!("container-logd check: unknown argument '{a}' (check takes none)");
        return USAGE;
    }
    let cfg = match Config::from_process_env() {
        Ok(c) => c,
        Err(e) => {
            println!("✗ configuration: {e}; fix the variable (in /etc/default/container-logd for the service)");
            return USAGE;
        }
    };
    println!("✓ configuration: valid");
    let mut all = true;
    let checks: [Check; 5] = [
        &|c| engine(&c.docker_host),
        &|c| vec![broker(c.mqtt.as_ref())],
        &|c| dirs(c),
        &|c| vec![spool(c)],
        &|c| vec![api_port(c)],
    ];
    for check in checks {
        for o in check(&cfg) {
            all &= o.ok;
            println!("{} {}: {}", if o.ok { "✓" } else { "✗" }, o.name, o.text);
        }
    }
    if all {
        OK
    } else {
        FAILED
    }
}

/// The socket's permission, then the engine's answer and API version.
pub fn engine(host: &str) -> Vec<Outcome> {
    let mut out = Vec::new();
    if let Some(path) = host.strip_prefix("unix://") {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => out.push(pass("engine socket", format!("{path} can be opened"))),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                out.push(fail(
                    "engine socket",
                    format!(
                        "permission denied on {path}: add the user to the group that owns it \
                         (usually `docker`: `sudo usermod -aG docker $USER`, then log in again); \
                         the packaged service gets it by SupplementaryGroups=docker"
                    ),
                ));
                return out;
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                out.push(fail(
                    "engine socket",
                    format!(
                        "no engine at {path} ({e}): start it (`systemctl start docker`) or set \
                         DOCKER_HOST to its socket (balenaEngine: \
                         unix:///var/run/balena-engine.sock)"
                    ),
                ));
                return out;
            }
            Err(e) => {
                out.push(fail("engine socket", format!("cannot open {path}: {e}")));
                return out;
            }
        }
    }
    let result = Engine::new(host).and_then(|e| e.negotiate());
    out.push(match result {
        Ok(v) => pass("engine", format!("{host} answers, API version {v}")),
        Err(e) => fail(
            "engine",
            format!(
                "{host}: {e}: make sure a Docker-compatible engine runs there, or set \
                 DOCKER_HOST"
            ),
        ),
    });
    out
}

/// Connects to the broker with the configured TLS and credentials and waits for its answer.
pub fn broker(cfg: Option<&MqttConfig>) -> Outcome {
    let Some(cfg) = cfg else {
        return pass("broker", "skipped (MQTT_BROKER=off)");
    };
    let scheme = if cfg.tls { "mqtts" } else { "mqtt" };
    let url = format!("{scheme}://{}:{}", cfg.host, cfg.port);
    match connect_broker(cfg) {
        Ok(ack) => pass(
            "broker",
            format!(
                "{url} accepted us{}{} at MQTT {}{}",
                if cfg.tls { " over TLS" } else { "" },
                if cfg.username.is_some() {
                    " with the configured credentials"
                } else {
                    ""
                },
                cfg.version.as_str(),
                limits(cfg.version, &ack)
            ),
        ),
        Err(e) => fail("broker", format!("{url}: {e}")),
    }
}

/// What an MQTT 5 broker said of its limits in its CONNACK (nothing at 3.1.1, which has none).
fn limits(version: MqttVersion, ack: &wire::ConnAck) -> String {
    if version != MqttVersion::V5 {
        return String::new();
    }
    fn or_none<T: std::fmt::Display>(v: &Option<T>, unit: &str) -> String {
        match v {
            Some(v) => format!("{v}{unit}"),
            None => "none".into(),
        }
    }
    format!(
        "; its limits: receive maximum {}, maximum packet size {}, topic alias maximum {}, \
         server keep-alive {}, assigned client id {}",
        or_none(&ack.receive_max, ""),
        or_none(&ack.max_packet, " bytes"),
        or_none(&ack.topic_alias_max, ""),
        or_none(&ack.server_keep_alive, " s"),
        or_none(
            &ack.assigned_client_id.as_ref().map(|id| format!("{id:?}")),
            ""
        ),
    )
}

/// Connects and logs in as the agent would, and ends the session with a DISCONNECT.
fn connect_broker(cfg: &MqttConfig) -> Result<wire::ConnAck, String> {
    let options = broker_options(cfg)?;
    let (mut writer, _reader, ack) =
        wire::connect(&options).map_err(|e| explain(e, cfg.version))?;
    let _ = writer.disconnect();
    Ok(ack)
}

/// The agent's connection settings, under a client id of the check's own (the broker would
/// otherwise disconnect the running agent's session) and with no last will.
fn broker_options(cfg: &MqttConfig) -> Result<wire::Options, String> {
    let mut options = crate::backend::mqtt::options(cfg, "", "").map_err(|e| {
        format!("{e}: check MQTT_CA_FILE, MQTT_CLIENT_CERT_FILE and MQTT_CLIENT_KEY_FILE")
    })?;
    options.client_id = format!("{}-check-{}", cfg.client_id, std::process::id());
    options.keep_alive = Duration::from_secs(5);
    options.will = None;
    options.connect_timeout = BROKER_WAIT;
    options.max_incoming_packet = 1024;
    Ok(options)
}

/// The broker's answer as a user reads it: what went wrong and what to change.
fn explain(e: wire::Error, version: MqttVersion) -> String {
    let fix_auth = "set MQTT_USERNAME and MQTT_PASSWORD (or MQTT_PASSWORD_FILE) to what the \
                    broker expects";
    let fix_up = "start the broker, or set MQTT_BROKER to where it runs (off disables MQTT)";
    let fix_version = "the broker does not take MQTT 5: set MQTT_VERSION=3.1.1";
    match e {
        // 1 (3.1.1) and 0x84 (MQTT 5): the broker does not speak the version asked for.
        wire::Error::Refused(1 | 0x84) if version == MqttVersion::V5 => {
            format!("refused (unsupported protocol version): {fix_version}")
        }
        wire::Error::Refused(code) => {
            // 4 and 0x86: bad user name or password; 5 and 0x87: not authorized (mosquitto's
            // answer to both).
            let fix = if matches!(code, 4 | 5 | 0x86 | 0x87) {
                fix_auth
            } else {
                "check the broker's log for why"
            };
            format!("refused ({}): {fix}", refusal_name(code))
        }
        wire::Error::Closed if version == MqttVersion::V5 => format!(
            "the connection ended without an answer: {fix_up}; or, if the broker runs, {fix_version}"
        ),
        wire::Error::Tls(e) => format!(
            "TLS failed ({e}): check MQTT_CA_FILE (the broker's certificate must be signed by it \
             and name the host in MQTT_BROKER)"
        ),
        wire::Error::Closed => format!("the connection ended without an answer: {fix_up}"),
        wire::Error::Timeout => format!("no answer within {}s: {fix_up}", BROKER_WAIT.as_secs()),
        e @ wire::Error::Protocol(_) if version == MqttVersion::V5 => {
            format!("{e}: {fix_version}")
        }
        e @ (wire::Error::Io(_) | wire::Error::Protocol(_) | wire::Error::Disconnected(_)) => {
            format!("{e}: {fix_up}")
        }
    }
}

/// A CONNACK return code by the name this command always printed (MQTT 3.1.1 §3.2.2.3), or
/// an MQTT 5 reason code by its name and number.
fn refusal_name(code: u8) -> String {
    match code {
        1 => "RefusedProtocolVersion".into(),
        2 => "BadClientId".into(),
        3 => "ServiceUnavailable".into(),
        4 => "BadUserNamePassword".into(),
        5 => "NotAuthorized".into(),
        0x80.. => format!("{}, reason code 0x{code:02x}", wire::reason_name(code)),
        n => format!("return code {n}"),
    }
}

/// Creates, writes and removes a probe file in `dir` (creating `dir` as the agent would).
pub fn writable(dir: &Path) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".container-logd-check-{}", std::process::id()));
    std::fs::write(&probe, b"probe\n")?;
    std::fs::remove_file(&probe)
}

fn dirs(cfg: &Config) -> Vec<Outcome> {
    let one = |name: &'static str, var: &str, dir: &Path| match writable(dir) {
        Ok(()) => pass(name, format!("{} is writable", dir.display())),
        Err(e) => fail(
            name,
            format!(
                "{}: {e}: create it and give the agent's user write access, or set {var}",
                dir.display()
            ),
        ),
    };
    let logs = if cfg.log_file_persistence {
        one("log directory", "LOG_DIR", &cfg.log_dir)
    } else {
        pass("log directory", "skipped (LOG_FILE_PERSISTENCE=false)")
    };
    vec![logs, one("state directory", "STATE_DIR", &cfg.state_dir)]
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn spool(cfg: &Config) -> Outcome {
    let Some(m) = &cfg.mqtt else {
        return pass("spool", "skipped (MQTT_BROKER=off)");
    };
    let dir = cfg.state_dir.join("spool");
    let used = dir_bytes(&dir);
    if used >= m.spool_max_bytes {
        fail(
            "spool",
            format!(
                "{} of {} used: full, the oldest messages are being dropped; get the broker \
                 back, or raise MQTT_SPOOL_MAX_BYTES",
                mib(used),
                mib(m.spool_max_bytes)
            ),
        )
    } else {
        pass(
            "spool",
            format!(
                "{} of {} (MQTT_SPOOL_MAX_BYTES) used",
                mib(used),
                mib(m.spool_max_bytes)
            ),
        )
    }
}

fn api_port(cfg: &Config) -> Outcome {
    let Some(addr) = cfg.api_listen else {
        return pass("API port", "skipped (API_LISTEN=off)");
    };
    match TcpListener::bind(addr) {
        Ok(_) => pass("API port", format!("{addr} is free")),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            if agent_answers(addr) {
                pass(
                    "API port",
                    format!("{addr} is in use by a running container-logd agent"),
                )
            } else {
                fail(
                    "API port",
                    format!(
                        "{addr} is in use by another program: stop it, or set API_LISTEN to a \
                         free address"
                    ),
                )
            }
        }
        Err(e) => fail(
            "API port",
            format!("cannot listen on {addr}: {e}: set API_LISTEN to an address of this host"),
        ),
    }
}

/// True when a container-logd agent answers its health path at `addr`.
fn agent_answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /api/v1/health HTTP/1.0\r\nHost: {target}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    // The health answer names the engine; a 401 from a token-protected agent names the token.
    text.contains("\"docker\"") || text.contains("API_TOKEN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_answers_read_as_before() {
        let cases: [(wire::Error, &str); 5] = [
            (
                wire::Error::Refused(5),
                "refused (NotAuthorized): set MQTT_USERNAME and MQTT_PASSWORD",
            ),
            (
                wire::Error::Refused(4),
                "refused (BadUserNamePassword): set MQTT_USERNAME",
            ),
            (
                wire::Error::Refused(2),
                "refused (BadClientId): check the broker's log",
            ),
            (
                wire::Error::Timeout,
                "no answer within 5s: start the broker",
            ),
            (
                wire::Error::Closed,
                "the connection ended without an answer: start the broker",
            ),
        ];
        for (e, want) in cases {
            let got = explain(e, MqttVersion::V311);
            assert!(got.starts_with(want), "{got}");
        }
        let tls = explain(
            wire::Error::Tls(rustls::Error::DecryptError),
            MqttVersion::V311,
        );
        assert!(
            tls.starts_with("TLS failed (") && tls.contains("MQTT_CA_FILE"),
            "{tls}"
        );
    }
}
