//! Home Assistant MQTT discovery (docs/CONTRACT.md §10, `HA_DISCOVERY=true`): which retained
//! messages make one Home Assistant device per host, and when they change.
//!
//! Per host, under `{HA_DISCOVERY_PREFIX}/{component}/{node}/{object}/config`: a connectivity
//! `binary_sensor` and sensors for containers, lines per minute, spool bytes and dropped, all
//! read from the retained status topic (`MQTT_STATUS_TOPIC`), and errors per minute, read from
//! `{status}/errors`. Per service (appId and service name): a `last error` sensor (the line cut
//! to 255 characters; attributes: timestamp and container) and an `errors/min` sensor, read from
//! `{status}/service/{appId}_{service}`. Every sensor but connectivity is available while the
//! status says `online`. A service with no followed container for `HA_DISCOVERY_EXPIRY_S` has
//! its configs and state removed (empty retained messages).
//!
//! [`Discovery`] is the pure core: errors and the followed services come in with the time, the
//! messages to publish come out of [`Discovery::step`]. It never blocks and reads no clock.
//! [`Tap`] is how errors reach it: a backend of its own that keeps no line and reports no
//! position, so it never holds a cursor back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Summary};
use serde_json::{json, Value};

use crate::message::{Level, LogMessage, SourceKind};

/// A changed state is published again at most this often.
pub const STATE_EVERY: Duration = Duration::from_secs(10);
/// Home Assistant keeps at most 255 characters of a state.
const STATE_MAX_CHARS: usize = 255;

/// One retained message to publish (an empty payload removes what the broker held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub topic: String,
    pub payload: String,
}

/// Errors in the last 60 s, in one-second buckets (an error storm costs no memory).
#[derive(Debug, Clone)]
struct PerMinute {
    buckets: [u32; 60],
    /// The second the newest bucket is for.
    second: u64,
}

impl Default for PerMinute {
    fn default() -> PerMinute {
        PerMinute {
            buckets: [0; 60],
            second: 0,
        }
    }
}

impl PerMinute {
    fn roll(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        let gap = (second - self.second).min(60);
        for s in 1..=gap {
            self.buckets[((self.second + s) % 60) as usize] = 0;
        }
        self.second = second;
    }

    fn add(&mut self, second: u64) {
        self.roll(second);
        let i = (self.second % 60) as usize;
        self.buckets[i] = self.buckets[i].saturating_add(1);
    }

    fn total(&mut self, second: u64) -> u64 {
        self.roll(second);
        self.buckets.iter().map(|&n| u64::from(n)).sum()
    }
}

/// What one service's sensors show, and what was published of it.
#[derive(Debug, Default)]
struct Service {
    app: String,
    service: String,
    errors: PerMinute,
    /// The last error line (cut), its time (RFC 3339) and container.
    last_error: Option<(String, String, String)>,
    /// When a container of it was last followed.
    seen: Option<Instant>,
    configs_sent: bool,
    state_sent: Option<(String, Instant)>,
}

/// See the module documentation.
pub struct Discovery {
    prefix: String,
    node: String,
    host: String,
    version: String,
    status_topic: String,
    expiry: Duration,
    start: Instant,
    services: BTreeMap<String, Service>,
    host_errors: PerMinute,
    host_sent: Option<(String, Instant)>,
    /// Host configs are (re)published at the next step: at start and on every new connection.
    fresh: bool,
}

/// `s` with what a topic level or an object id must not hold replaced by `_`.
fn object_id(s: &str) -> String {
    let id: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() {
        "_".into()
    } else {
        id
    }
}

/// The first 255 characters of `s`.
fn cut(s: &str) -> String {
    match s.char_indices().nth(STATE_MAX_CHARS) {
        Some((at, _)) => s[..at].to_string(),
        None => s.to_string(),
    }
}

