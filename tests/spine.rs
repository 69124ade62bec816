//! The spine, end to end: the real agent binary against a real Docker engine (the private one of
//! `tests/env.sh`), read through its files and its HTTP API. Each test follows only its own
//! containers (`CONTAINERS_INCLUDE`), so tests run side by side on one engine.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use util::*;

const BALENA: &[&str] = &[
    "-l",
    "io.balena.app-id=1001",
    "-l",
    "io.balena.service-name=web",
    "-l",
    "io.balena.service-id=7",
];

/// An agent that follows only containers named `{prefix}-*`.
fn agent_for(prefix: &str, env: &[(&str, &str)]) -> Agent {
    let include = format!("{prefix}-*");
    let mut all = vec![("CONTAINERS_INCLUDE", include.as_str())];
    all.extend_from_slice(env);
    Agent::start(&all)
}

/// Waits until `query` finds at least `n` container lines; returns them.
fn wait_logs(agent: &Agent, query: &str, n: usize) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    let ok = wait_until(PATIENCE, || {
        got = agent.container_lines(query);
        got.len() >= n
    });
    assert!(
        ok,
        "wanted {n} messages for {query}, got {got:?}\nagent log:\n{}",
        agent.log()
    );
    got
}

#[test]
fn stdout_stderr_levels_and_balena_labels() {
    let p = unique("plain");
    let agent = agent_for(&p, &[]);
    let c = Container::run(
        &format!("{p}-web"),
        BALENA,
        r#"echo "hello out"; echo "to err" >&2; echo "WARN careful"; echo '{"level":"debug","msg":"x"}'; exec sleep 60"#,
    );
    let got = wait_logs(&agent, "appId=1001&service=web", 4);
    let mut by_text: Vec<(String, String, bool)> = got
        .iter()
        .map(|m| {
            (
                m["message"].as_str().unwrap_or_default().to_string(),
                m["level"].as_str().unwrap_or_default().to_string(),
                m["isStdErr"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    by_text.sort();
    assert_eq!(
        by_text,
        vec![
            ("WARN careful".into(), "warn".into(), false),
            ("hello out".into(), "info".into(), false),
            ("to err".into(), "error".into(), true),
            (
                r#"{"level":"debug","msg":"x"}"#.into(),
                "debug".into(),
                false
            ),
        ]
    );
    for m in &got {
        assert_eq!(m["appId"], 1001);
        assert_eq!(m["serviceId"], 7);
        assert_eq!(m["serviceName"], "web");
        assert_eq!(m["containerId"], c.id.as_str());
        assert_eq!(m["source"]["type"], "container");
        assert_eq!(m["source"]["name"], c.name.as_str());
        assert_eq!(m["isSystem"], false);
        assert!(!m["host"].as_str().unwrap_or_default().is_empty());
        let ts = m["timestamp"].as_i64().unwrap_or(0);
        assert!(
            (now_ms() - ts).abs() < 60_000,
            "engine timestamp {ts} is not recent"
        );
        assert!(m["id"].as_str().unwrap_or_default().starts_with(c.short()));
    }
    let mut ids: Vec<&str> = got
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "ids are unique");

    // The file holds the same JSON, byte for byte, created 0640.
    let path = agent.log_dir().join("1001/web.log");
    assert!(wait_until(PATIENCE, || agent
        .file_lines("1001", "web")
        .len()
        == 4));
    let file = std::fs::read_to_string(&path).expect("log file");
    let (_, api_body) = agent.get("/api/v1/logs?appId=1001&service=web");
    let api_lines = agent.container_lines("appId=1001&service=web");
    let mut file_sorted: Vec<&str> = file.lines().collect();
    let api_json: Vec<String> = api_lines.iter().map(|v| v.to_string()).collect();
    let mut api_sorted: Vec<&str> = api_json.iter().map(String::as_str).collect();
    file_sorted.sort();
    api_sorted.sort();
    let reparsed: Vec<serde_json::Value> = file_sorted.iter().map(|l| json(l)).collect();
    let api_reparsed: Vec<serde_json::Value> = api_sorted.iter().map(|l| json(l)).collect();
    assert_eq!(reparsed, api_reparsed);
    assert!(
        api_body.contains(file.lines().next().unwrap_or("missing")),
        "file line is byte-identical to the API's"
    );
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn tty_lines_lose_their_carriage_returns() {
    let p = unique("tty");
    let agent = agent_for(&p, &[]);
    let _c = Container::run(
        &format!("{p}-t"),
        &["-t"],
        "echo one; echo two; printf 'three'; exec sleep 60",
    );
    let got = wait_logs(&agent, "", 2);
    assert_eq!(messages(&got)[..2], ["one".to_string(), "two".to_string()]);
    assert!(got.iter().all(|m| m["isStdErr"] == false));
}

#[test]
fn late_container_and_its_exit_code() {
    let p = unique("late");
    let agent = agent_for(&p, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let c = Container::run(&format!("{p}-job"), &[], "echo started late; exit 3");
    assert_eq!(c.wait(PATIENCE), 3);
    let lines = wait_logs(&agent, &format!("service={}", c.name), 1);
    assert!(messages(&lines).contains(&"started late".to_string()));
    let mut died = Vec::new();
    assert!(
        wait_until(PATIENCE, || {
            died = agent
                .logs("q=exit+code+3")
                .into_iter()
                .filter(|m| m["source"]["type"] == "system")
                .collect();
            !died.is_empty()
        }),
        "no system message for the exit; log:\n{}",
        agent.log()
    );
    let d = &died[0];
    assert_eq!(
        d["message"],
        format!("container {} died with exit code 3", c.name)
    );
    assert_eq!(d["level"], "error");
    assert_eq!(d["isSystem"], true);
    assert_eq!(d["containerId"], c.id.as_str());
    // Lifecycle messages are kept in their own file too.
    assert!(wait_until(PATIENCE, || agent
        .file_lines("system", "events")
        .iter()
        .any(|m| m["message"] == d["message"])));
}

#[test]
fn restarted_container_is_followed_again_without_duplicates() {
    let p = unique("restart");
    let agent = agent_for(&p, &[]);
    let c = Container::run(&format!("{p}-svc"), &[], "echo boot; exec sleep 1000");
    wait_logs(&agent, "q=boot", 1);
    let out = docker(&["restart", "-t", "0", &c.name]);
    assert!(out.status.success());
    let got = wait_logs(&agent, "q=boot", 2);
    std::thread::sleep(Duration::from_millis(500));
    let got2 = agent.container_lines("q=boot");
    assert_eq!(got2.len(), 2, "each boot line once: {got:?}");
    assert_ne!(got2[0]["id"], got2[1]["id"]);
    let restarts = agent.logs(&format!("q=container+{}+restarting", c.name));
    assert_eq!(restarts.len(), 1, "one system message for the restart");
}

#[test]
fn long_lines_are_rejoined_and_cut_at_the_limit() {
    let p = unique("long");
    let agent = agent_for(&p, &[]);
    let _c = Container::run(
        &format!("{p}-big"),
        &[],
        "head -c 40000 /dev/zero | tr '\\0' a; echo; head -c 100000 /dev/zero | tr '\\0' b; echo; echo after; exec sleep 60",
    );
    let got = wait_logs(&agent, "", 3);
    let m = messages(&got);
    assert_eq!(m[0], "a".repeat(40000), "a 40 KB line arrives whole");
    assert!(got[0].get("truncated").is_none());
    assert_eq!(
        m[1],
        "b".repeat(65536),
        "a 100 KB line is cut at MAX_LINE_BYTES"
    );
    assert_eq!(got[1]["truncated"], true);
    assert_eq!(m[2], "after");
    let (_, health) = agent.get("/api/v1/health");
    assert_eq!(json(&health)["truncated"], 1);
}

#[test]
fn invalid_utf8_is_replaced_not_dropped() {
    let p = unique("utf8");
    let agent = agent_for(&p, &[]);
    let _c = Container::run(
        &format!("{p}-bin"),
        &[],
        r"printf 'bad \377\376 bytes\n'; echo next; exec sleep 60",
    );
    let got = wait_logs(&agent, "", 2);
    assert_eq!(messages(&got), ["bad \u{fffd}\u{fffd} bytes", "next"]);
    // The engine's json-file driver already replaced the bytes here; the agent's own
    // replacement, for log drivers that pass raw bytes through, is `monitor::lines::text_of`.
}

#[test]
fn compose_labels_ignore_label_and_patterns() {
    let p = unique("compose");
    let agent = agent_for(&p, &[("CONTAINERS_EXCLUDE", "*-skipped")]);
    let _db = Container::run(
        &format!("{p}-db"),
        &[
            "-l",
            "com.docker.compose.project=shop",
            "-l",
            "com.docker.compose.service=db",
        ],
        "echo ready; exec sleep 60",
    );
    let _ignored = Container::run(
        &format!("{p}-quiet"),
        &["-l", "container-logd.ignore=true"],
        "echo secret; exec sleep 60",
    );
    let _skipped = Container::run(&format!("{p}-skipped"), &[], "echo skipped; exec sleep 60");
    let got = wait_logs(&agent, "appId=shop&service=db", 1);
    assert_eq!(got[0]["appId"], "shop");
    assert_eq!(got[0]["serviceId"], serde_json::Value::Null);
    assert!(wait_until(PATIENCE, || agent
        .file_lines("shop", "db")
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(1500));
    let all = messages(&agent.container_lines(""));
    assert!(
        !all.iter().any(|m| m == "secret" || m == "skipped"),
        "{all:?}"
    );
    let (_, containers) = agent.get("/api/v1/containers");
    let list = json(&containers);
    let names: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, [format!("{p}-db").as_str()]);
}

/// The agent is SIGKILLed and later stopped with SIGTERM while a container keeps logging:
/// the files hold every line exactly once, in order.
#[test]
fn crash_and_restart_keep_every_line_once_in_order() {
    let p = unique("crash");
    let mut agent = agent_for(&p, &[]);
    let total = 1500;
    let c = Container::run(
        &format!("{p}-counter"),
        &[],
        &format!("i=0; while [ $i -lt {total} ]; do i=$((i+1)); echo \"n $i\"; if [ $((i % 50)) = 0 ]; then sleep 0.25; fi; done"),
    );
    std::thread::sleep(Duration::from_millis(2600));
    agent.kill();
    std::thread::sleep(Duration::from_millis(1200));
    agent.restart();
    std::thread::sleep(Duration::from_millis(1500));
    let (code, took) = agent.stop();
    assert_eq!(code, 0, "clean stop; log:\n{}", agent.log());
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    std::thread::sleep(Duration::from_millis(800));
    agent.restart();
    c.wait(PATIENCE);
    let app = "standalone";
    let mut lines = Vec::new();
    let done = wait_until(PATIENCE, || {
        lines = agent.file_lines(app, &c.name);
        lines.len() >= total
    });
    std::thread::sleep(Duration::from_millis(500));
    lines = agent.file_lines(app, &c.name);
    let got = messages(&lines);
    let want: Vec<String> = (1..=total).map(|i| format!("n {i}")).collect();
    if got != want {
        let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).take(10).collect();
        panic!(
            "done={done} got {} lines, want {total}; first missing {missing:?}; log:\n{}",
            got.len(),
            agent.log()
        );
    }
}

#[test]
fn api_filters_and_bad_parameters() {
    let p = unique("api");
    let agent = agent_for(&p, &[]);
    let _c = Container::run(
        &format!("{p}-lv"),
        &[
            "-l",
            &format!("io.balena.app-id={p}"),
            "-l",
            "io.balena.service-name=lv",
        ],
        "echo 'ERROR e1'; echo 'WARN w1'; echo 'info i1'; echo 'DEBUG d1'; exec sleep 60",
    );
    let q = format!("appId={p}");
    let all = wait_logs(&agent, &q, 4);
    assert_eq!(
        messages(&all),
        ["ERROR e1", "WARN w1", "info i1", "DEBUG d1"]
    );
    assert_eq!(
        messages(&agent.container_lines(&format!("{q}&level=warn"))),
        ["ERROR e1", "WARN w1"]
    );
    assert_eq!(
        messages(&agent.container_lines(&format!("{q}&level=error"))),
        ["ERROR e1"]
    );
    assert_eq!(messages(&agent.logs(&format!("{q}&q=i1"))), ["info i1"]);
    assert_eq!(
        messages(&agent.logs(&format!("{q}&level=warn&limit=1"))),
        ["WARN w1"]
    );
    assert_eq!(agent.container_lines(&format!("{q}&service=lv")).len(), 4);
    assert!(agent.logs(&format!("{q}&service=other")).is_empty());
    let ts = all[1]["timestamp"].as_i64().unwrap_or(0);
    let window = agent.logs(&format!("{q}&since={ts}&until={ts}"));
    assert!(messages(&window).contains(&"WARN w1".to_string()));
    assert!(window.iter().all(|m| m["timestamp"] == ts));
    assert!(agent
        .logs(&format!("{q}&since={}", ts + 3_600_000))
        .is_empty());

    for (query, param) in [
        ("level=loud", "level"),
        ("limit=0", "limit"),
        ("since=yesterday", "since"),
        ("until=soon", "until"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = agent.get(&format!("/api/v1/logs?{query}"));
        assert_eq!(status, 400, "{query}");
        let err = json(&body)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains(&format!("'{param}'")), "{query}: {err}");
    }
    assert_eq!(agent.get("/api/v1/nothing").0, 404);

    let (status, containers) = agent.get("/api/v1/containers");
    assert_eq!(status, 200);
    let c = &json(&containers)[0];
    assert_eq!(c["name"], format!("{p}-lv"));
    assert_eq!(c["appId"], p.as_str());
    assert_eq!(c["serviceName"], "lv");
    assert_eq!(c["state"], "following");
    assert_eq!(c["linesRead"], 4);
    assert!(c["lastLineTime"].as_i64().is_some());

    let (status, health) = agent.get("/api/v1/health");
    assert_eq!(status, 200);
    let h = json(&health);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["docker"]["connected"], true);
    assert_eq!(h["dropped"], 0);
    let (status, metrics) = agent.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\ncontainer_logd_lines_read_total 4\n"),
        "{metrics}"
    );
    assert!(metrics.contains("container_logd_local_written_total"));
}

#[test]
fn api_token_is_required_when_set() {
    let agent = Agent::start(&[
        ("API_TOKEN", "s3cret-token"),
        ("CONTAINERS_INCLUDE", "none-at-all"),
    ]);
    assert_eq!(agent.get("/api/v1/health").0, 401);
    assert_eq!(http_get(agent.port, "/api/v1/health", Some("wrong")).0, 401);
    assert_eq!(
        http_get(agent.port, "/api/v1/health", Some("s3cret-token")).0,
        200
    );
    assert!(
        !agent.log().contains("s3cret-token"),
        "the token never reaches the log"
    );
}

#[test]
fn bad_variables_exit_2_and_name_themselves() {
    for (var, value) in [
        ("MQTT_QOS", "5"),
        ("LOG_MAX_MEMORY", "lots"),
        ("DOCKER_HOST", "http://nowhere"),
        ("API_LISTEN", "0.0.0.0:7780"),
        ("SINCE", "yesterday"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_container-logd"))
            .env(var, value)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains(value), "{var}: {err}");
    }
}

#[test]
fn sighup_reopens_files_and_sigterm_saves_cursors() {
    let p = unique("hup");
    let mut agent = agent_for(&p, &[]);
    let c = Container::run(
        &format!("{p}-tick"),
        &[],
        "i=0; while true; do i=$((i+1)); echo \"t $i\"; sleep 0.2; done",
    );
    let file = agent
        .log_dir()
        .join("standalone")
        .join(format!("{}.log", c.name));
    assert!(wait_until(PATIENCE, || file.exists()));
    let moved = file.with_extension("log.moved");
    std::fs::rename(&file, &moved).expect("move the file away, as logrotate does");
    agent.signal("HUP");
    assert!(
        wait_until(PATIENCE, || file.exists()),
        "a new file after SIGHUP; log:\n{}",
        agent.log()
    );
    let (code, took) = agent.stop();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    let cursors = json(
        &std::fs::read_to_string(agent.dir.path().join("state/cursors.json"))
            .expect("cursors.json"),
    );
    assert!(cursors["stoppedAt"].as_i64().is_some());
    assert!(
        cursors["containers"][&c.id]["ts"].as_i64().is_some(),
        "{cursors}"
    );
}

/// The engine goes away and comes back: the agent says so in its health, and follows the
/// restarted container again without a restart of its own.
#[test]
fn engine_outage_is_reported_and_survived() {
    let engine = OwnEngine::start("outage");
    let host = engine.host();
    let agent = Agent::start(&[("DOCKER_HOST", host.as_str())]);
    let out = engine.docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--restart",
        "always",
        "--name",
        "phoenix",
        IMAGE,
        "sh",
        "-c",
        "echo rise; while true; do sleep 0.3; echo tick; done",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_logs(&agent, "q=rise", 1);

    engine.stop();
    let mut health = serde_json::Value::Null;
    assert!(
        wait_until(PATIENCE, || {
            let (status, body) = agent.get("/api/v1/health");
            health = json(&body);
            status == 503 && health["docker"]["connected"] == false
        }),
        "health shows the engine down: {health}"
    );
    assert_eq!(health["status"], "degraded");

    engine.up();
    assert!(
        wait_until(PATIENCE, || agent.container_lines("q=rise").len() >= 2),
        "the restarted container is followed again; log:\n{}",
        agent.log()
    );
    assert!(wait_until(PATIENCE, || agent.get("/api/v1/health").0 == 200));
    let (_, body) = agent.get("/api/v1/health");
    let h = json(&body);
    assert!(h["docker"]["reconnects"].as_u64().unwrap_or(0) >= 1, "{h}");
    let manager = agent.logs("q=unreachable");
    assert!(
        manager
            .iter()
            .any(|m| m["source"]["type"] == "manager" && m["level"] == "error"),
        "the outage is a manager message too: {manager:?}"
    );
}

#[test]
fn multiline_auto_joins_stack_traces() {
    let p = unique("multi");
    let agent = agent_for(&p, &[("MULTILINE", "auto")]);
    let _c = Container::run(
        &format!("{p}-java"),
        &[],
        "echo 'ERROR request failed'; echo '    at com.shop.Orders.load(Orders.java:42)'; \
         echo '    at com.shop.Api.get(Api.java:7)'; echo 'Caused by: java.io.IOException: gone'; \
         echo 'next request ok'; exec sleep 60",
    );
    let got = wait_logs(&agent, "", 2);
    assert_eq!(
        messages(&got),
        [
            "ERROR request failed\n    at com.shop.Orders.load(Orders.java:42)\n    at com.shop.Api.get(Api.java:7)\nCaused by: java.io.IOException: gone",
            "next request ok"
        ]
    );
    assert_eq!(got[0]["level"], "error");
}

#[test]
fn rate_limit_keeps_errors_and_reports_what_it_suppressed() {
    let p = unique("rate");
    let agent = agent_for(
        &p,
        &[("RATE_LIMIT_LINES", "50"), ("RATE_LIMIT_BURST", "50")],
    );
    let c = Container::run(
        &format!("{p}-noisy"),
        &[],
        "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); echo \"chatter $i\"; done; echo 'ERROR still here'; exec sleep 60",
    );
    let errors = wait_logs(&agent, "q=still+here", 1);
    assert_eq!(errors[0]["level"], "error", "error lines pass the limit");
    // Suppressed lines are reported once a second: under load the chatter outlasts one report,
    // and the last report comes when the stream has been quiet for a second.
    let reported_in = |suppressed: &[serde_json::Value]| -> u64 {
        suppressed
            .iter()
            .filter_map(|m| {
                m["message"]
                    .as_str()?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let (mut suppressed, mut kept, mut reported) = (Vec::new(), 0, 0);
    wait_until(PATIENCE, || {
        suppressed = agent.logs(&format!("q=lines+from+{}", c.name));
        kept = agent.container_lines("q=chatter&limit=100000").len();
        reported = reported_in(&suppressed);
        kept as u64 + reported >= 2000
    });
    assert!(!suppressed.is_empty(), "suppressed lines are reported");
    assert!((50..2000).contains(&kept), "kept {kept}");
    assert_eq!(
        kept as u64 + reported,
        2000,
        "every line is kept or reported as suppressed"
    );
    assert_eq!(suppressed[0]["source"]["type"], "system");
    let (_, health) = agent.get("/api/v1/health");
    assert_eq!(json(&health)["suppressed"], reported);
}

/// The engine rotates away lines while the agent is stopped: the agent says so on resume.
#[test]
fn lines_rotated_away_by_the_engine_are_reported_as_a_gap() {
    let p = unique("gap");
    let mut agent = agent_for(&p, &[]);
    let c = Container::run(
        &format!("{p}-rot"),
        &["--log-opt", "max-size=2k", "--log-opt", "max-file=2"],
        "echo first; sleep 3; i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo \"filler line number $i\"; done; echo last; exec sleep 60",
    );
    wait_logs(&agent, "q=first", 1);
    let (code, _) = agent.stop();
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_secs(4));
    agent.restart();
    wait_logs(&agent, "q=last", 1);
    let gap = agent.logs("q=dropped+by+the+engine");
    assert_eq!(gap.len(), 1, "one gap warning; log:\n{}", agent.log());
    assert_eq!(gap[0]["level"], "warn");
    assert_eq!(gap[0]["containerId"], c.id.as_str());
    let (_, health) = agent.get("/api/v1/health");
    assert_eq!(json(&health)["gaps"], 1);
}

/// Under systemd: `<N>` journald priorities without timestamps, and READY/WATCHDOG/STATUS/
/// STOPPING on `$NOTIFY_SOCKET`.
#[test]
fn systemd_notifications_and_journald_priorities() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let sock_str = sock_path.display().to_string();
    let mut agent = Agent::start(&[
        ("NOTIFY_SOCKET", sock_str.as_str()),
        ("WATCHDOG_USEC", "2000000"),
        ("JOURNAL_STREAM", "8:12345"),
        ("CONTAINERS_INCLUDE", "none-at-all"),
        ("LOG_LEVEL", "info"),
    ]);
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(10)
        && !(seen.iter().any(|s| s == "READY=1") && seen.iter().any(|s| s == "WATCHDOG=1"))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(seen.iter().any(|s| s == "READY=1"), "{seen:?}");
    assert!(
        seen.iter().any(|s| s == "WATCHDOG=1"),
        "watchdog pinged while the pipeline moves: {seen:?}"
    );
    assert!(
        wait_until(PATIENCE, || {
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            seen.iter().any(|s| s.starts_with("STATUS=following"))
        }),
        "{seen:?}"
    );
    let (code, _) = agent.stop();
    assert_eq!(code, 0);
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if &buf[..n] == b"STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    let log = agent.log();
    let started = log
        .lines()
        .find(|l| l.contains(" started: engine "))
        .unwrap_or_default();
    assert!(
        started.starts_with("<6>container-logd "),
        "journald priority, no timestamp: {started:?}"
    );
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");
}

/// No engine at `DOCKER_HOST` (installed before the engine, or its socket elsewhere): the agent
/// is ready at once all the same, says in systemd's status and in its health that it waits for
/// the engine, keeps the watchdog fed, and stops cleanly while it waits.
#[test]
fn ready_before_the_engine_answers() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("noengine");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let sock_str = sock_path.display().to_string();
    let nowhere = format!("unix://{}", dir.path().join("nothing.sock").display());
    let mut agent = Agent::start(&[
        ("NOTIFY_SOCKET", sock_str.as_str()),
        ("WATCHDOG_USEC", "2000000"),
        ("DOCKER_HOST", nowhere.as_str()),
    ]);
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let waiting = format!("STATUS=waiting for the engine at {nowhere}");
    assert!(
        wait_until(PATIENCE, || {
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            seen.iter().any(|s| s == "READY=1")
                && seen.contains(&waiting)
                && seen.iter().filter(|s| *s == "WATCHDOG=1").count() >= 2
        }),
        "READY=1, the status and watchdog pings while the engine is awaited: {seen:?}"
    );
    let (status, body) = agent.get("/api/v1/health");
    let health = json(&body);
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["docker"]["connected"], false);
    assert_eq!(health["docker"]["host"], nowhere.as_str());
    let (code, took) = agent.stop();
    assert_eq!(code, 0, "a stop while the engine is awaited is clean");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    assert!(
        agent.log().contains("unreachable"),
        "the agent says why it waits:\n{}",
        agent.log()
    );
}

#[test]
fn tcp_docker_host_through_a_socket_proxy() {
    let p = unique("tcp");
    let sock = engine().trim_start_matches("unix://").to_string();
    let port = tcp_proxy_to(&sock);
    let host = format!("tcp://127.0.0.1:{port}");
    let agent = agent_for(&p, &[("DOCKER_HOST", host.as_str())]);
    let _c = Container::run(&format!("{p}-net"), &[], "echo over tcp; exec sleep 60");
    let got = wait_logs(&agent, "", 1);
    assert_eq!(messages(&got), ["over tcp"]);
    let (_, health) = agent.get("/api/v1/health");
    assert_eq!(json(&health)["docker"]["host"], host.as_str());
}

#[test]
fn oom_kill_is_reported() {
    let p = unique("oom");
    let agent = agent_for(&p, &[]);
    let c = Container::run(
        &format!("{p}-hog"),
        &["-m", "8m", "--memory-swap", "8m"],
        "echo before; x=$(head -c 50000000 /dev/zero | tr '\\0' a); echo after",
    );
    assert_eq!(c.wait(PATIENCE), 137);
    let mut oom = Vec::new();
    assert!(
        wait_until(PATIENCE, || {
            oom = agent.logs("q=out+of+memory");
            !oom.is_empty()
        }),
        "no OOM message; log:\n{}",
        agent.log()
    );
    assert_eq!(
        oom[0]["message"],
        format!("container {} was killed: out of memory", c.name)
    );
    assert_eq!(oom[0]["level"], "error");
    assert_eq!(oom[0]["source"]["type"], "system");
    assert_eq!(agent.logs("q=died+with+exit+code+137").len(), 1);
    assert_eq!(messages(&agent.container_lines("")), ["before"]);
}

/// The start of a response to `path` (status line, headers, first bytes), read for at most 3 s.
fn response_head(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data:") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn stream_and_page_with_a_token() {
    let p = unique("token");
    let agent = agent_for(&p, &[("API_TOKEN", "tok-123")]);
    let _c = Container::run(&format!("{p}-s"), &[], "echo streamed; exec sleep 60");
    assert!(wait_until(PATIENCE, || http_get(
        agent.port,
        "/api/v1/logs?q=streamed",
        Some("tok-123")
    )
    .1
    .contains("streamed")));
    let denied = response_head(agent.port, "/api/v1/logs/stream?limit=5&access_token=wrong");
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let denied = response_head(agent.port, "/api/v1/logs/stream?limit=5");
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let ok = response_head(
        agent.port,
        "/api/v1/logs/stream?limit=5&q=streamed&access_token=tok-123",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{ok}"
    );
    assert!(ok.contains("streamed"), "{ok}");
    // The page itself holds no data and loads without the token; it reads it from #token=.
    let (status, page) = agent.get("/");
    assert_eq!(status, 200);
    assert!(
        page.contains("access_token"),
        "the page passes the token on to EventSource"
    );
}
