//! What users touch, against the real binary, the private engine of `tests/env.sh` and, for
//! `check`, a real mosquitto: the live stream (`/api/v1/logs/stream`), the live page in headless
//! Chromium, `container-logd logs` and `container-logd check`.
//!
//! Every test starts its own agent on a free loopback port with its own temp directories, and
//! labels its containers with an app id of its own, so tests never see each other's lines on
//! the shared engine. Agents, containers and brokers are removed by Drop guards, also when a
//! test fails; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

mod util;

use util::broker::Broker;
use util::{free_port, now_ms, repo, unique, Agent, Container, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_container-logd");
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// An app id no other test uses.
fn unique_app() -> String {
    format!(
        "{}{:03}",
        std::process::id() % 100_000 + 10_000,
        UNIQUE.fetch_add(1, Ordering::SeqCst)
    )
}

/// An agent that follows only the containers of `app` (see [`container_for`]), so a flood in
/// another test never pushes this test's lines out of its memory ring.
fn agent_for(app: &str) -> Agent {
    let include = format!("cld-ui-{app}-*");
    Agent::start(&[("CONTAINERS_INCLUDE", &include), ("NO_COLOR", "1")])
}

/// A container of `app`, service `web`, removed on drop.
fn container_for(app: &str, script: &str) -> Container {
    Container::run_app(
        &unique(&format!("ui-{app}")),
        app,
        "web",
        &["--log-opt", "max-size=5m"],
        script,
    )
}

/// A plain GET; `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((status, body))
}

