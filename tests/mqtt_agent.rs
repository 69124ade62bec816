//! MQTT end to end: the real agent binary follows containers of the real (private) engine and
//! publishes to a real mosquitto, and `mosquitto_sub` checks what a subscriber gets — the README.s
//! subscription examples, batches, QoS levels, the retained status and its last will, broker
//! outages, the spool and its limit, credentials and TLS; and at MQTT 5, properties and a
//! broker's refusals. Each test has its own broker and
//! follows only its own containers (`CONTAINERS_INCLUDE`), so tests run side by side.

mod util;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::broker::{password_opts, Broker, BrokerOpts, Msg, SubOpts, Subscriber};
use util::*;

const BASE: &str = "container-manager/logs";
const WAIT: Duration = Duration::from_secs(30);

/// An agent following only `{prefix}-*`, publishing to `broker` (an `mqtt://` URL).
fn agent_for(prefix: &str, broker: &str, env: &[(&str, &str)]) -> Agent {
    let include = format!("{prefix}-*");
    let client_id = unique("logd");
    let mut all = vec![
        ("CONTAINERS_INCLUDE", include.as_str()),
        ("MQTT_BROKER", broker),
        ("MQTT_CLIENT_ID", client_id.as_str()),
    ];
    all.extend_from_slice(env);
    Agent::start(&all)
}

/// `docker run` labels giving `appId` and `serviceName`.
fn labels(app: &str, service: &str) -> Vec<String> {
    vec![
        "-l".into(),
        format!("io.balena.app-id={app}"),
        "-l".into(),
        format!("io.balena.service-name={service}"),
    ]
}

fn run(name: &str, app: &str, service: &str, script: &str) -> Container {
    let l = labels(app, service);
    let args: Vec<&str> = l.iter().map(String::as_str).collect();
    Container::run(name, &args, script)
}

/// `/api/v1/health`: the HTTP status and the document.
fn health(agent: &Agent) -> (u16, Value) {
    let (status, body) = agent.get("/api/v1/health");
    (status, json(&body))
}

/// The single messages a subscriber got, batches opened: (topic without `/batch`, message).
fn unbatched(msgs: &[Msg]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for m in msgs {
        if let Some(topic) = m.topic.strip_suffix("/batch") {
            let b = m.json();
            for l in b["logs"].as_array().cloned().unwrap_or_default() {
                out.push((topic.to_string(), l));
            }
        } else if m.topic.starts_with(BASE) {
            out.push((m.topic.clone(), m.json()));
        }
    }
    out
}

/// Container lines only (no `system` or `manager` messages).
fn container_lines(msgs: &[Msg]) -> Vec<(String, Value)> {
    unbatched(msgs)
        .into_iter()
        .filter(|(_, v)| v["source"]["type"] == "container")
        .collect()
}