impl Discovery {
    pub fn new(
        prefix: &str,
        host: &str,
        version: &str,
        status_topic: &str,
        expiry: Duration,
        now: Instant,
    ) -> Discovery {
        Discovery {
            prefix: prefix.to_string(),
            node: object_id(host),
            host: host.to_string(),
            version: version.to_string(),
            status_topic: status_topic.to_string(),
            expiry,
            start: now,
            services: BTreeMap::new(),
            host_errors: PerMinute::default(),
            host_sent: None,
            fresh: true,
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    /// Event: an error line of a container of `app`/`service`.
    pub fn error(&mut self, m: &LogMessage, now: Instant) {
        let second = self.second(now);
        self.host_errors.add(second);
        let o = &m.origin;
        let s = self.service(o.app_id.as_str(), &o.service_name, now);
        s.errors.add(second);
        let at = crate::engine::timestamp::format_rfc3339_ns(m.ts_ns);
        s.last_error = Some((cut(&m.text()), at, o.name.clone()));
    }

    /// Event: the services of the containers followed now.
    pub fn followed<'a>(
        &mut self,
        services: impl Iterator<Item = (&'a str, &'a str)>,
        now: Instant,
    ) {
        for (app, service) in services {
            self.service(app, service, now);
        }
    }

    /// Event: a new broker connection; everything is published again.
    pub fn connected(&mut self) {
        self.fresh = true;
        self.host_sent = None;
        for s in self.services.values_mut() {
            s.configs_sent = false;
            s.state_sent = None;
        }
    }

    fn service(&mut self, app: &str, service: &str, now: Instant) -> &mut Service {
        let key = object_id(&format!("{app}_{service}"));
        let s = self.services.entry(key).or_insert_with(|| Service {
            app: app.to_string(),
            service: service.to_string(),
            ..Service::default()
        });
        s.seen = Some(now);
        s
    }

    /// What to publish now: configs not yet sent, states changed (at most every
    /// [`STATE_EVERY`]), and the removal of services gone for the expiry.
    pub fn step(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        if std::mem::take(&mut self.fresh) {
            out.extend(self.host_configs());
        }
        let second = self.second(now);
        let host_state = format!("{{\"errorsPerMin\":{}}}", self.host_errors.total(second));
        if due(&self.host_sent, &host_state, now) {
            out.push(Out {
                topic: format!("{}/errors", self.status_topic),
                payload: host_state.clone(),
            });
            self.host_sent = Some((host_state, now));
        }
        let gone: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| {
                s.seen
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.expiry)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            out.extend(self.remove(&key));
        }
        let keys: Vec<String> = self.services.keys().cloned().collect();
        for key in keys {
            out.extend(self.service_step(&key, second, now));
        }
        out
    }

    fn service_step(&mut self, key: &str, second: u64, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let state_topic = self.service_topic(key);
        let configs = self.service_configs(key);
        let Some(s) = self.services.get_mut(key) else {
            return out;
        };
        if !s.configs_sent {
            s.configs_sent = true;
            out.extend(configs);
        }
        let state = service_state(s, second);
        if due(&s.state_sent, &state, now) {
            out.push(Out {
                topic: state_topic,
                payload: state.clone(),
            });
            s.state_sent = Some((state, now));
        }
        out
    }

    /// Empty retained messages for a service's configs and state; it is forgotten.
    fn remove(&mut self, key: &str) -> Vec<Out> {
        let mut out: Vec<Out> = self
            .service_configs(key)
            .into_iter()
            .map(|c| Out {
                topic: c.topic,
                payload: String::new(),
            })
            .collect();
        out.push(Out {
            topic: self.service_topic(key),
            payload: String::new(),
        });
        self.services.remove(key);
        out
    }

    fn service_topic(&self, key: &str) -> String {
        format!("{}/service/{key}", self.status_topic)
    }

    fn config_topic(&self, component: &str, object: &str) -> String {
        format!("{}/{component}/{}/{object}/config", self.prefix, self.node)
    }

    /// The device every entity of this host belongs to.
    fn device(&self) -> Value {
        json!({
            "identifiers": [format!("container_logd_{}", self.node)],
            "name": self.host,
            "manufacturer": "container-logd",
            "model": "container-logd",
            "sw_version": self.version,
        })
    }