/// One event read off a stream.
#[derive(Debug)]
struct Ev {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// A live stream read by hand, chunk framing and all.
struct Stream {
    r: BufReader<TcpStream>,
    status: u16,
}

impl Stream {
    fn open(port: u16, path: &str, last_id: Option<&str>) -> Stream {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut w = s.try_clone().expect("clone");
        let extra = last_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(w, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").expect("write");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).expect("status");
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        loop {
            line.clear();
            r.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Stream { r, status }
    }

    /// The next line of the body, chunk sizes and chunk ends skipped.
    fn body_line(&mut self) -> Option<String> {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end_matches(['\r', '\n']).to_string();
            // Chunk-size lines are bare hex; ours never hold an SSE field name.
            if !l.is_empty() && l.bytes().all(|b| b.is_ascii_hexdigit()) && !line.starts_with(':') {
                if l == "0" {
                    return None;
                }
                continue;
            }
            if line == "\r\n" {
                continue;
            }
            return Some(l);
        }
    }

    fn next(&mut self) -> Option<Ev> {
        let mut ev = Ev {
            id: None,
            event: None,
            data: String::new(),
        };
        let mut any = false;
        loop {
            let l = self.body_line()?;
            if l.is_empty() {
                if any {
                    return Some(ev);
                }
                continue;
            }
            if let Some(v) = l.strip_prefix("id: ") {
                ev.id = Some(v.to_string());
            } else if let Some(v) = l.strip_prefix("event: ") {
                ev.event = Some(v.to_string());
                any = true;
            } else if let Some(v) = l.strip_prefix("data: ") {
                ev.data = v.to_string();
                any = true;
            }
        }
    }

    fn next_json(&mut self) -> (Ev, serde_json::Value) {
        let ev = self.next().expect("an event");
        let v = serde_json::from_str(&ev.data).expect("json data");
        (ev, v)
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// `tick N` of a message text, for checking order without gaps.
fn tick(v: &serde_json::Value) -> u64 {
    v["message"]
        .as_str()
        .and_then(|m| m.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a tick number")
}

const TICKER: &str = "i=0; while true; i=$((i+1)); do echo \"info tick $i\"; echo \"WARN warn tick $i\"; echo \"ERROR boom tick $i\" >&2; sleep 0.2; done";

#[test]
fn stream_filters_backlog_ids_and_latency() {
    let app = unique_app();
    let agent = agent_for(&app);
    let _c = container_for(&app, TICKER);
    wait_for("lines in the ring", 15, || {
        get(agent.port, &format!("/api/v1/logs?appId={app}"))
            .is_some_and(|(_, b)| b.matches("tick").count() >= 9)
    });

    let mut s = Stream::open(
        agent.port,
        &format!("/api/v1/logs/stream?appId={app}&level=warn&limit=2"),
        None,
    );
    assert_eq!(s.status, 200);
    let mut live_delays = Vec::new();
    for i in 0..12 {
        let (ev, v) = s.next_json();
        let level = v["level"].as_str().expect("level");
        assert!(level == "warn" || level == "error", "{level}");
        assert_eq!(v["appId"].to_string(), app);
        assert_eq!(
            ev.id.as_deref(),
            v["id"].as_str(),
            "id: line is the message id"
        );
        if i >= 4 {
            live_delays.push(now_ms() - v["timestamp"].as_i64().expect("ts"));
        }
    }
    let worst = live_delays.iter().copied().max().unwrap_or(0);
    println!("live delay from the engine's timestamp to the client: worst {worst} ms");
    assert!(worst < 1500, "live lines took {worst} ms");

    let mut q = Stream::open(
        agent.port,
        &format!("/api/v1/logs/stream?appId={app}&q=boom"),
        None,
    );
    for _ in 0..3 {
        let (_, v) = q.next_json();
        assert!(v["message"].as_str().expect("msg").contains("boom"));
    }
    // Another app's filter sees none of these lines: a backlog of everything the ring has for
    // an app that does not exist is empty, and the stream stays open.
    let (status, body) = get(agent.port, "/api/v1/logs?appId=no-such-app").expect("logs");
    assert_eq!((status, body.as_str()), (200, "[]"));
}

#[test]
fn disconnect_ends_the_thread_and_last_event_id_resumes_without_gap() {
    let app = unique_app();
    let agent = agent_for(&app);
    let _c = container_for(&app, TICKER);
    let path = format!("/api/v1/logs/stream?appId={app}&level=error");
    let mut s = Stream::open(agent.port, &path, None);
    let mut last = (String::new(), 0);
    for _ in 0..3 {
        let (ev, v) = s.next_json();
        last = (ev.id.expect("id"), tick(&v));
    }
    assert_eq!(agent.streams(), 1);
    drop(s);
    // Lines keep coming, so the next write fails and the stream's thread ends.
    wait_for("the stream count back to 0", 20, || agent.streams() == 0);
    thread::sleep(Duration::from_millis(800));

    let mut r = Stream::open(agent.port, &path, Some(&last.0));
    for expect in last.1 + 1..last.1 + 9 {
        let (_, v) = r.next_json();
        assert_eq!(tick(&v), expect, "resumed stream has a gap or a duplicate");
    }
}

#[test]
fn a_slow_client_is_cut_off_and_others_keep_going_and_the_cap_holds() {
    let app = unique_app();
    let agent = agent_for(&app);
    // The slow client: asks, then never reads, with a small receive buffer.
    let slow = Stream::open(
        agent.port,
        &format!("/api/v1/logs/stream?appId={app}"),
        None,
    );
    let mut fast = Stream::open(
        agent.port,
        &format!("/api/v1/logs/stream?appId={app}&q=done"),
        None,
    );
    let _c = container_for(
        &app,
        "seq 1 60000 | while read i; do echo \"flood line $i with some padding to fill buffers\"; done; echo done; sleep 600",
    );
    let t0 = Instant::now();
    // A client that keeps up may still be cut off in a burst on two shared cores; it then does
    // what EventSource does: resume with Last-Event-ID, and nothing is lost.
    let mut resumes = 0;
    let v = loop {
        let (ev, v) = fast.next_json();
        if ev.event.as_deref() == Some("overflow") {
            resumes += 1;
            assert!(resumes < 20, "cut off too often");
            let id = ev.id.expect("overflow names the last message");
            fast = Stream::open(
                agent.port,
                &format!("/api/v1/logs/stream?appId={app}&q=done"),
                Some(&id),
            );
            continue;
        }
        break v;
    };
    assert_eq!(v["message"], "done");
    println!("the reading client resumed {resumes} times");
    println!("60000 lines through the pipeline in {:?}", t0.elapsed());
    // The slow stream's thread is cut off: its writes time out (or its queue overflowed).
    let t1 = Instant::now();
    wait_for("the slow stream to end", 60, || agent.streams() == 1);
    println!("the slow stream ended {:?} after the flood", t1.elapsed());
    drop(slow);

    // The cap: 16 streams, the 17th gets 503 with a JSON error.
    let held: Vec<Stream> = (0..15)
        .map(|_| Stream::open(agent.port, "/api/v1/logs/stream", None))
        .collect();
    assert!(held.iter().all(|s| s.status == 200));
    let (status, body) = get(agent.port, "/api/v1/logs/stream").expect("answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    drop(held);
    drop(fast);
}

fn cli(agent_env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(agent_env.iter().cloned())
        .output()
        .expect("run cli")
}

#[test]
fn logs_command() {
    let app = unique_app();
    let agent = agent_for(&app);
    let _c = container_for(
        &app,
        "echo 'info hello'; echo 'WARN careful'; echo 'ERROR broken' >&2; sleep 600",
    );
    let env = agent.env();
    wait_for("three lines", 15, || {
        let o = cli(&env, &["logs", "--app", &app]);
        String::from_utf8_lossy(&o.stdout).lines().count() >= 3
    });
    let o = cli(&env, &["logs", "--app", &app]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(!text.contains('\x1b'), "no colour when piped");
    let broken = text
        .lines()
        .find(|l| l.contains("ERROR broken"))
        .expect("line");
    assert!(broken.contains(" web error "), "{broken}");

    let o = cli(&env, &["logs", "--app", &app, "--level", "warn", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|v| v["level"] != "info"));

    // -f prints a line logged after it started.
    let mut f = Command::new(BIN)
        .args(["logs", "-f", "--app", &app, "--limit", "1"])
        .envs(env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs -f");
    let mut out = BufReader::new(f.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("backlog line");
    let _c2 = container_for(&app, "echo 'fresh line'; sleep 600");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            if l.contains("fresh line") {
                let _ = tx.send(l);
                return;
            }
        }
    });
    let got = rx.recv_timeout(Duration::from_secs(15));
    let _ = f.kill();
    let _ = f.wait();
    assert!(got.is_ok(), "logs -f did not print the new line");

    // No agent: exit 1 and a message that says what to do.
    let mut dead = env.clone();
    dead.push(("API_LISTEN".into(), format!("127.0.0.1:{}", free_port())));
    let o = cli(&dead, &["logs"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("agent not running at") && err.contains("systemctl start"),
        "{err}"
    );
    let o = cli(&env, &["logs", "--level", "loud"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn check_command() {
    let broker = Broker::start();
    let dir = TempDir::new("ui");
    let mut env = util::agent_env(dir.path(), free_port());
    env.push(("NO_COLOR".into(), "1".into()));
    env.push((
        "MQTT_BROKER".into(),
        format!("mqtt://127.0.0.1:{}", broker.port),
    ));
    let o = cli(&env, &["check"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    println!("{text}");
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(!text.contains('✗'));
    assert!(text.contains("✓ broker:") && text.contains("✓ engine: ") && text.contains("1."));

    let mut dead = env.clone();
    dead.push((
        "DOCKER_HOST".into(),
        "unix:///nonexistent/docker.sock".into(),
    ));
    let o = cli(&dead, &["check"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ engine socket: no engine at"), "{text}");

    let mut bad = env.clone();
    bad.push(("LOG_MAX_MEMORY".into(), "lots".into()));
    let o = cli(&bad, &["check"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("LOG_MAX_MEMORY"), "{text}");

    let mut off = env.clone();
    off.push(("MQTT_BROKER".into(), "off".into()));
    let o = cli(&off, &["check"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("broker: skipped (MQTT_BROKER=off)"), "{text}");
}

/// The page's DOM once `want` is in it (or after 20 s), with a screenshot.
fn page(port: u16, query: &str, shot: &Path, want: &str) -> String {
    let out = Command::new("timeout")
        .args(["60", "python3"])
        .arg(repo().join("tests/ui/page.py"))
        .arg(format!("http://127.0.0.1:{port}/{query}"))
        .arg("20000")
        .arg(shot)
        .arg(want)
        .output()
        .expect("page.py");
    assert!(
        out.status.success(),
        "page.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn live_page_in_headless_chromium() {
    if !Path::new("/usr/bin/chromium").exists() {
        let st = Command::new(repo().join("tests/env.sh"))
            .args(["deps", "chromium"])
            .status()
            .expect("env.sh deps chromium");
        assert!(st.success(), "cannot install chromium");
    }
    let app = unique_app();
    let agent = agent_for(&app);
    let _c = container_for(
        &app,
        "echo 'info page hello'; echo 'WARN page careful'; echo 'ERROR page broken' >&2; sleep 600",
    );
    wait_for("lines", 15, || {
        get(agent.port, &format!("/api/v1/logs?appId={app}"))
            .is_some_and(|(_, b)| b.contains("page broken"))
    });
    let shots = repo().join("target/ui");
    let dom = page(
        agent.port,
        &format!("?appId={app}"),
        &shots.join("page.png"),
        "page hello",
    );
    assert!(
        dom.contains("page hello") && dom.contains("page careful"),
        "{dom}"
    );
    assert!(dom.contains("class=\"line level-error\""), "{dom}");
    assert!(dom.contains("class=\"line level-warn\""));

    let dom = page(
        agent.port,
        &format!("?appId={app}&level=error"),
        &shots.join("page-error.png"),
        "page broken",
    );
    assert!(dom.contains("page broken"));
    assert!(!dom.contains("page hello") && !dom.contains("page careful"));

    // A live line, logged while the page is open, shows up within the wait.
    let port = agent.port;
    let app2 = app.clone();
    let shot = shots.join("page-live.png");
    let h = thread::spawn(move || page(port, &format!("?appId={app2}"), &shot, "live one"));
    thread::sleep(Duration::from_millis(1200));
    let _c2 = container_for(&app, "echo 'ERROR live one' >&2; sleep 600");
    let dom = h.join().expect("page thread");
    assert!(
        dom.contains("live one"),
        "a live line did not reach the page"
    );
}