/// The number `N` of a message `seq N …`.
fn seq_of(v: &Value) -> u64 {
    v["message"]
        .as_str()
        .and_then(|m| m.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A script printing `seq 1 …` to `seq N …`, `per` lines every 0.3 s, then sleeping.
fn numbered(n: u32, per: u32, pad: usize) -> String {
    let pad = "x".repeat(pad);
    format!(
        "i=1; while [ $i -le {n} ]; do echo \"seq $i {pad}\"; \
         if [ $((i % {per})) -eq 0 ]; then sleep 0.3; fi; i=$((i+1)); done; exec sleep 600"
    )
}

/// Per service: the numbers in order of first arrival (deduplicated by `id`), and how many
/// duplicates there were.
fn by_service(lines: &[(String, Value)]) -> (BTreeMap<String, Vec<u64>>, usize) {
    let mut seen = HashSet::new();
    let mut dups = 0;
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, v) in lines {
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if !seen.insert(id) {
            dups += 1;
            continue;
        }
        out.entry(v["serviceName"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(seq_of(v));
    }
    (out, dups)
}

fn distinct_ids(lines: &[(String, Value)]) -> usize {
    lines
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap_or_default().to_string())
        .collect::<HashSet<_>>()
        .len()
}

/// The numbers in a file of the agent, as written.
fn file_seqs(agent: &Agent, app: &str, service: &str) -> Vec<u64> {
    agent.file_lines(app, service).iter().map(seq_of).collect()
}

fn one_to(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

#[test]
fn readme_subscription_examples() {
    let broker = Broker::start();
    let all = Subscriber::start(broker.port, &[&format!("{BASE}/#")]);
    let web = Subscriber::start(broker.port, &[&format!("{BASE}/1001/web/+")]);
    let errors = Subscriber::start(broker.port, &[&format!("{BASE}/+/+/error")]);
    let p = unique("subs");
    let agent = agent_for(&p, &broker.url(), &[]);
    let w = run(
        &format!("{p}-web"),
        "1001",
        "web",
        r#"echo "web says hello"; echo "web fails" >&2; echo "ERROR web broke"; echo "WARN web careful"; exec sleep 600"#,
    );
    let _d = run(
        &format!("{p}-db"),
        "1001",
        "db",
        r#"echo "db ready"; echo "db fails" >&2; exec sleep 600"#,
    );
    assert!(
        wait_until(WAIT, || agent.file_lines("1001", "web").len() == 4
            && agent.file_lines("1001", "db").len() == 2),
        "files; agent log:\n{}",
        agent.log()
    );
    let read = |service: &str| {
        std::fs::read_to_string(agent.log_dir().join("1001").join(format!("{service}.log")))
            .expect("log file")
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let (web_file, db_file) = (read("web"), read("db"));
    let expect_all: Vec<(String, String)> = web_file
        .iter()
        .map(|l| ("web", l))
        .chain(db_file.iter().map(|l| ("db", l)))
        .map(|(s, l)| {
            let level = json(l)["level"].as_str().unwrap_or_default().to_string();
            (format!("{BASE}/1001/{s}/{level}"), l.clone())
        })
        .collect();
    let container_msgs = |s: &Subscriber| -> Vec<(String, String)> {
        s.all()
            .into_iter()
            .filter(|m| m.json()["source"]["type"] == "container")
            .map(|m| (m.topic, m.payload))
            .collect()
    };
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    assert!(
        all.wait(WAIT, |_| container_msgs(&all).len() >= 6),
        "got {:?}",
        all.all()
    );
    let expect_web: Vec<_> = expect_all
        .iter()
        .filter(|(t, _)| t.starts_with(&format!("{BASE}/1001/web/")))
        .cloned()
        .collect();
    let expect_err: Vec<_> = expect_all
        .iter()
        .filter(|(t, _)| t.ends_with("/error"))
        .cloned()
        .collect();
    assert!(web.wait(WAIT, |_| container_msgs(&web).len() >= 4));
    assert!(errors.wait(WAIT, |_| container_msgs(&errors).len() >= 3));
    // Nothing more is on its way.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(sorted(container_msgs(&all)), sorted(expect_all.clone()));
    assert_eq!(sorted(container_msgs(&web)), sorted(expect_web));
    assert_eq!(sorted(container_msgs(&errors)), sorted(expect_err));
    // The filters promise exactly this much: the web one sees only web, the error one only
    // container errors (system and manager topics have one level fewer).
    assert!(web
        .all()
        .iter()
        .all(|m| m.topic.starts_with(&format!("{BASE}/1001/web/"))));
    assert!(errors
        .all()
        .iter()
        .all(|m| m.topic.ends_with("/error") && m.json()["source"]["type"] == "container"));
    let levels: HashSet<String> = expect_all
        .iter()
        .map(|(t, _)| t.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        levels,
        ["info", "error", "warn"].map(String::from).into(),
        "{expect_all:?}"
    );
    // Lifecycle events on {base}/system/info.
    let started = format!("container {} started", w.name);
    assert!(
        all.wait(WAIT, |m| m
            .iter()
            .any(|m| m.topic == format!("{BASE}/system/info")
                && m.json()["message"] == started.as_str()
                && m.json()["isSystem"] == true)),
        "no system message {started:?}: {:?}",
        all.all()
    );
}

#[test]
fn batches_on_error_topics() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &[&format!("{BASE}/+/+/error/#")]);
    let p = unique("batch");
    let agent = agent_for(
        &p,
        &broker.url(),
        &[
            ("MQTT_BATCH", "true"),
            ("MQTT_BATCH_MAX", "5"),
            ("MQTT_BATCH_INTERVAL_MS", "300"),
        ],
    );
    let _w = run(
        &format!("{p}-web"),
        "1001",
        "web",
        r#"for i in $(seq 1 23); do echo "seq $i web" >&2; echo "seq $i info"; done; exec sleep 600"#,
    );
    let _d = run(
        &format!("{p}-db"),
        "1001",
        "db",
        r#"for i in $(seq 1 7); do echo "seq $i db" >&2; sleep 0.1; done; exec sleep 600"#,
    );
    assert!(
        sub.wait(WAIT, |m| distinct_ids(&container_lines(m)) >= 30),
        "got {:?}\nagent log:\n{}",
        sub.all(),
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let got = sub.all();
    let mut batches = 0;
    for m in &got {
        let service = if m.topic == format!("{BASE}/1001/web/error/batch") {
            "web"
        } else if m.topic == format!("{BASE}/1001/db/error/batch") {
            "db"
        } else {
            panic!("unexpected topic {}", m.topic);
        };
        let b = m.json();
        let logs = b["logs"].as_array().cloned().unwrap_or_default();
        assert!((1..=5).contains(&logs.len()), "{}", m.payload);
        assert_eq!(b["count"], logs.len());
        for l in &logs {
            assert_eq!(l["serviceName"], service, "a batch never mixes topics");
            assert_eq!(l["appId"], 1001);
            assert_eq!(l["level"], "error");
        }
        batches += 1;
    }
    let lines = container_lines(&got);
    let (seqs, dups) = by_service(&lines);
    assert_eq!(dups, 0, "each error line exactly once");
    assert_eq!(seqs["web"], one_to(23));
    assert_eq!(seqs["db"], one_to(7));
    // The ids are those of the error lines in the files.
    let mut file_ids: Vec<String> = ["web", "db"]
        .iter()
        .flat_map(|s| agent.file_lines("1001", s))
        .filter(|v| v["level"] == "error")
        .map(|v| v["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut got_ids: Vec<String> = lines
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap_or_default().to_string())
        .collect();
    file_ids.sort();
    got_ids.sort();
    assert_eq!(got_ids, file_ids);
    eprintln!("batches: 30 error lines in {batches} batch publishes");
}

fn qos_round_trip(qos: u8) {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &[&format!("{BASE}/#")]);
    let p = unique(&format!("qos{qos}"));
    let q = qos.to_string();
    let _agent = agent_for(&p, &broker.url(), &[("MQTT_QOS", &q)]);
    let _c = run(
        &format!("{p}-c"),
        "1001",
        "web",
        "for i in $(seq 1 50); do echo \"seq $i\"; done; exec sleep 600",
    );
    assert!(sub.wait(WAIT, |m| container_lines(m).len() >= 50));
    let got = sub.all();
    let (seqs, _) = by_service(&container_lines(&got));
    assert_eq!(seqs["web"], one_to(50));
    for m in got.iter().filter(|m| m.topic.starts_with(BASE)) {
        assert_eq!(m.qos, qos, "{} delivered at QoS {}", m.topic, m.qos);
    }
}

#[test]
fn qos0_arrives() {
    qos_round_trip(0);
}

#[test]
fn qos1_arrives() {
    qos_round_trip(1);
}

#[test]
fn qos2_arrives() {
    qos_round_trip(2);
}

#[test]
fn retained_status_and_last_will() {
    let broker = Broker::start();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string();
    let topic = format!("container-manager/status/{hostname}");
    let p = unique("status");
    let mut agent = agent_for(&p, &broker.url(), &[("MQTT_KEEPALIVE_S", "5")]);
    assert!(wait_until(WAIT, || health(&agent).1["mqtt"]["connected"] == true));
    let status_of = |m: &Msg| m.json()["status"].as_str().unwrap_or_default().to_string();
    // The statuses in order, a status published again with fresh health counted once.
    let states = |m: &[Msg]| {
        let mut v: Vec<String> = m.iter().map(status_of).collect();
        v.dedup();
        v
    };
    // A subscriber that comes later gets the retained online status.
    let sub = Subscriber::start(broker.port, &[&topic]);
    assert!(sub.wait(WAIT, |m| !m.is_empty()));
    let first = &sub.all()[0];
    assert!(first.retained);
    let v = first.json();
    assert_eq!(v["status"], "online");
    assert_eq!(v["host"], hostname.as_str());
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    // SIGKILL: the broker publishes the last will.
    let t = Instant::now();
    agent.kill();
    assert!(
        sub.wait(WAIT, |m| states(m).len() >= 2),
        "no last will: {:?}",
        sub.all()
    );
    eprintln!("last will after SIGKILL arrived in {:?}", t.elapsed());
    assert_eq!(states(&sub.all())[1], "offline");
    let later = Subscriber::start(broker.port, &[&topic]);
    assert!(later.wait(WAIT, |m| !m.is_empty()));
    assert!(later.all()[0].retained);
    assert_eq!(status_of(&later.all()[0]), "offline");

    // Back online, then a clean SIGTERM: offline again, retained.
    agent.restart();
    assert!(sub.wait(WAIT, |m| states(m).len() >= 3), "{:?}", sub.all());
    assert_eq!(states(&sub.all())[2], "online");
    let (code, took) = agent.stop();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert!(sub.wait(WAIT, |m| states(m).len() >= 4), "{:?}", sub.all());
    assert_eq!(states(&sub.all())[3], "offline");
    let last = Subscriber::start(broker.port, &[&topic]);
    assert!(last.wait(WAIT, |m| !m.is_empty()));
    assert!(last.all()[0].retained);
    assert_eq!(status_of(&last.all()[0]), "offline");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(states(&sub.all()).len(), 4, "{:?}", sub.all());
    assert_eq!(sub.all().last().map(status_of).as_deref(), Some("offline"));
}

/// Three containers log 2000 numbered lines each over ~6 s; the broker is away for several
/// seconds in the middle.
#[test]
fn broker_outage_loses_nothing() {
    outage("outage", &[]);
}

/// The same with batches at QoS 2.
#[test]
fn broker_outage_loses_nothing_with_batches_at_qos2() {
    outage(
        "outage-b",
        &[
            ("MQTT_QOS", "2"),
            ("MQTT_BATCH", "true"),
            ("MQTT_BATCH_MAX", "20"),
            ("MQTT_BATCH_INTERVAL_MS", "100"),
        ],
    );
}

fn outage(tag: &str, env: &[(&str, &str)]) {
    let mut broker = Broker::start();
    let sub = Subscriber::start_opts(
        broker.port,
        &[&format!("{BASE}/#")],
        SubOpts {
            persistent: true,
            ..Default::default()
        },
    );
    let p = unique(tag);
    let agent = agent_for(&p, &broker.url(), env);
    let n = 2000u64;
    let script = numbered(n as u32, 100, 60);
    let t0 = Instant::now();
    let _cs: Vec<Container> = (0..3)
        .map(|i| run(&format!("{p}-s{i}"), "2001", &format!("s{i}"), &script))
        .collect();
    assert!(
        sub.wait(WAIT, |m| container_lines(m).len() >= 600),
        "lines before the outage; agent log:\n{}",
        agent.log()
    );
    broker.stop();
    let stopped = Instant::now();
    let before = distinct_ids(&container_lines(&sub.all()));
    let mut seen = Value::Null;
    let degraded = wait_until(WAIT, || {
        let (code, h) = health(&agent);
        let ok = code == 503 && h["status"] == "degraded" && h["mqtt"]["connected"] == false;
        seen = h;
        ok
    });
    assert!(degraded, "health during the outage: {seen}");
    eprintln!(
        "{tag}: health degraded {:?} after the broker stopped: {seen}",
        stopped.elapsed()
    );
    while stopped.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.start_again();
    let back = Instant::now();
    let total = 3 * n as usize;
    let at_return = distinct_ids(&container_lines(&sub.all()));
    // When the first line after the broker's return arrived: the reconnect backoff ends there.
    let mut resumed: Option<Instant> = None;
    assert!(
        sub.wait(Duration::from_secs(90), |m| {
            let got = distinct_ids(&container_lines(m));
            if resumed.is_none() && got > at_return {
                resumed = Some(Instant::now());
            }
            got >= total
        }),
        "got {} of {total} lines; health {}\nagent log:\n{}",
        distinct_ids(&container_lines(&sub.all())),
        health(&agent).1,
        agent.log()
    );
    let done = Instant::now();
    let resumed = resumed.unwrap_or(back);
    let lines = container_lines(&sub.all());
    let (seqs, dups) = by_service(&lines);
    for i in 0..3 {
        assert_eq!(seqs[&format!("s{i}")], one_to(n), "s{i} complete, in order");
    }
    let rest = total - at_return;
    // The subscriber is polled every 50 ms: a catch-up may look shorter than that.
    let catch_up = done.duration_since(resumed).as_secs_f64() + 0.05;
    eprintln!(
        "{tag} {env:?}: {total} lines, {before} received before the broker stopped, broker away \
         {:.1} s; the first line after its return came {:.1} s later (reconnect backoff), then \
         the remaining {rest} within {:.2} s (at least {:.0} lines/s; polled every 50 ms); \
         {dups} duplicates (dropped by id); {:.1} s from the first `docker run` to the last line",
        back.duration_since(stopped).as_secs_f64(),
        resumed.duration_since(back).as_secs_f64(),
        catch_up,
        rest as f64 / catch_up,
        t0.elapsed().as_secs_f64()
    );
    for i in 0..3 {
        assert!(
            wait_until(WAIT, || file_seqs(&agent, "2001", &format!("s{i}")).len()
                >= n as usize),
            "file s{i}"
        );
        assert_eq!(file_seqs(&agent, "2001", &format!("s{i}")), one_to(n));
    }
    let mut h = Value::Null;
    assert!(
        wait_until(WAIT, || {
            h = health(&agent).1;
            h["status"] == "ok"
        }),
        "health after the outage: {h}"
    );
    assert_eq!(h["mqtt"]["connected"], true);
    assert!(h["mqtt"]["reconnects"].as_u64().unwrap_or(0) >= 1, "{h}");
    assert_eq!(
        h["mqtt"]["lastError"], "",
        "the outage's error is cleared once connected: {h}"
    );
    assert_eq!(h["mqtt"]["dropped"], 0);
}

/// The agent is SIGKILLed while the broker is away; both come back and nothing is missing
/// (the agent resumes from its cursor).
#[test]
fn agent_killed_during_broker_outage() {
    agent_down_during_broker_outage(false);
}

/// The same with a clean SIGTERM: what was not acknowledged goes to the spool at shutdown and
/// is replayed after the restart.
#[test]
fn agent_stopped_during_broker_outage() {
    agent_down_during_broker_outage(true);
}

fn agent_down_during_broker_outage(clean: bool) {
    let mut broker = Broker::start();
    let sub = Subscriber::start_opts(
        broker.port,
        &[&format!("{BASE}/#")],
        SubOpts {
            persistent: true,
            ..Default::default()
        },
    );
    let p = unique(if clean { "stopped" } else { "killed" });
    let mut agent = agent_for(&p, &broker.url(), &[]);
    let n = 1500u64;
    let _c = run(
        &format!("{p}-c"),
        "3001",
        "job",
        &numbered(n as u32, 100, 60),
    );
    assert!(sub.wait(WAIT, |m| container_lines(m).len() >= 300));
    broker.stop();
    std::thread::sleep(Duration::from_millis(1500));
    if clean {
        let (code, took) = agent.stop();
        assert_eq!(code, 0, "agent log:\n{}", agent.log());
        assert!(took < Duration::from_secs(5), "stop took {took:?}");
    } else {
        agent.kill();
    }
    let before = distinct_ids(&container_lines(&sub.all()));
    let spooled: u64 = std::fs::read_dir(agent.dir.path().join("state/spool"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    if clean {
        assert!(
            spooled > 0,
            "a clean stop spools what the broker did not take"
        );
    }
    // The container goes on logging while no agent runs.
    std::thread::sleep(Duration::from_millis(1000));
    agent.restart();
    std::thread::sleep(Duration::from_millis(1500));
    broker.start_again();
    assert!(
        sub.wait(Duration::from_secs(90), |m| distinct_ids(&container_lines(
            m
        )) >= n as usize),
        "got {} of {n}; health {}\nagent log:\n{}",
        distinct_ids(&container_lines(&sub.all())),
        health(&agent).1,
        agent.log()
    );
    let lines = container_lines(&sub.all());
    let (seqs, dups) = by_service(&lines);
    assert_eq!(seqs["job"], one_to(n), "complete, in order");
    // Which lines came twice: those in flight when the broker went away, or (SIGKILL) those
    // after the last saved cursor.
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, v) in &lines {
        *count.entry(seq_of(v)).or_default() += 1;
    }
    let twice: Vec<u64> = count
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&s, _)| s)
        .collect();
    let how = if clean {
        "stopped (SIGTERM)"
    } else {
        "killed (SIGKILL)"
    };
    eprintln!(
        "agent {how} during the outage: {before} lines before, {spooled} spool bytes left, all \
         {n} arrived, {dups} duplicates (seq {:?}..={:?})",
        twice.first(),
        twice.last()
    );
    assert!(wait_until(WAIT, || file_seqs(&agent, "3001", "job").len()
        >= n as usize));
    assert_eq!(file_seqs(&agent, "3001", "job"), one_to(n));
    assert!(wait_until(WAIT, || health(&agent).1["spoolBytes"] == 0));
}

/// An agent killed young, as soon as its first lines arrive, three times in a row, following
/// a container that was logging before it started (read from "now" on the first run): the
/// start of each container is its first cursor, saved at once, so the next agent neither
/// starts over nor from a later "now". No line is lost after the first one delivered, and each
/// kill repeats at most the lines of its last ~2 s.
#[test]
fn agent_killed_young_again_and_again() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &[&format!("{BASE}/#")]);
    let p = unique("young");
    // 200 lines/s for 10 s: the container logs on while agents come and go.
    let (n, per_s) = (2000u64, 200u64);
    let _c = run(
        &format!("{p}-c"),
        "3002",
        "young",
        &numbered(n as u32, 60, 20),
    );
    let mut agent = agent_for(&p, &broker.url(), &[]);
    let kills = 3;
    for round in 1..=kills {
        let before = container_lines(&sub.all()).len();
        assert!(
            sub.wait(PATIENCE, |m| container_lines(m).len() > before),
            "round {round}: no lines; agent log:\n{}",
            agent.log()
        );
        agent.kill();
        // The container logs on while no agent runs.
        std::thread::sleep(Duration::from_millis(1000));
        agent.restart();
    }
    let complete = |m: &[Msg]| {
        let (seqs, _) = by_service(&container_lines(m));
        seqs.get("young").and_then(|s| s.last()) == Some(&n)
    };
    assert!(
        sub.wait(PATIENCE, complete),
        "the last line did not come; agent log:\n{}",
        agent.log()
    );
    let (seqs, dups) = by_service(&container_lines(&sub.all()));
    let got = &seqs["young"];
    let first = got[0];
    let want: Vec<u64> = (first..=n).collect();
    assert_eq!(got, &want, "nothing lost after line {first}, in order");
    eprintln!(
        "{kills} kills of a young agent: {dups} duplicates ({per_s} lines/s), from line {first}"
    );
    let bound = kills * (2 * per_s + per_s);
    assert!(dups as u64 <= bound, "{dups} duplicates, more than {bound}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount a tmpfs (needs root)");
        Tmpfs(dir.to_path_buf())
    }

    /// Bytes free, as `df` says.
    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(u64::MAX)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `STATE_DIR` on a 2 MiB tmpfs and no broker: the spool keeps what fits (the disk ends up
/// full, not a chunk short), only the rest is dropped, counted apart for container lines and
/// the agent's own messages; the failing cursor save is in health, and no temporary file stays.
#[test]
fn a_full_state_dir_loses_only_what_does_not_fit() {
    let dir = TempDir::new("fullfs");
    let state = dir.path().join("state");
    let fs = Tmpfs::mount(&state, "2m");
    let nobody = format!("mqtt://127.0.0.1:{}", free_port());
    let p = unique("full");
    let state_env = state.display().to_string();
    let agent = agent_for(&p, &nobody, &[("STATE_DIR", state_env.as_str())]);
    // About 9 MB of messages for a 2 MiB disk.
    let _c = run(
        &format!("{p}-c"),
        "4002",
        "full",
        &numbered(20000, 2000, 200),
    );
    let mut h = Value::Null;
    assert!(
        wait_until(PATIENCE, || {
            h = health(&agent).1;
            h["mqtt"]["droppedLines"].as_u64().unwrap_or(0) > 0
                && h["cursors"]["saveErrors"].as_u64().unwrap_or(0) > 0
        }),
        "no drop or no failed cursor save: {h}"
    );
    // Every line read was taken by the files, whatever the spool could keep.
    assert!(
        wait_until(PATIENCE, || health(&agent).1["local"]["written"]
            .as_u64()
            .is_some_and(|w| w >= 20000)),
        "health {}",
        health(&agent).1
    );
    let h = health(&agent).1;
    let free = fs.free();
    eprintln!(
        "full STATE_DIR: {free} bytes left free; mqtt: {} bytes, spooled {}, dropped {} lines and {} of \
         the agent's own; cursors: {}",
        h["mqtt"]["spoolBytes"], h["mqtt"]["spooled"], h["mqtt"]["droppedLines"], h["mqtt"]["droppedAgent"], h["cursors"]
    );
    // The spool holds what fits: all but a record's worth of the disk. Dropping whole chunks
    // of 1024 messages (~600 KB here) would leave it a chunk short.
    let spooled_bytes = h["mqtt"]["spoolBytes"].as_u64().unwrap_or(0);
    assert!(
        spooled_bytes >= (2 << 20) * 95 / 100,
        "{spooled_bytes} bytes spooled of 2 MiB ({free} free): more would have fitted"
    );
    assert!(h["mqtt"]["droppedAgent"].is_u64(), "{h}");
    assert_eq!(h["cursors"]["saveFailing"], true, "{h}");
    let strays: Vec<_> = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(strays.is_empty(), "temporary files left: {strays:?}");
}

/// A tiny spool while the broker is away: the oldest are dropped, counted and reported; the
/// newest arrive once it is back.
#[test]
fn spool_limit_drops_the_oldest_and_says_so() {
    let mut broker = Broker::start();
    let sub = Subscriber::start_opts(
        broker.port,
        &[&format!("{BASE}/#")],
        SubOpts {
            persistent: true,
            ..Default::default()
        },
    );
    let p = unique("limit");
    let agent = agent_for(&p, &broker.url(), &[("MQTT_SPOOL_MAX_BYTES", "200000")]);
    assert!(wait_until(WAIT, || health(&agent).1["mqtt"]["connected"] == true));
    broker.stop();
    let n = 8000u64;
    let _c = run(
        &format!("{p}-c"),
        "4001",
        "big",
        &numbered(n as u32, 2000, 200),
    );
    let mut h = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            h = health(&agent).1;
            h["dropped"].as_u64().unwrap_or(0) > 0 && h["mqtt"]["dropped"] == h["dropped"]
        }),
        "no drop: {h}"
    );
    assert!(wait_until(WAIT, || file_seqs(&agent, "4001", "big").len()
        >= n as usize));
    // Let the publisher take in the rest before counting.
    std::thread::sleep(Duration::from_secs(1));
    let (code, h) = health(&agent);
    assert_eq!(code, 503);
    assert_eq!(h["status"], "degraded");
    assert!(
        h["spoolBytes"].as_u64().unwrap_or(u64::MAX) <= 200_000,
        "{h}"
    );
    let dropped = h["mqtt"]["dropped"].as_u64().unwrap_or(0);
    let warning = agent.logs("q=spool+is+full");
    assert!(
        warning
            .iter()
            .any(|m| m["source"]["type"] == "manager" && m["level"] == "warn"),
        "manager warning: {warning:?}"
    );
    broker.start_again();
    assert!(
        sub.wait(Duration::from_secs(60), |m| container_lines(m)
            .iter()
            .any(|(_, v)| seq_of(v) == n)),
        "the newest line did not arrive; health {}",
        health(&agent).1
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (seqs, dups) = by_service(&container_lines(&sub.all()));
    let got = &seqs["big"];
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(got.len() as u64 + dropped >= n, "{} + {dropped}", got.len());
    // The newest are all there.
    let tail: Vec<u64> = got.iter().copied().filter(|&s| s > n - 1000).collect();
    assert_eq!(tail, ((n - 999)..=n).collect::<Vec<_>>());
    eprintln!(
        "spool limit: {n} lines, {dropped} dropped, {} arrived (from seq {}), {dups} duplicates",
        got.len(),
        got.first().copied().unwrap_or(0)
    );
}