    /// One entity's config: `fields` plus its name, ids, state topic and device; with
    /// availability from the status unless `always`.
    fn config(
        &self,
        object: &str,
        name: &str,
        state_topic: &str,
        fields: Value,
        always: bool,
    ) -> String {
        let unique = format!("container_logd_{}_{object}", self.node);
        let mut c = json!({
            "name": name,
            "unique_id": unique,
            "object_id": unique,
            "state_topic": state_topic,
            "device": self.device(),
        });
        if !always {
            c["availability_topic"] = self.status_topic.clone().into();
            c["availability_template"] = "{{ value_json.status }}".into();
            c["payload_available"] = "online".into();
            c["payload_not_available"] = "offline".into();
        }
        if let (Some(c), Value::Object(f)) = (c.as_object_mut(), fields) {
            c.extend(f);
        }
        c.to_string()
    }

    /// The host's entities.
    fn host_configs(&self) -> Vec<Out> {
        let st = self.status_topic.clone();
        let errors = format!("{st}/errors");
        let [connectivity, spool, dropped] = host_fields();
        let entities = [
            (
                "binary_sensor",
                "connectivity",
                "Connectivity",
                &st,
                connectivity,
            ),
            (
                "sensor",
                "containers",
                "Containers",
                &st,
                measure("containers", "containers"),
            ),
            (
                "sensor",
                "lines_per_min",
                "Lines per minute",
                &st,
                measure("linesPerMin", "lines/min"),
            ),
            (
                "sensor",
                "errors_per_min",
                "Errors per minute",
                &errors,
                measure("errorsPerMin", "errors/min"),
            ),
            ("sensor", "spool_bytes", "Spool", &st, spool),
            ("sensor", "dropped", "Dropped", &st, dropped),
        ];
        entities
            .into_iter()
            .map(|(component, object, name, topic, fields)| Out {
                topic: self.config_topic(component, object),
                payload: self.config(object, name, topic, fields, component == "binary_sensor"),
            })
            .collect()
    }

    /// A service's entities (none when it is unknown).
    fn service_configs(&self, key: &str) -> Vec<Out> {
        let Some(s) = self.services.get(key) else {
            return Vec::new();
        };
        let state = self.service_topic(key);
        let label = format!("{} {}", s.app, s.service);
        let last = json!({
            "value_template": "{{ value_json.lastError }}",
            "json_attributes_topic": state,
            "json_attributes_template":
                "{{ {'timestamp': value_json.lastErrorAt, 'container': value_json.container} | tojson }}",
            "icon": "mdi:alert-circle",
        });
        let rate = json!({
            "value_template": "{{ value_json.errorsPerMin }}",
            "unit_of_measurement": "errors/min",
            "state_class": "measurement",
        });
        [
            ("last_error", "last error", last),
            ("errors_per_min", "errors/min", rate),
        ]
        .into_iter()
        .map(|(suffix, what, fields)| {
            let object = format!("{key}_{suffix}");
            Out {
                topic: self.config_topic("sensor", &object),
                payload: self.config(&object, &format!("{label} {what}"), &state, fields, false),
            }
        })
        .collect()
    }
}

/// The fields of a sensor of `value_json.{field}` in `unit`.
fn measure(field: &str, unit: &str) -> Value {
    json!({
        "value_template": format!("{{{{ value_json.{field} }}}}"),
        "unit_of_measurement": unit,
        "state_class": "measurement",
    })
}

/// The fields of the connectivity, spool and dropped entities.
fn host_fields() -> [Value; 3] {
    [
        json!({
            "device_class": "connectivity",
            "value_template": "{{ value_json.status }}",
            "payload_on": "online",
            "payload_off": "offline",
        }),
        json!({
            "value_template": "{{ value_json.spoolBytes }}",
            "unit_of_measurement": "B",
            "device_class": "data_size",
            "state_class": "measurement",
        }),
        json!({
            "value_template": "{{ value_json.dropped }}",
            "state_class": "total_increasing",
        }),
    ]
}

