//! The fleet over MQTT (docs/CONTRACT.md §10) end to end: the real agent, the private engine and
//! real mosquitto brokers. The retained status with health; log queries over MQTT answered from
//! the ring and rotated files, in parts, at 3.1.1 and 5; bad queries; a burst of queries while a
//! container logs; `container-logd logs --broker` with its `-f` seam and `--hosts`.

mod util;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use util::broker::{Broker, BrokerOpts, Subscriber};
use util::v5::Sub5;
use util::*;

/// An agent following only `{prefix}-*`, publishing to `broker`, answering queries on
/// `container-manager/query/{name}` with its status on `container-manager/status/{name}`.
fn agent_for(prefix: &str, name: &str, broker: &Broker, env: &[(&str, &str)]) -> Agent {
    let include = format!("{prefix}-*");
    let client_id = unique("logd");
    let status = format!("container-manager/status/{name}");
    let query = format!("container-manager/query/{name}");
    let base = format!("container-manager/logs/{name}");
    let url = broker.url();
    let mut all = vec![
        ("CONTAINERS_INCLUDE", include.as_str()),
        ("MQTT_BROKER", url.as_str()),
        ("MQTT_CLIENT_ID", client_id.as_str()),
        ("MQTT_STATUS_TOPIC", status.as_str()),
        ("MQTT_QUERY_TOPIC", query.as_str()),
        ("MQTT_BASE_TOPIC", base.as_str()),
        ("MQTT_QUERY", "true"),
    ];
    all.extend_from_slice(env);
    Agent::start(&all)
}

fn run(name: &str, app: &str, service: &str, script: &str) -> Container {
    Container::run_app(name, app, service, &[], script)
}

/// A line of about 100 bytes, numbered.
fn line(i: usize) -> String {
    format!("line {i} {}", "x".repeat(90))
}

/// A shell loop that prints `line(1)` … `line(n)`.
fn print_lines(n: usize) -> String {
    format!(
        "i=1; while [ $i -le {n} ]; do echo \"line $i {}\"; i=$((i+1)); done",
        "x".repeat(90)
    )
}

/// Publishes `body` to `topic` with `mosquitto_pub` (extra arguments after).
fn publish(port: u16, topic: &str, body: &str, extra: &[&str]) {
    let ok = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", body])
        .args(extra)
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success(), "mosquitto_pub to {topic}");
}

/// Sends a 3.1.1 query (`body` plus `replyTo` and `correlationId`) and returns the answer's
/// parts, in the order they came, once the last came. The query is sent again (with another
/// correlation id) while none is answered: the agent's query connection may still be on its
/// way.
fn ask(broker: &Broker, host: &str, body: Value) -> Vec<Value> {
    let reply = format!("replies/{}", unique("r"));
    let sub = Subscriber::start(broker.port, &[&reply]);
    let mut body = body;
    body["replyTo"] = reply.clone().into();
    let until = Instant::now() + PATIENCE;
    for attempt in 0u32.. {
        let id = format!("c-{attempt}");
        body["correlationId"] = id.clone().into();
        publish(
            broker.port,
            &format!("container-manager/query/{host}"),
            &body.to_string(),
            &[],
        );
        let ours = |m: &util::broker::Msg| m.json()["correlationId"] == id.as_str();
        let done = |m: &[util::broker::Msg]| {
            m.iter()
                .filter(|m| ours(m))
                .any(|m| m.json()["last"] == true || m.json().get("error").is_some())
        };
        if sub.wait(std::time::Duration::from_secs(3), done) {
            return sub
                .all()
                .iter()
                .filter(|m| ours(m))
                .map(|m| m.json())
                .collect();
        }
        assert!(Instant::now() < until, "no answer to {body}");
    }
    unreachable!("the loop returns or panics")
}