#[test]
fn username_and_password() {
    let dir = TempDir::new("auth");
    let (user, pass, wrong) = ("logd", "s3cret-Pw-8a7f", "wr0ng-Pw-31c9");
    let opts = password_opts(dir.path(), user, pass);
    let broker = Broker::start_in(dir, opts);
    let sub = Subscriber::start_opts(
        broker.port,
        &[&format!("{BASE}/#")],
        SubOpts {
            creds: Some((user, pass)),
            ..Default::default()
        },
    );

    // A wrong password: refused, degraded, said so, without the password.
    let p = unique("badpw");
    let bad = agent_for(
        &p,
        &broker.url(),
        &[
            ("MQTT_USERNAME", user),
            ("MQTT_PASSWORD", wrong),
            ("LOG_LEVEL", "info"),
        ],
    );
    let _b = run(
        &format!("{p}-c"),
        "5001",
        "bad",
        "echo seq 1 bad; exec sleep 600",
    );
    let err = wait_for_mqtt_error(&bad).to_lowercase();
    eprintln!("wrong password: lastError {err:?}");
    assert!(
        err.contains("refused") && (err.contains("authori") || err.contains("password")),
        "lastError: {err}"
    );
    assert_eq!(health(&bad).1["mqtt"]["connected"], false);
    // At the default log level the refusal is in the agent's log and a `manager` warning.
    assert!(
        wait_until(WAIT, || bad.log().contains("mqtt cannot connect")),
        "the refusal is not in the agent's log:\n{}",
        bad.log()
    );
    assert!(
        wait_until(WAIT, || bad
            .logs("q=mqtt+cannot+connect")
            .iter()
            .any(|m| m["source"]["type"] == "manager" && m["level"] == "warn")),
        "no manager warning"
    );
    let (_, body) = bad.get("/api/v1/health");
    let (_, metrics) = bad.get("/metrics");
    for text in [&body, &metrics, &bad.log()] {
        assert!(!text.contains(wrong), "the password leaked: {text}");
    }

    // The right one: lines arrive.
    let p = unique("goodpw");
    let good = agent_for(
        &p,
        &broker.url(),
        &[("MQTT_USERNAME", user), ("MQTT_PASSWORD", pass)],
    );
    let _g = run(
        &format!("{p}-c"),
        "5001",
        "good",
        "echo seq 1 good; exec sleep 600",
    );
    assert!(
        sub.wait(WAIT, |m| container_lines(m)
            .iter()
            .any(|(t, _)| t == &format!("{BASE}/5001/good/info"))),
        "{:?}\nagent log:\n{}",
        sub.all(),
        good.log()
    );
    assert!(wait_until(WAIT, || health(&good).1["mqtt"]["connected"] == true));
    let (_, body) = good.get("/api/v1/health");
    let (_, metrics) = good.get("/metrics");
    for text in [&body, &metrics, &good.log()] {
        assert!(!text.contains(pass), "the password leaked: {text}");
    }
    assert!(
        !container_lines(&sub.all())
            .iter()
            .any(|(_, v)| v["serviceName"] == "bad"),
        "the refused agent published nothing"
    );
}

