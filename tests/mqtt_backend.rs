//! The MQTT backend against a real mosquitto: every test starts its own broker on a free
//! loopback port, drives `MqttBackend` through the library API and checks what a real
//! subscriber receives, topic and payload byte for byte.
//!
//! Each test is bounded in time and cleans up its broker and temporary directory, also when it
//! panics (Drop guards). Nothing here may depend on a broker or files outside its own temp dir.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use container_logd::backend::mqtt::MqttBackend;
use container_logd::backend::{Backend, Progress};
use container_logd::message::{Level, LogMessage, SourceKind};

mod util;

use util::msgs::{cfg, event, line, origin, pos, start, stop};

use util::broker::{password_opts, Broker, BrokerOpts, Msg, SubOpts, Subscriber};
use util::{free_port, unique, TempDir, PATIENCE};

/// A child process killed on drop (the agent of the last-will test).
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Splits batches into single messages, after checking each batch payload byte for byte
/// against the stored JSON of the messages it names.
fn unbatch(by_id: &HashMap<&str, &Arc<LogMessage>>, got: &[Msg]) -> Vec<Msg> {
    let mut out = Vec::new();
    for g in got {
        let Some(topic) = g.topic.strip_suffix("/batch") else {
            out.push(g.clone());
            continue;
        };
        let v = g.json();
        let logs = v["logs"].as_array().expect("logs array");
        assert_eq!(v["count"].as_u64(), Some(logs.len() as u64));
        let mut want = format!("{{\"count\":{},\"logs\":[", logs.len());
        for (i, l) in logs.iter().enumerate() {
            let id = l["id"].as_str().expect("id");
            let m = by_id.get(id).expect("a message we sent");
            if i > 0 {
                want.push(',');
            }
            m.write_json(&mut want);
            out.push(Msg::new(g.retained, g.qos, topic, m.json().into_bytes()));
        }
        want.push_str("]}");
        assert_eq!(g.raw, want.as_bytes(), "batch payload byte for byte");
    }
    out
}

/// Checks: every id of `sent` arrived at least once, and per container the first arrivals keep
/// the order of `sent`. Returns the number of duplicates.
fn check_complete_in_order(sent: &[Arc<LogMessage>], got: &[Msg]) -> usize {
    check_arrivals(sent, got, false)
}

/// Like [`check_complete_in_order`], with the order checked per container and topic: batches
/// of different topics (levels) are flushed independently, so only that order is promised.
fn check_arrivals(sent: &[Arc<LogMessage>], got: &[Msg], per_topic: bool) -> usize {
    let mut seen: HashSet<String> = HashSet::new();
    let mut dups = 0;
    let mut last: HashMap<String, i64> = HashMap::new();
    let by_id: HashMap<&str, &Arc<LogMessage>> = sent.iter().map(|m| (m.id(), m)).collect();
    for g in &unbatch(&by_id, got) {
        let v = g.json();
        let id = v["id"].as_str().expect("id").to_string();
        let m = by_id.get(id.as_str()).expect("a message we sent");
        assert_eq!(g.raw, m.json().as_bytes(), "payload byte for byte");
        if !seen.insert(id) {
            dups += 1;
            continue;
        }
        let c = if per_topic {
            format!("{} {}", m.origin.container_id, g.topic)
        } else {
            m.origin.container_id.to_string()
        };
        let ts = m.ts_ns;
        if let Some(prev) = last.insert(c.clone(), ts) {
            assert!(ts > prev, "order per container broken in {c}");
        }
    }
    let missing = sent.iter().filter(|m| !seen.contains(m.id())).count();
    assert_eq!(missing, 0, "{missing} messages missing");
    dups
}