/// The `message` fields of an answer's parts, in order; checks the parts' numbering.
fn answer_lines(parts: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["correlationId"], parts[0]["correlationId"]);
        assert_eq!(p["part"], i + 1, "parts in order");
        assert_eq!(p["last"], i + 1 == parts.len());
        for l in p["logs"].as_array().expect("logs") {
            out.push(l["message"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

/// Panics at the first line where `got` and `want` part (the whole lists are long).
fn same_lines(got: &[String], want: &[String]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "line {i} of {}", got.len());
    }
    assert_eq!(got.len(), want.len(), "as many lines");
}

/// Waits until the service's current file holds `text`.
fn wait_for_file(agent: &Agent, app: &str, service: &str, text: &str) {
    let path = agent.log_dir().join(app).join(format!("{service}.log"));
    let ok = wait_until(PATIENCE, || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains(text))
    });
    assert!(ok, "{} never held {text:?}", path.display());
}

/// The retained online status carries the health, updated when it changes; a subscriber that
/// comes later gets the current one; the last will has none.
#[test]
fn the_retained_status_carries_health() {
    let broker = Broker::start();
    let name = unique("fleet-h");
    let agent = agent_for(&name, &name, &broker, &[]);
    let _c = run(
        &format!("{name}-web"),
        "1001",
        "web",
        &format!("{}; sleep 600", print_lines(50)),
    );
    let topic = format!("container-manager/status/{name}");
    let sub = Subscriber::start(broker.port, &[&topic]);
    let healthy = |m: &[util::broker::Msg]| {
        m.iter().any(|m| {
            let v = m.json();
            v["containers"] == 1 && v["engine"] == "up" && v["linesPerMin"].as_u64() >= Some(50)
        })
    };
    assert!(sub.wait(PATIENCE, healthy), "status: {:?}", sub.all());
    let later = Subscriber::start(broker.port, &[&topic]);
    assert!(later.wait(PATIENCE, |m| !m.is_empty()));
    let first = &later.all()[0];
    assert!(first.retained);
    let v = first.json();
    assert_eq!(v["status"], "online");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["containers"], 1);
    assert_eq!(v["engine"], "up");
    assert_eq!(v["spoolBytes"], 0);
    assert_eq!(v["dropped"], 0);
    let started = v["startedAt"].as_str().unwrap_or_default();
    assert!(
        started.len() == 20 && started.ends_with('Z'),
        "startedAt {started}"
    );
    drop(agent);
}

/// A query whose answer spans the ring (100 messages), the current file and two rotated ones
/// comes back whole and in order, in several parts.
#[test]
fn a_query_spans_the_ring_and_rotated_files() {
    let broker = Broker::start();
    let name = unique("fleet-q");
    let agent = agent_for(
        &name,
        &name,
        &broker,
        &[
            ("LOG_MAX_MEMORY", "100"),
            ("LOG_FILE_MAX_BYTES", "262144"),
            ("LOG_FILE_KEEP", "5"),
        ],
    );
    let n = 2500;
    let _c = run(
        &format!("{name}-web"),
        "1001",
        "web",
        &format!("{}; sleep 600", print_lines(n)),
    );
    wait_for_file(&agent, "1001", "web", &line(n));
    let dir = agent.log_dir().join("1001");
    assert!(dir.join("web.log.2").exists(), "two rotated files");
    let t0 = Instant::now();
    let parts = ask(
        &broker,
        &name,
        serde_json::json!({"appId": "1001", "service": "web", "limit": 10000}),
    );
    let took = t0.elapsed();
    assert!(parts.len() >= 3, "{} parts", parts.len());
    let want: Vec<String> = (1..=n).map(line).collect();
    same_lines(&answer_lines(&parts), &want);
    // `limit` keeps the newest; `since` and `q` filter the files as the ring.
    let parts = ask(
        &broker,
        &name,
        serde_json::json!({"appId": 1001, "limit": 5}),
    );
    assert_eq!(answer_lines(&parts), want[n - 5..]);
    let parts = ask(
        &broker,
        &name,
        serde_json::json!({"q": "line 7 ", "service": "web"}),
    );
    assert_eq!(answer_lines(&parts), [line(7)]);
    eprintln!("answer of {n} lines (ring and files) in {took:?}");
}