#[test]
fn tls_with_the_right_and_a_wrong_ca() {
    let dir = TempDir::new("tls");
    let d = dir.path().to_path_buf();
    util::tls::make_certs(&d);
    // The main listener speaks TLS; a second, plain one is for the subscriber.
    let plain = free_port();
    let broker = Broker::start_in(
        dir,
        BrokerOpts {
            extra: format!(
                "cafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n\
                 listener {plain} 127.0.0.1",
                d.display()
            ),
            ..Default::default()
        },
    );
    let sub = Subscriber::start(plain, &[&format!("{BASE}/#")]);
    let url = format!("mqtts://localhost:{}", broker.port);
    let ca = d.join("ca.crt").display().to_string();
    let other = d.join("other-ca.crt").display().to_string();

    let p = unique("tls");
    let agent = agent_for(&p, &url, &[("MQTT_CA_FILE", &ca)]);
    let _c = run(
        &format!("{p}-c"),
        "6001",
        "tls",
        "echo seq 1 over tls; exec sleep 600",
    );
    assert!(
        sub.wait(WAIT, |m| container_lines(m).iter().any(|(t, v)| t
            == &format!("{BASE}/6001/tls/info")
            && seq_of(v) == 1)),
        "{:?}; health {}\nagent log:\n{}",
        sub.all(),
        health(&agent).1,
        agent.log()
    );
    assert_eq!(health(&agent).1["mqtt"]["connected"], true);

    let p = unique("badca");
    let bad = agent_for(&p, &url, &[("MQTT_CA_FILE", &other), ("LOG_LEVEL", "info")]);
    let _b = run(
        &format!("{p}-c"),
        "6001",
        "badca",
        "echo seq 1 refused; exec sleep 600",
    );
    let err = wait_for_mqtt_error(&bad);
    eprintln!("wrong CA: lastError {err:?}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "lastError: {err}"
    );
    assert_eq!(health(&bad).1["mqtt"]["connected"], false);
    assert!(
        wait_until(WAIT, || bad.log().lines().any(|l| l
            .contains("mqtt cannot connect")
            && l.contains("certificate"))),
        "the certificate problem is not in the agent's log:\n{}",
        bad.log()
    );
    assert!(wait_until(WAIT, || bad.file_lines("6001", "badca").len() == 1));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !container_lines(&sub.all())
            .iter()
            .any(|(_, v)| v["serviceName"] == "badca"),
        "nothing goes out over an unverified connection"
    );
}

