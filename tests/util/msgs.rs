//! For the tests that drive the MQTT backend directly (`mqtt_backend`, `mqtt_v5`): its
//! configuration, start and stop, and messages made by hand (container lines at known
//! positions, lifecycle and agent messages).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use container_logd::backend::mqtt::MqttBackend;
use container_logd::backend::{Backend, Progress};
use container_logd::config::{Config, MqttConfig};
use container_logd::message::{
    Draft, Id, LabelValue, Level, LogMessage, Origin, Position, SourceKind,
};

use super::unique;

/// The engine time of line 0.
pub const TS0: i64 = 1_700_000_000_000_000_000;
/// The host every message names.
pub const HOST: &str = "pi-test";

pub fn origin(app: &str, service: &str, cid: &str) -> Arc<Origin> {
    Arc::new(Origin::new(
        Arc::from(cid),
        service.into(),
        LabelValue::from_label(app),
        service.into(),
        Some(LabelValue::from_label(app)),
        Arc::from(HOST),
    ))
}

/// The position of line `n`: each line has a time of its own.
pub fn pos(n: i64) -> Position {
    Position {
        ts_ns: TS0 + n,
        seen: 1,
    }
}

/// Container line `n` of `o`; error lines come on stderr.
pub fn line(o: &Arc<Origin>, n: i64, level: Level, text: &str) -> Arc<LogMessage> {
    Arc::new(LogMessage::new(Draft {
        text,
        ts_ns: TS0 + n,
        level,
        kind: SourceKind::Container,
        origin: o.clone(),
        is_stderr: level == Level::Error,
        truncated: false,
        position: Some(pos(n)),
        id: Id::Line(pos(n)),
    }))
}

/// A message without a position: a lifecycle event of `web`, or the agent's own.
pub fn event(kind: SourceKind, level: Level, text: &str) -> Arc<LogMessage> {
    let o = match kind {
        SourceKind::Manager => Arc::new(Origin::manager(Arc::from(HOST))),
        _ => origin("1001", "web", "c-web"),
    };
    Arc::new(LogMessage::new(Draft {
        text,
        ts_ns: TS0,
        level,
        kind,
        origin: o,
        is_stderr: false,
        truncated: false,
        position: None,
        id: Id::Given(format!("ev-{TS0}-{text}")),
    }))
}

/// The backend's settings for a broker on `port`, with `vars` on top.
pub fn cfg(port: u16, vars: &[(&str, &str)]) -> MqttConfig {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("MQTT_BROKER".into(), format!("mqtt://127.0.0.1:{port}"));
    env.insert("MQTT_CLIENT_ID".into(), unique("agent"));
    env.insert("MQTT_KEEPALIVE_S".into(), "5".into());
    for (k, v) in vars {
        env.insert(k.to_string(), v.to_string());
    }
    Config::from_env(&env)
        .expect("config")
        .mqtt
        .expect("mqtt on")
}

pub fn start(c: &MqttConfig, state: &Path) -> (Arc<MqttBackend>, Arc<Progress>) {
    let progress = Arc::new(Progress::new());
    let b = MqttBackend::start(c, state, progress.lane(), HOST, "0.1.0").expect("start");
    (b, progress)
}

/// Shuts the backend down and checks the contract's 5 s deadline (docs/CONTRACT.md §2).
pub fn stop(b: &MqttBackend) {
    let t = Instant::now();
    b.shutdown();
    assert!(
        t.elapsed() < Duration::from_millis(3200),
        "shutdown took {:?}",
        t.elapsed()
    );
}