/// A bad request is answered with the error naming its parameter, and the agent goes on.
#[test]
fn a_bad_query_names_its_parameter() {
    let broker = Broker::start();
    let name = unique("fleet-b");
    let agent = agent_for(&name, &name, &broker, &[]);
    let parts = ask(&broker, &name, serde_json::json!({"level": "loud"}));
    assert_eq!(parts.len(), 1);
    assert!(parts[0]["correlationId"]
        .as_str()
        .is_some_and(|c| c.starts_with("c-")));
    let e = parts[0]["error"].as_str().unwrap_or_default();
    assert!(e.starts_with("bad parameter 'level': "), "{e}");
    let parts = ask(&broker, &name, serde_json::json!({"limit": 10001}));
    assert!(parts[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("'limit'")));
    let parts = ask(&broker, &name, serde_json::json!({"limit": 3}));
    assert_eq!(parts[0]["last"], true);
    let (_, h) = agent.get("/api/v1/health");
    assert_eq!(json(&h)["mqtt"]["query"]["bad"], 2);
}

/// At MQTT 5 the request's response topic and correlation data are used, and the answer
/// carries the correlation data; parts fit the broker's maximum packet size.
#[test]
fn a_v5_query_uses_response_topic_and_correlation_data() {
    let broker = Broker::start_opts(BrokerOpts {
        extra: "max_packet_size 16384".into(),
        ..Default::default()
    });
    let name = unique("fleet-5");
    let agent = agent_for(
        &name,
        &name,
        &broker,
        &[("MQTT_VERSION", "5"), ("LOG_MAX_MEMORY", "50")],
    );
    let n = 400;
    let _c = run(
        &format!("{name}-web"),
        "1001",
        "web",
        &format!("{}; sleep 600", print_lines(n)),
    );
    wait_for_file(&agent, "1001", "web", &line(n));
    let reply = format!("replies/{}", unique("r5"));
    let sub = Sub5::start(broker.port, &[&reply]);
    publish(
        broker.port,
        &format!("container-manager/query/{name}"),
        r#"{"service":"web","limit":1000}"#,
        &[
            "-V",
            "mqttv5",
            "-D",
            "publish",
            "response-topic",
            &reply,
            "-D",
            "publish",
            "correlation-data",
            "corr-5",
        ],
    );
    let last = |m: &[util::v5::Msg5]| m.iter().any(|m| m.json()["last"] == true);
    assert!(sub.wait(PATIENCE, last), "no last part");
    let got = sub.all();
    assert!(got.len() > 2, "{} parts within 16 KiB", got.len());
    let mut lines = Vec::new();
    for (i, m) in got.iter().enumerate() {
        assert!(m.payload.len() < 16384);
        let corr = m.props.as_ref().and_then(|p| p.correlation_data.clone());
        assert_eq!(corr.as_deref(), Some(&b"corr-5"[..]));
        let v = m.json();
        assert_eq!(v["correlationId"], "corr-5");
        assert_eq!(v["part"], i + 1);
        for l in v["logs"].as_array().expect("logs") {
            lines.push(l["message"].as_str().unwrap_or_default().to_string());
        }
    }
    let want: Vec<String> = (1..=n).map(line).collect();
    same_lines(&lines, &want);
}