/// Lines per second from a container's output to a subscriber, through engine, agent and broker.
#[test]
fn end_to_end_throughput() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &[&format!("{BASE}/7001/#")]);
    let p = unique("speed");
    let agent = agent_for(&p, &broker.url(), &[]);
    let n = 20_000usize;
    let t0 = Instant::now();
    let _c = run(
        &format!("{p}-c"),
        "7001",
        "fast",
        &format!(
            "i=1; while [ $i -le {n} ]; do echo \"seq $i {}\"; i=$((i+1)); done; exec sleep 600",
            "z".repeat(80)
        ),
    );
    let mut first: Option<Instant> = None;
    let ok = sub.wait(Duration::from_secs(120), |m| {
        if first.is_none() && !m.is_empty() {
            first = Some(Instant::now());
        }
        m.len() >= n
    });
    assert!(
        ok,
        "got {} of {n}; health {}",
        sub.all().len(),
        health(&agent).1
    );
    let total = t0.elapsed().as_secs_f64();
    let from_first = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(total);
    let (seqs, dups) = by_service(&container_lines(&sub.all()));
    assert_eq!(seqs["fast"], one_to(n as u64));
    let read = agent.file_lines("7001", "fast").len();
    eprintln!(
        "end to end: {n} lines in {total:.2} s from `docker run` = {:.0} lines/s; \
         {:.0} lines/s from the first arrival; {dups} duplicates; {read} in the file",
        n as f64 / total,
        n as f64 / from_first
    );
}