#[test]
fn topics_and_payloads_for_every_kind() {
    let dir = TempDir::new("topics");
    let broker = Broker::start();
    let port = broker.port;
    let all = Subscriber::start(port, &["container-manager/logs/#"]);
    let web = Subscriber::start(port, &["container-manager/logs/1001/web/+"]);
    let errors = Subscriber::start(port, &["container-manager/logs/+/+/error"]);
    let (b, progress) = start(&cfg(port, &[]), dir.path());

    let w = origin("1001", "web", "c-web");
    let odd = origin("shop", "a/b+c", "c-odd");
    let msgs = vec![
        line(&w, 1, Level::Info, "Server started on port 8080"),
        line(&w, 2, Level::Error, "boom \"quoted\" \u{7} é"),
        line(&odd, 3, Level::Error, "odd service"),
        event(SourceKind::System, Level::Warn, "container web died"),
        event(SourceKind::Manager, Level::Error, "agent trouble"),
    ];
    for m in &msgs {
        b.log(m);
    }
    let got = all.take(5, PATIENCE);
    let topics: Vec<&str> = got.iter().map(|g| g.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "container-manager/logs/1001/web/info",
            "container-manager/logs/1001/web/error",
            "container-manager/logs/shop/a_b_c/error",
            "container-manager/logs/system/warn",
            "container-manager/logs/manager/error",
        ]
    );
    for (g, m) in got.iter().zip(&msgs) {
        assert_eq!(g.raw, m.json().as_bytes());
        assert!(!g.retained);
    }
    let got = web.take(2, PATIENCE);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].raw, msgs[1].json().as_bytes());
    let got = errors.take(2, PATIENCE);
    assert_eq!(got[0].topic, "container-manager/logs/1001/web/error");
    assert_eq!(got[1].topic, "container-manager/logs/shop/a_b_c/error");
    errors.nothing_more(Duration::from_millis(300));

    wait_for("progress", PATIENCE, || {
        progress.safe().get("c-web").copied() == Some(pos(2))
    });
    assert_eq!(progress.safe().get("c-odd").copied(), Some(pos(3)));
    let h = b.health();
    assert_eq!(h["connected"], true);
    assert_eq!(h["acknowledged"], 5);
    assert_eq!(h["broker"], format!("127.0.0.1:{port}"));
    assert!(b.summary().ok);
    let mut m = String::new();
    b.metrics(&mut m);
    assert!(m.contains("# TYPE container_logd_mqtt_published_total counter"));
    assert!(m.contains("container_logd_mqtt_acknowledged_total 5"));
    stop(&b);
}

fn qos_round_trip(qos: &str) {
    let dir = TempDir::new("qos");
    let broker = Broker::start();
    let port = broker.port;
    let sub = Subscriber::start(port, &["container-manager/logs/#"]);
    let (b, progress) = start(&cfg(port, &[("MQTT_QOS", qos)]), dir.path());
    let o = origin("1001", "web", "c-web");
    let sent: Vec<_> = (1..=500)
        .map(|n| line(&o, n, Level::Info, &format!("line {n}")))
        .collect();
    for m in &sent {
        b.log(m);
    }
    let got = sub.take(500, PATIENCE);
    assert_eq!(check_complete_in_order(&sent, &got), 0);
    wait_for("progress", PATIENCE, || {
        progress.safe().get("c-web").copied() == Some(pos(500))
    });
    assert_eq!(b.health()["acknowledged"], 500);
    stop(&b);
}

#[test]
fn qos0_delivers() {
    qos_round_trip("0");
}

#[test]
fn qos1_delivers() {
    qos_round_trip("1");
}

#[test]
fn qos2_delivers() {
    qos_round_trip("2");
}