/// VmHWM of a process, in KiB.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 1 000 queries in a burst while a container logs 1 000 lines a second: every line still
/// reaches the files, queries beyond the small queue are dropped and counted, memory stays
/// bounded.
#[test]
fn a_burst_of_queries_neither_loses_lines_nor_grows_memory() {
    let broker = Broker::start();
    let name = unique("fleet-f");
    let agent = agent_for(&name, &name, &broker, &[]);
    // 5 000 lines at about 1 000 a second.
    let script = format!(
        "i=1; while [ $i -le 5000 ]; do j=0; while [ $j -lt 100 ]; do echo \"line $i {}\"; \
         i=$((i+1)); j=$((j+1)); done; sleep 0.1; done; sleep 600",
        "x".repeat(90)
    );
    let _c = run(&format!("{name}-web"), "1001", "web", &script);
    wait_for_file(&agent, "1001", "web", "line 1000 ");
    let before = vm_hwm(agent.pid());
    let reply = format!("replies/{}", unique("burst"));
    let sub = Subscriber::start(broker.port, &[&format!("{reply}/#")]);
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-l"])
        .args(["-t", &format!("container-manager/query/{name}")])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub -l");
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..1000 {
        let body = format!(r#"{{"replyTo":"{reply}/{i}","correlationId":"{i}","limit":1000}}"#);
        let _ = writeln!(stdin, "{body}");
    }
    drop(stdin);
    let _ = child.wait();
    wait_for_file(&agent, "1001", "web", &line(5000));
    let mut text = String::new();
    for f in ["web.log.1", "web.log"] {
        text.push_str(
            &std::fs::read_to_string(agent.log_dir().join("1001").join(f)).unwrap_or_default(),
        );
    }
    for i in 1..=5000 {
        assert!(text.contains(&format!("\"line {i} ")), "line {i} lost");
    }
    let after = vm_hwm(agent.pid());
    let (_, h) = agent.get("/api/v1/health");
    let q = json(&h)["mqtt"]["query"].clone();
    let answered = q["answered"].as_u64().unwrap_or(0);
    let dropped = q["dropped"].as_u64().unwrap_or(0);
    let finals = sub
        .all()
        .iter()
        .filter(|m| m.json()["last"] == true)
        .count();
    eprintln!(
        "burst: VmHWM {before} -> {after} KiB; answered {answered}, dropped {dropped}, \
         last parts seen {finals}"
    );
    assert!(dropped > 0, "a burst overflows the queue: {q}");
    assert!(answered + dropped <= 1000);
    assert!(after < before + 32 * 1024, "VmHWM {before} -> {after} KiB");
}

/// `container-logd logs` with `args`, run to its end; its stdout.
fn cli(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_container-logd"))
        .arg("logs")
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("container-logd logs");
    assert!(
        out.status.success(),
        "logs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `logs --broker --host NAME --service web --json --limit 10000 -f`, its lines read on a
/// thread; killed when dropped.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(broker: &Broker, name: &str, base: (&str, &str)) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_container-logd"))
            .args(["logs", "--broker", &broker.url(), "--host", name])
            .args(["--service", "web", "--json", "--limit", "10000", "-f"])
            .env(base.0, base.1)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("logs -f");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// The messages of the next `n` container lines printed (fewer if they do not come).
    fn container_lines(&self, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        let until = Instant::now() + PATIENCE;
        while got.len() < n && Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            if let Ok(l) = self.lines.recv_timeout(left) {
                let v = json(&l);
                if v["source"]["type"] == "container" {
                    got.push(v["message"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        got
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A container script: lines `line(1)` to `line(n)`, about 100 a second, then quiet.
fn numbered_lines(n: usize) -> String {
    format!(
        "i=1; while [ $i -le {n} ]; do echo \"line $i {}\"; i=$((i+1)); sleep 0.01; done; \
         sleep 600",
        "x".repeat(90)
    )
}

/// `logs --broker --host -f` goes on after the broker restarts: it connects again and asks for
/// what it missed, with no gap and no duplicate.
#[test]
fn logs_follow_survives_a_broker_restart() {
    let mut broker = Broker::start();
    let name = unique("fleet-r");
    let agent = agent_for(&name, &name, &broker, &[]);
    let base = ("MQTT_BASE_TOPIC", "container-manager/logs/{hostname}");
    let n = 600;
    let script = numbered_lines(n);
    let _c = run(&format!("{name}-web"), "1001", "web", &script);
    wait_for_file(&agent, "1001", "web", &line(50));
    let follower = Follower::start(&broker, &name, base);
    let mut got = follower.container_lines(150);
    broker.stop();
    broker.start_again();
    got.extend(follower.container_lines(n - got.len()));
    let want: Vec<String> = (1..=n).map(line).collect();
    same_lines(&got, &want);
}

/// `logs --broker --host` prints what `logs` prints over the API; with `-f` it goes on with the
/// live topics, with no gap and no duplicate where the answer ends.
#[test]
fn logs_over_the_broker_and_the_follow_seam() {
    let broker = Broker::start();
    let name = unique("fleet-c");
    let agent = agent_for(&name, &name, &broker, &[]);
    let base = ("MQTT_BASE_TOPIC", "container-manager/logs/{hostname}");
    let n = 600;
    let script = numbered_lines(n);
    let _c = run(&format!("{name}-web"), "1001", "web", &script);
    wait_for_file(&agent, "1001", "web", &line(100));
    // Follow from mid-stream: the answer holds what was logged so far, the rest comes live.
    let follower = Follower::start(&broker, &name, base);
    let got = follower.container_lines(n);
    let want: Vec<String> = (1..=n).map(line).collect();
    same_lines(&got, &want);
    // Without -f: the same text as `logs` over the API.
    let port = agent.port.to_string();
    let over_api = cli(
        &["--service", "web"],
        &[("API_LISTEN", &format!("127.0.0.1:{port}"))],
    );
    let over_mqtt = cli(
        &[
            "--broker",
            &broker.url(),
            "--host",
            &name,
            "--service",
            "web",
        ],
        &[base],
    );
    assert!(over_mqtt.lines().count() > n, "lines and the start");
    let (m, a): (Vec<String>, Vec<String>) = (
        over_mqtt.lines().map(str::to_string).collect(),
        over_api.lines().map(str::to_string).collect(),
    );
    same_lines(&m, &a);
    // And with --json, the same bytes.
    let api = format!("127.0.0.1:{port}");
    let over_api = cli(&["--service", "web", "--json"], &[("API_LISTEN", &api)]);
    let url = broker.url();
    let args = [
        "--broker",
        &url,
        "--host",
        &name,
        "--service",
        "web",
        "--json",
    ];
    let over_mqtt = cli(&args, &[base]);
    assert!(over_mqtt == over_api, "--json differs");
}

/// `logs --hosts` lists every host whose retained status the broker holds, with its health.
#[test]
fn hosts_lists_two_agents() {
    let broker = Broker::start();
    let a = unique("fleet-ha");
    let b = unique("fleet-hb");
    let _agent_a = agent_for(&a, &a, &broker, &[]);
    let _agent_b = agent_for(&b, &b, &broker, &[]);
    let _c = run(&format!("{a}-web"), "1001", "web", "echo hi; sleep 600");
    let mut text = String::new();
    let ok = wait_until(PATIENCE, || {
        text = cli(&["--broker", &broker.url(), "--hosts"], &[]);
        text.lines()
            .any(|l| l.starts_with(&format!("{a}  online  containers=1 engine=up")))
            && text
                .lines()
                .any(|l| l.starts_with(&format!("{b}  online  containers=0 engine=up")))
    });
    assert!(ok, "--hosts printed:\n{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    let json_lines = cli(&["--broker", &broker.url(), "--hosts", "--json"], &[]);
    for l in json_lines.lines() {
        assert_eq!(json(l)["status"], "online");
    }
}

/// The host name as the agent reads it, as an object id.
fn node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Home Assistant discovery: the host's device and sensors, a service's `last error` and
/// `errors/min`, checked field by field; the service's configs removed once it is gone for the
/// (shortened) expiry.
#[test]
fn home_assistant_discovery() {
    let broker = Broker::start();
    let name = unique("fleet-ha");
    let status = format!("container-manager/status/{name}");
    let _agent = agent_for(
        &name,
        &name,
        &broker,
        &[("HA_DISCOVERY", "true"), ("HA_DISCOVERY_EXPIRY_S", "3")],
    );
    let sub = Subscriber::start(broker.port, &["homeassistant/#", &format!("{status}/#")]);
    let c = run(
        &format!("{name}-web"),
        "1001",
        "web",
        "echo 'ERROR disk full'; sleep 600",
    );
    let node = node();
    let cfg =
        |component: &str, object: &str| format!("homeassistant/{component}/{node}/{object}/config");
    let state_topic = format!("{status}/service/1001_web");
    let latest = |topic: &str| {
        sub.all()
            .iter()
            .rev()
            .find(|m| m.topic == topic)
            .map(|m| m.payload.clone())
    };
    let has_error = || {
        latest(&state_topic).is_some_and(|p| p.contains("ERROR disk full"))
            && latest(&cfg("sensor", "1001_web_last_error")).is_some()
    };
    assert!(wait_until(PATIENCE, has_error), "{:?}", sub.all());
    let conn = json(&latest(&cfg("binary_sensor", "connectivity")).unwrap_or_default());
    assert_eq!(conn["device_class"], "connectivity");
    assert_eq!(conn["state_topic"], status.as_str());
    assert_eq!(conn["value_template"], "{{ value_json.status }}");
    assert_eq!(conn["payload_on"], "online");
    assert_eq!(conn["payload_off"], "offline");
    assert_eq!(
        conn["unique_id"],
        format!("container_logd_{node}_connectivity")
    );
    assert_eq!(
        conn["device"]["identifiers"][0],
        format!("container_logd_{node}")
    );
    assert_eq!(conn["device"]["sw_version"], env!("CARGO_PKG_VERSION"));
    for (object, field) in [
        ("containers", "containers"),
        ("lines_per_min", "linesPerMin"),
        ("spool_bytes", "spoolBytes"),
        ("dropped", "dropped"),
    ] {
        let s = json(&latest(&cfg("sensor", object)).unwrap_or_default());
        assert_eq!(s["state_topic"], status.as_str(), "{object}");
        assert_eq!(s["value_template"], format!("{{{{ value_json.{field} }}}}"));
        assert_eq!(s["availability_topic"], status.as_str());
        assert_eq!(s["availability_template"], "{{ value_json.status }}");
        assert_eq!(s["payload_available"], "online");
        assert_eq!(s["payload_not_available"], "offline");
        assert_eq!(s["unique_id"], format!("container_logd_{node}_{object}"));
        assert_eq!(s["device"], conn["device"]);
    }
    let e = json(&latest(&cfg("sensor", "errors_per_min")).unwrap_or_default());
    assert_eq!(e["state_topic"], format!("{status}/errors"));
    let last = json(&latest(&cfg("sensor", "1001_web_last_error")).unwrap_or_default());
    assert_eq!(last["state_topic"], state_topic.as_str());
    assert_eq!(last["value_template"], "{{ value_json.lastError }}");
    assert_eq!(last["json_attributes_topic"], state_topic.as_str());
    assert_eq!(last["availability_topic"], status.as_str());
    let rate = json(&latest(&cfg("sensor", "1001_web_errors_per_min")).unwrap_or_default());
    assert_eq!(rate["value_template"], "{{ value_json.errorsPerMin }}");
    let state = json(&latest(&state_topic).unwrap_or_default());
    assert_eq!(state["lastError"], "ERROR disk full");
    assert_eq!(state["errorsPerMin"], 1);
    assert_eq!(state["container"], c.name.as_str());
    assert!(state["lastErrorAt"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // Gone: its configs are emptied once the expiry has passed.
    drop(c);
    let removed = || {
        latest(&cfg("sensor", "1001_web_last_error")).is_some_and(|p| p.is_empty())
            && latest(&cfg("sensor", "1001_web_errors_per_min")).is_some_and(|p| p.is_empty())
            && latest(&state_topic).is_some_and(|p| p.is_empty())
    };
    assert!(wait_until(PATIENCE, removed), "not removed");
    let later = Subscriber::start(broker.port, &["homeassistant/#"]);
    assert!(
        later.wait(PATIENCE, |m| m.len() >= 6),
        "the host's configs stay"
    );
    assert!(later.all().iter().all(|m| !m.topic.contains("1001_web")));
}