/// `MQTT_BASE_TOPIC` with `{hostname}`, a text `appId`, and a service name holding `/`, `+`
/// and `#`, which become `_` in the topic (and only there).
#[test]
fn base_topic_with_hostname_and_sanitised_levels() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &["e2e/#"]);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string();
    let p = unique("topic");
    let agent = agent_for(
        &p,
        &broker.url(),
        &[("MQTT_BASE_TOPIC", "e2e/{hostname}/logs")],
    );
    let _c = run(
        &format!("{p}-c"),
        "my-app",
        "a/b+c#d",
        "echo seq 1 odd names; exec sleep 600",
    );
    let want = format!("e2e/{hostname}/logs/my-app/a_b_c_d/info");
    assert!(
        sub.wait(WAIT, |m| m.iter().any(|m| m.topic == want)),
        "wanted {want}: {:?}\nagent log:\n{}",
        sub.all(),
        agent.log()
    );
    let got = sub.all();
    let m = got.iter().find(|m| m.topic == want).expect("message");
    let v = m.json();
    assert_eq!(v["appId"], "my-app");
    assert_eq!(v["serviceName"], "a/b+c#d");
    assert_eq!(v["message"], "seq 1 odd names");
    assert!(got
        .iter()
        .any(|m| m.topic == format!("e2e/{hostname}/logs/system/info")));
}