#[test]
fn batches_by_count_and_by_interval() {
    let dir = TempDir::new("batch");
    let broker = Broker::start();
    let port = broker.port;
    let sub = Subscriber::start(port, &["container-manager/logs/+/+/error/#"]);
    let c = cfg(
        port,
        &[
            ("MQTT_BATCH", "true"),
            ("MQTT_BATCH_MAX", "5"),
            ("MQTT_BATCH_INTERVAL_MS", "400"),
        ],
    );
    let (b, _p) = start(&c, dir.path());
    let o = origin("1001", "web", "c-web");
    let sent: Vec<_> = (1..=12)
        .map(|n| line(&o, n, Level::Error, &format!("e{n}")))
        .collect();
    // An info line in between must not end up in an error batch.
    b.log(&line(&o, 100, Level::Info, "not an error"));
    let t0 = Instant::now();
    for m in &sent {
        b.log(m);
    }
    let got = sub.take(2, PATIENCE);
    assert_eq!(got.len(), 2, "two full batches");
    assert!(
        t0.elapsed() < Duration::from_millis(350),
        "full batches go at once"
    );
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.topic, "container-manager/logs/1001/web/error/batch");
        let mut want = String::from("{\"count\":5,\"logs\":[");
        for (k, m) in sent[i * 5..i * 5 + 5].iter().enumerate() {
            if k > 0 {
                want.push(',');
            }
            m.write_json(&mut want);
        }
        want.push_str("]}");
        assert_eq!(String::from_utf8_lossy(&g.raw), want);
    }
    // The last two go when the interval since the first of them ran out.
    let rest = sub.take(1, PATIENCE);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "interval batch came after {waited:?}"
    );
    let v = rest[0].json();
    assert_eq!(v["count"], 2);
    assert_eq!(v["logs"][0]["message"], "e11");
    assert_eq!(v["logs"][1]["message"], "e12");
    sub.nothing_more(Duration::from_millis(600));
    stop(&b);
}

/// A lone line on a quiet topic waits in its batch for the interval; it holds back its own
/// container's resume cursor, never another container's, however much that one sends meanwhile.
#[test]
fn a_waiting_batch_holds_back_only_its_own_container() {
    let dir = TempDir::new("batch-flood");
    let broker = Broker::start();
    let port = broker.port;
    let sub = Subscriber::start(port, &["container-manager/logs/+/+/info/#"]);
    let c = cfg(
        port,
        &[
            ("MQTT_BATCH", "true"),
            ("MQTT_BATCH_MAX", "50"),
            ("MQTT_BATCH_INTERVAL_MS", "60000"),
            ("MQTT_QOS", "1"),
        ],
    );
    let (b, progress) = start(&c, dir.path());
    let quiet = origin("1001", "quiet", "c-quiet");
    let busy = origin("1001", "busy", "c-busy");
    b.log(&line(&quiet, 0, Level::Error, "the quiet one"));
    let flood: Vec<_> = (1..=10_000)
        .map(|n| line(&busy, n, Level::Info, "x"))
        .collect();
    b.log_many(&flood);
    assert_eq!(sub.take(200, PATIENCE).len(), 200, "full batches");
    let (q, c): (Arc<str>, Arc<str>) = (Arc::from("c-quiet"), Arc::from("c-busy"));
    wait_for(
        "the busy cursor to reach its end",
        Duration::from_secs(20),
        || progress.safe().get(&c) == Some(&pos(10_000)),
    );
    assert_eq!(progress.safe().get(&q), None, "the quiet line still waits");
    stop(&b);
    assert_eq!(progress.safe().get(&q), Some(&pos(0)), "spooled at stop");
}