/// Whether `state` should go out: never sent, or changed and [`STATE_EVERY`] since the last.
fn due(sent: &Option<(String, Instant)>, state: &str, now: Instant) -> bool {
    match sent {
        None => true,
        Some((last, at)) => last != state && now.saturating_duration_since(*at) >= STATE_EVERY,
    }
}

/// A service's state: `{"errorsPerMin":N,"lastError":…,"lastErrorAt":…,"container":…}`.
fn service_state(s: &mut Service, second: u64) -> String {
    let (text, at, container) = match &s.last_error {
        Some((t, a, c)) => (t.as_str(), Value::from(a.as_str()), Value::from(c.as_str())),
        None => ("", Value::Null, Value::Null),
    };
    json!({
        "errorsPerMin": s.errors.total(second),
        "lastError": text,
        "lastErrorAt": at,
        "container": container,
    })
    .to_string()
}

/// The discovery core shared by the tap (errors), housekeeping (followed services) and the
/// fleet connection (what to publish).
pub type Shared = Arc<Mutex<Discovery>>;

pub fn lock(d: &Mutex<Discovery>) -> MutexGuard<'_, Discovery> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

/// The backend through which error lines reach the discovery core; it keeps nothing else.
pub struct Tap(pub Shared);

impl Backend for Tap {
    fn name(&self) -> &'static str {
        "homeAssistant"
    }

    fn log(&self, msg: &Arc<LogMessage>) {
        self.log_many(std::slice::from_ref(msg));
    }

    fn log_many(&self, msgs: &[Arc<LogMessage>]) {
        let errors = msgs
            .iter()
            .filter(|m| m.level == Level::Error && m.kind == SourceKind::Container);
        let mut d: Option<MutexGuard<'_, Discovery>> = None;
        for m in errors {
            d.get_or_insert_with(|| lock(&self.0))
                .error(m, Instant::now());
        }
    }

    fn shutdown(&self) {}

    fn summary(&self) -> Summary {
        Summary {
            ok: true,
            dropped: 0,
            spool_bytes: 0,
        }
    }

    fn health(&self) -> serde_json::Value {
        serde_json::json!({ "services": lock(&self.0).services.len() })
    }

    fn metrics(&self, _out: &mut String) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Draft, LabelValue, Origin};

    fn error_line(app: &str, service: &str, text: &str) -> LogMessage {
        LogMessage::new(Draft {
            text,
            ts_ns: 1_700_000_000_000_000_000,
            level: Level::Error,
            kind: SourceKind::Container,
            origin: Arc::new(Origin::new(
                Arc::from("c1"),
                format!("{service}-1"),
                LabelValue::from_label(app),
                service.into(),
                None,
                Arc::from("pi"),
            )),
            is_stderr: true,
            truncated: false,
            position: None,
            id: crate::message::Id::Given("c1-1-0".into()),
        })
    }

    fn core(t0: Instant) -> Discovery {
        Discovery::new(
            "homeassistant",
            "pi.local",
            "0.1.0",
            "cm/status/pi",
            Duration::from_secs(60),
            t0,
        )
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn host_configs_follow_the_schema() {
        let t0 = Instant::now();
        let mut d = core(t0);
        let out = d.step(t0);
        let topics: Vec<&str> = out.iter().map(|o| o.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/pi_local/connectivity/config",
                "homeassistant/sensor/pi_local/containers/config",
                "homeassistant/sensor/pi_local/lines_per_min/config",
                "homeassistant/sensor/pi_local/errors_per_min/config",
                "homeassistant/sensor/pi_local/spool_bytes/config",
                "homeassistant/sensor/pi_local/dropped/config",
                "cm/status/pi/errors",
            ]
        );
        let c = json(&out[0].payload);
        assert_eq!(c["device_class"], "connectivity");
        assert_eq!(c["state_topic"], "cm/status/pi");
        assert_eq!(c["payload_on"], "online");
        assert_eq!(c["unique_id"], "container_logd_pi_local_connectivity");
        assert_eq!(c["device"]["identifiers"][0], "container_logd_pi_local");
        assert_eq!(c["device"]["name"], "pi.local");
        assert!(c.get("availability_topic").is_none());
        let s = json(&out[1].payload);
        assert_eq!(s["value_template"], "{{ value_json.containers }}");
        assert_eq!(s["availability_topic"], "cm/status/pi");
        assert_eq!(s["availability_template"], "{{ value_json.status }}");
        assert_eq!(s["payload_not_available"], "offline");
        assert_eq!(json(&out[6].payload)["errorsPerMin"], 0);
        assert!(d.step(t0).is_empty(), "nothing changed");
    }

    #[test]
    fn a_service_gets_its_sensors_and_its_errors() {
        let t0 = Instant::now();
        let mut d = core(t0);
        let _ = d.step(t0);
        let long = "e".repeat(300);
        d.error(&error_line("1001", "web", &long), t0);
        let out = d.step(t0 + Duration::from_secs(1));
        let topics: Vec<&str> = out.iter().map(|o| o.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/pi_local/1001_web_last_error/config",
                "homeassistant/sensor/pi_local/1001_web_errors_per_min/config",
                "cm/status/pi/service/1001_web",
            ]
        );
        let c = json(&out[0].payload);
        assert_eq!(c["state_topic"], "cm/status/pi/service/1001_web");
        assert_eq!(c["json_attributes_topic"], "cm/status/pi/service/1001_web");
        assert_eq!(c["value_template"], "{{ value_json.lastError }}");
        let state = json(&out[2].payload);
        assert_eq!(
            state["lastError"].as_str().map(|s| s.chars().count()),
            Some(255)
        );
        assert_eq!(state["errorsPerMin"], 1);
        assert_eq!(state["container"], "web-1");
        assert!(state["lastErrorAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        // Another error: the state waits 10 s after the last.
        d.error(
            &error_line("1001", "web", "boom"),
            t0 + Duration::from_secs(2),
        );
        let soon = d.step(t0 + Duration::from_secs(3));
        assert!(soon.iter().all(|o| !o.topic.ends_with("1001_web")));
        let later = d.step(t0 + Duration::from_secs(12));
        let st = later
            .iter()
            .find(|o| o.topic.ends_with("1001_web"))
            .expect("state");
        assert_eq!(json(&st.payload)["lastError"], "boom");
    }

    #[test]
    fn a_service_gone_for_the_expiry_is_removed() {
        let t0 = Instant::now();
        let mut d = core(t0);
        d.error(&error_line("1001", "web", "boom"), t0);
        let _ = d.step(t0);
        // Still followed at 50 s; gone 60 s after that.
        d.followed([("1001", "web")].into_iter(), t0 + Duration::from_secs(50));
        assert!(d
            .step(t0 + Duration::from_secs(100))
            .iter()
            .all(|o| !o.payload.is_empty()));
        let gone = d.step(t0 + Duration::from_secs(111));
        let removed: Vec<&str> = gone
            .iter()
            .filter(|o| o.payload.is_empty())
            .map(|o| o.topic.as_str())
            .collect();
        assert_eq!(
            removed,
            [
                "homeassistant/sensor/pi_local/1001_web_last_error/config",
                "homeassistant/sensor/pi_local/1001_web_errors_per_min/config",
                "cm/status/pi/service/1001_web",
            ]
        );
    }

    #[test]
    fn errors_per_minute_roll() {
        let mut p = PerMinute::default();
        for s in [0, 1, 1, 59] {
            p.add(s);
        }
        assert_eq!(p.total(59), 4);
        assert_eq!(p.total(60), 3, "second 0 left the window");
        assert_eq!(p.total(61), 1);
        assert_eq!(p.total(500), 0);
    }

    #[test]
    fn a_new_connection_publishes_everything_again() {
        let t0 = Instant::now();
        let mut d = core(t0);
        d.followed([("1001", "web")].into_iter(), t0);
        let first = d.step(t0).len();
        d.connected();
        assert_eq!(d.step(t0 + Duration::from_secs(1)).len(), first);
    }
}