/// Waits until the agent's health is degraded with an MQTT error; returns that error.
fn wait_for_mqtt_error(agent: &Agent) -> String {
    let mut h = Value::Null;
    assert!(
        wait_until(WAIT, || {
            let (code, doc) = health(agent);
            h = doc;
            code == 503 && !h["mqtt"]["lastError"].as_str().unwrap_or("").is_empty()
        }),
        "{h}"
    );
    h["mqtt"]["lastError"].as_str().unwrap_or("").to_string()
}

/// At MQTT 5, end to end: an MQTT 5 subscriber gets the lines with their properties; a service
/// whose topics the broker's ACL denies is refused "not authorized" (0x87), counted in health,
/// and said once in a `manager` warning that names the topic, while the other service goes on.
#[test]
fn at_v5_a_denied_service_is_said_once_and_the_rest_arrives() {
    let dir = TempDir::new("v5-agent");
    let denied = unique("denied");
    let acl = dir.path().join("acl");
    let rules = format!("topic readwrite #\ntopic deny {BASE}/{denied}/#\n");
    std::fs::write(&acl, rules).expect("acl");
    let broker = Broker::start_opts(BrokerOpts {
        // With max_queued_messages 0 (the harness's), mosquitto 2.0.11 drops a client whose
        // publish it denied.
        extra: format!("acl_file {}\nmax_queued_messages 1000\n", acl.display()),
        ..Default::default()
    });
    let sub = util::v5::Sub5::start(broker.port, &[&format!("{BASE}/#")]);
    let p = unique("v5");
    let agent = agent_for(&p, &broker.url(), &[("MQTT_VERSION", "5")]);
    let script = "for i in $(seq 1 20); do echo \"seq $i\"; done; exec sleep 600";
    let _ok = run(&format!("{p}-ok"), "1001", "web", script);
    let _no = run(&format!("{p}-no"), &denied, "db", script);
    let refused = || health(&agent).1["mqtt"]["refused"]["notAuthorized"].as_u64();
    assert!(
        wait_until(WAIT, || refused() == Some(20)),
        "{:?}",
        health(&agent).1
    );
    let warning = |m: &util::v5::Msg5| {
        m.topic == format!("{BASE}/manager/warn")
            && m.json()["message"]
                .as_str()
                .is_some_and(|t| t.contains("not authorized") && t.contains(&denied))
    };
    assert!(sub.wait(WAIT, |m| m
        .iter()
        .filter(|m| m.topic.ends_with("/1001/web/info"))
        .count()
        >= 20
        && m.iter().any(warning)));
    let got = sub.all();
    assert_eq!(got.iter().filter(|m| warning(m)).count(), 1, "said once");
    assert!(got.iter().all(|m| !m.topic.contains(&denied)));
    for m in got.iter().filter(|m| m.topic.ends_with("/1001/web/info")) {
        let p = m.props.as_ref().expect("properties");
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.payload_format_indicator, Some(1));
        let names: Vec<&str> = p.user_properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["host", "appId", "service"]);
        assert_eq!(p.user_properties[1].1, "1001");
        assert_eq!(p.user_properties[2].1, "web");
        assert_eq!(
            p.user_properties[0].1,
            m.json()["host"].as_str().unwrap_or("?")
        );
    }
    let (_, h) = health(&agent);
    assert_eq!(h["mqtt"]["dropped"], 20, "{h}");
    assert_eq!(h["mqtt"]["reconnects"], 0, "{h}");
}