#[test]
fn retained_status_and_clean_offline() {
    let dir = TempDir::new("status");
    let broker = Broker::start();
    let port = broker.port;
    let status = format!("test/status/{}", unique("s"));
    let c = cfg(port, &[("MQTT_STATUS_TOPIC", &status)]);
    let (b, _p) = start(&c, dir.path());
    wait_for("connect", PATIENCE, || b.health()["connected"] == true);
    // A subscriber arriving later gets the retained online status.
    let sub = Subscriber::start(port, &[&status]);
    let got = sub.take(1, PATIENCE);
    // Online, with the health known so far (no one has given the backend any yet).
    let v = got[0].json();
    assert_eq!(
        (&v["status"], &v["host"], &v["version"]),
        (&"online".into(), &"pi-test".into(), &"0.1.0".into())
    );
    assert_eq!(
        (&v["containers"], &v["engine"]),
        (&0.into(), &"down".into())
    );
    assert!(v["startedAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(got[0].retained);
    stop(&b);
    let got = sub.take(1, PATIENCE);
    assert_eq!(
        String::from_utf8_lossy(&got[0].raw),
        r#"{"status":"offline","host":"pi-test","version":"0.1.0"}"#
    );
    let later = Subscriber::start(port, &[&status]);
    let got = later.take(1, PATIENCE);
    assert!(got[0].retained);
    assert_eq!(got[0].json()["status"], "offline");
}

/// Run as a child process by `last_will_when_the_agent_is_killed`: an agent that never stops.
fn child_agent(port: u16, status: &str, state: &Path) {
    let c = cfg(port, &[("MQTT_STATUS_TOPIC", status)]);
    let (_b, _p) = start(&c, state);
    thread::sleep(Duration::from_secs(60));
}

#[test]
fn last_will_when_the_agent_is_killed() {
    if let (Ok(port), Ok(status), Ok(state)) = (
        std::env::var("MQTT_TEST_CHILD_PORT"),
        std::env::var("MQTT_TEST_CHILD_STATUS"),
        std::env::var("MQTT_TEST_CHILD_STATE"),
    ) {
        child_agent(port.parse().expect("port"), &status, Path::new(&state));
        return;
    }
    // The child is killed, so its state directory is ours to remove.
    let dir = TempDir::new("will");
    let broker = Broker::start();
    let port = broker.port;
    let status = format!("test/status/{}", unique("w"));
    let sub = Subscriber::start(port, &[&status]);
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args([
            "last_will_when_the_agent_is_killed",
            "--exact",
            "--nocapture",
        ])
        .env("MQTT_TEST_CHILD_PORT", port.to_string())
        .env("MQTT_TEST_CHILD_STATUS", &status)
        .env("MQTT_TEST_CHILD_STATE", dir.path().join("child-state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("child agent");
    let mut child = Kill(child);
    let got = sub.take(1, PATIENCE);
    assert_eq!(got[0].json()["status"], "online");
    child.0.kill().expect("SIGKILL");
    let _ = child.0.wait();
    let got = sub.take(1, PATIENCE);
    assert_eq!(got.len(), 1, "last will published");
    assert_eq!(
        String::from_utf8_lossy(&got[0].raw),
        r#"{"status":"offline","host":"pi-test","version":"0.1.0"}"#
    );
    let later = Subscriber::start(port, &[&status]);
    let got = later.take(1, PATIENCE);
    assert!(got[0].retained, "the will is retained");
    assert_eq!(got[0].json()["status"], "offline");
}

#[test]
fn username_and_password() {
    let dir = TempDir::new("auth");
    let broker = Broker::start_opts(password_opts(dir.path(), "logd", "s3cret word"));
    let port = broker.port;
    let sub = Subscriber::start_opts(
        port,
        &["container-manager/logs/#"],
        SubOpts {
            creds: Some(("logd", "s3cret word")),
            ..Default::default()
        },
    );
    // A wrong password is refused and said so in health, without the password itself.
    let bad = cfg(
        port,
        &[("MQTT_USERNAME", "logd"), ("MQTT_PASSWORD", "wrong-pass")],
    );
    let (b, _p) = start(&bad, dir.path());
    wait_for("refusal", PATIENCE, || {
        !b.health()["lastError"].as_str().unwrap_or("").is_empty()
    });
    let h = b.health();
    assert_eq!(h["connected"], false);
    assert!(!h.to_string().contains("wrong-pass"));
    stop(&b);

    let state = TempDir::new("auth-state");
    let good = cfg(
        port,
        &[("MQTT_USERNAME", "logd"), ("MQTT_PASSWORD", "s3cret word")],
    );
    let (b, _p) = start(&good, state.path());
    let o = origin("1001", "web", "c-web");
    let m = line(&o, 1, Level::Info, "with auth");
    b.log(&m);
    let got = sub.take(1, PATIENCE);
    assert_eq!(got[0].raw, m.json().as_bytes());
    stop(&b);
}

#[test]
fn tls_verified_and_wrong_ca_refused() {
    let dir = TempDir::new("tls");
    let d = dir.path();
    let (broker, tls_port) = util::tls::broker(d);
    let plain = broker.port;
    let sub = Subscriber::start(plain, &["container-manager/logs/#"]);

    let ca = d.join("ca.crt");
    let mut c = cfg(
        tls_port,
        &[("MQTT_CA_FILE", ca.to_str().expect("utf-8 path"))],
    );
    c.tls = true;
    c.host = "localhost".into();
    let state = TempDir::new("tls-state");
    let (b, _p) = start(&c, state.path());
    let o = origin("1001", "web", "c-web");
    let m = line(&o, 1, Level::Info, "over tls");
    b.log(&m);
    let got = sub.take(1, PATIENCE);
    assert_eq!(got.len(), 1, "health: {}", b.health());
    assert_eq!(got[0].raw, m.json().as_bytes());
    stop(&b);

    let other = d.join("other-ca.crt");
    let mut c = cfg(
        tls_port,
        &[("MQTT_CA_FILE", other.to_str().expect("utf-8 path"))],
    );
    c.tls = true;
    c.host = "localhost".into();
    let state = TempDir::new("tls-state2");
    let (b, _p) = start(&c, state.path());
    b.log(&line(&o, 2, Level::Info, "must not go out"));
    wait_for("tls refusal", PATIENCE, || {
        !b.health()["lastError"].as_str().unwrap_or("").is_empty()
    });
    let h = b.health();
    let err = h["lastError"].as_str().unwrap_or("").to_string();
    assert!(
        err.to_lowercase().contains("certificate"),
        "lastError: {err}"
    );
    assert_eq!(h["connected"], false);
    sub.nothing_more(Duration::from_millis(500));
    stop(&b);

    // A CA file holding no certificate stops start-up with a clear error.
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("junk");
    let mut c = cfg(tls_port, &[("MQTT_CA_FILE", junk.to_str().expect("utf-8"))]);
    c.tls = true;
    let e = MqttBackend::start(&c, state.path(), Progress::new().lane(), "h", "v")
        .err()
        .expect("refused");
    assert!(e.to_string().contains("junk.pem"), "{e}");
}

/// A broker that keeps the connection open but answers nothing (stopped with SIGSTOP) is given
/// up on once no acknowledgement came for 10 s: health says why, the connection is made again,
/// and once the broker answers every message arrives.
#[test]
fn a_broker_that_stops_answering_is_reconnected_and_nothing_is_lost() {
    let dir = TempDir::new("mute");
    let broker = Broker::start();
    let sub = Subscriber::start_opts(
        broker.port,
        &["container-manager/logs/#"],
        SubOpts {
            persistent: true,
            ..Default::default()
        },
    );
    // Keep-alive pings would notice a stopped broker too; a broker that still answers pings
    // but no publishes is what this is about, so they are rare here.
    let vars = [("MQTT_QOS", "1"), ("MQTT_KEEPALIVE_S", "120")];
    let (b, _progress) = start(&cfg(broker.port, &vars), dir.path());
    let o = origin("1001", "web", "c-web");
    let sent: Vec<_> = (1..=300)
        .map(|n| line(&o, n, Level::Info, &format!("line {n}")))
        .collect();
    b.log_many(&sent[..100]);
    assert_eq!(sub.take(100, PATIENCE).len(), 100);
    broker.signal("STOP");
    let t = Instant::now();
    b.log_many(&sent[100..200]);
    wait_for("the stall to be noticed", PATIENCE, || {
        b.health()["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("no acknowledgement"))
    });
    let noticed = t.elapsed();
    assert!(
        noticed >= Duration::from_secs(9),
        "noticed after {noticed:?}"
    );
    assert_eq!(b.health()["connected"], false);
    broker.signal("CONT");
    b.log_many(&sent[200..]);
    let mut ids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while ids.len() < 200 && Instant::now() < deadline {
        for g in sub.take(10, Duration::from_millis(200)) {
            ids.insert(g.json()["id"].as_str().unwrap_or("").to_string());
        }
    }
    for m in &sent[100..] {
        assert!(ids.contains(m.id()), "{} never arrived", m.id());
    }
    wait_for("connected again", PATIENCE, || {
        b.health()["connected"] == true
    });
    assert!(b.health()["reconnects"].as_u64().unwrap_or(0) >= 1);
    stop(&b);
}

#[test]
fn broker_outage_loses_nothing() {
    outage(&[]);
}

/// At MQTT 5 the spool is replayed on a new connection, whose topic aliases start afresh.
#[test]
fn broker_outage_loses_nothing_at_v5() {
    outage(&[("MQTT_VERSION", "5")]);
}

#[test]
fn broker_outage_loses_nothing_with_batches_at_qos2() {
    outage(&[
        ("MQTT_QOS", "2"),
        ("MQTT_BATCH", "true"),
        ("MQTT_BATCH_MAX", "20"),
        ("MQTT_BATCH_INTERVAL_MS", "100"),
    ]);
}

/// Stops the broker while thousands of messages are logged, restarts it on the same port and
/// checks that every message arrives, in order per container, and that progress caught up.
fn outage(vars: &[(&str, &str)]) {
    let dir = TempDir::new("outage");
    let mut broker = Broker::start();
    let port = broker.port;
    let sub = Subscriber::start_opts(
        port,
        &["container-manager/logs/#"],
        SubOpts {
            persistent: true,
            ..Default::default()
        },
    );
    let (b, progress) = start(&cfg(port, vars), dir.path());
    let origins = [
        origin("1001", "web", "c-web"),
        origin("1001", "db", "c-db"),
        origin("1002", "api", "c-api"),
    ];
    let mut sent = Vec::new();
    let mut n = 0;
    let mut log_some = |count: usize, sent: &mut Vec<Arc<LogMessage>>| {
        for _ in 0..count {
            n += 1;
            let o = &origins[n as usize % origins.len()];
            let level = if n % 7 == 0 {
                Level::Error
            } else {
                Level::Info
            };
            let m = line(
                o,
                n,
                level,
                &format!("message number {n} {}", "x".repeat(100)),
            );
            b.log(&m);
            sent.push(m);
        }
    };
    log_some(2000, &mut sent);
    broker.stop();
    let t = Instant::now();
    log_some(10_000, &mut sent);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "log() blocked for {took:?}");
    thread::sleep(Duration::from_secs(4));
    let h = b.health();
    assert_eq!(h["connected"], false);
    assert!(h["spooled"].as_u64().unwrap_or(0) > 0, "{h}");
    assert!(!b.summary().ok, "disconnected for 4 s");
    broker.start_again();
    log_some(1000, &mut sent);

    let deadline = Instant::now() + Duration::from_secs(40);
    let mut got = Vec::new();
    let mut ids = HashSet::new();
    let by_id: HashMap<&str, &Arc<LogMessage>> = sent.iter().map(|m| (m.id(), m)).collect();
    while ids.len() < sent.len() && Instant::now() < deadline {
        let more = sub.take(100, Duration::from_millis(200));
        for g in unbatch(&by_id, &more) {
            ids.insert(g.json()["id"].as_str().unwrap_or("").to_string());
        }
        got.extend(more);
    }
    let batching = vars.iter().any(|(k, v)| *k == "MQTT_BATCH" && *v == "true");
    let dups = check_arrivals(&sent, &got, batching);
    eprintln!(
        "outage: {} sent, {} received in {} publishes, {dups} duplicates; health {}",
        sent.len(),
        unbatch(&by_id, &got).len(),
        got.len(),
        b.health()
    );
    wait_for("progress", PATIENCE, || {
        let safe = progress.safe();
        origins.iter().all(|o| {
            let last = sent
                .iter()
                .filter(|m| m.origin.container_id == o.container_id)
                .map(|m| m.position())
                .max()
                .flatten();
            safe.get(&o.container_id).copied() == last
        })
    });
    let h = b.health();
    assert!(h["reconnects"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(h["dropped"], 0);
    assert!(b.summary().ok);
    stop(&b);
}

#[test]
fn spool_survives_a_restart_of_the_agent() {
    let state = TempDir::new("replay-state");
    let port = free_port();
    let c = cfg(port, &[]);
    // No broker yet: start-up must neither fail nor block.
    let t = Instant::now();
    let (b, progress) = start(&c, state.path());
    assert!(t.elapsed() < Duration::from_secs(1));
    let o = origin("1001", "web", "c-web");
    let sent: Vec<_> = (1..=3000)
        .map(|n| line(&o, n, Level::Info, &format!("spooled {n}")))
        .collect();
    for m in &sent {
        b.log(m);
    }
    stop(&b);
    // Everything was spooled at shutdown, so every position is taken.
    assert_eq!(progress.safe().get("c-web").copied(), Some(pos(3000)));
    let spooled: u64 = std::fs::read_dir(state.path().join("spool"))
        .expect("spool dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(spooled > 0);

    let _broker = Broker::start_opts(BrokerOpts {
        port: Some(port),
        ..Default::default()
    });
    let sub = Subscriber::start(port, &["container-manager/logs/#"]);
    let (b, _p) = start(&c, state.path());
    let got = sub.take(3000, PATIENCE);
    assert_eq!(check_complete_in_order(&sent, &got), 0);
    wait_for("spool emptied", PATIENCE, || b.health()["spoolBytes"] == 0);
    stop(&b);
    // A clean stop with nothing left leaves no segment to replay.
    let (b, _p) = start(&c, state.path());
    sub.nothing_more(Duration::from_millis(800));
    stop(&b);
}

#[test]
fn spool_limit_drops_the_oldest() {
    let dir = TempDir::new("limit");
    let port = free_port();
    let c = cfg(port, &[("MQTT_SPOOL_MAX_BYTES", "300000")]);
    let (b, _p) = start(&c, dir.path());
    let o = origin("1001", "web", "c-web");
    let sent: Vec<_> = (1..=8000)
        .map(|n| line(&o, n, Level::Info, &format!("{n} {}", "y".repeat(200))))
        .collect();
    for m in &sent {
        b.log(m);
    }
    wait_for("drops", PATIENCE, || {
        b.health()["dropped"].as_u64().unwrap_or(0) > 0
    });
    // Let the publisher finish taking the rest in before counting.
    thread::sleep(Duration::from_millis(700));
    let h = b.health();
    assert!(
        h["spoolBytes"].as_u64().unwrap_or(u64::MAX) <= 300_000,
        "{h}"
    );
    assert!(!b.summary().ok, "a recent drop makes the backend unhealthy");
    let dropped = h["dropped"].as_u64().unwrap_or(0) as usize;

    let _broker = Broker::start_opts(BrokerOpts {
        port: Some(port),
        ..Default::default()
    });
    let sub = Subscriber::start(port, &["container-manager/logs/#"]);
    let want = sent.len() - dropped;
    let got = sub.take(want, PATIENCE);
    sub.nothing_more(Duration::from_millis(500));
    // What arrives is the newest part, complete and in order: the oldest went first.
    let tail = &sent[dropped..];
    assert_eq!(check_complete_in_order(tail, &got), 0);
    stop(&b);
}

#[test]
fn qos1_throughput() {
    let dir = TempDir::new("speed");
    let broker = Broker::start();
    let port = broker.port;
    let (b, _p) = start(&cfg(port, &[]), dir.path());
    wait_for("connect", PATIENCE, || b.health()["connected"] == true);
    let o = origin("1001", "web", "c-web");
    let n = 20_000;
    let msgs: Vec<_> = (1..=n)
        .map(|i| line(&o, i, Level::Info, &format!("{i} {}", "z".repeat(80))))
        .collect();
    let t = Instant::now();
    for m in &msgs {
        b.log(m);
    }
    wait_for("acks", PATIENCE, || {
        b.health()["acknowledged"].as_u64() == Some(n as u64)
    });
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "qos1 throughput: {n} messages in {secs:.2} s = {:.0} msgs/s",
        n as f64 / secs
    );
    stop(&b);
}
