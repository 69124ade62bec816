//! docs/CONTRACT.md §11 against the real agent: file descriptors running out, more API
//! connections than `API_MAX_CONNECTIONS`, and connections that never finish a request.
//!
//! Needs the private engine of `tests/env.sh` (started on first use) and `prlimit` (util-linux),
//! which lowers the soft descriptor limit of the running agent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

mod util;

use util::{json, unique, wait_until, Agent, Container, PATIENCE};

/// A value from `/proc/PID/status`, e.g. `Threads`.
fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// Sets the agent's soft limit on open files (the hard limit stays).
fn set_nofile(pid: u32, soft: usize) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .output()
        .expect("prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    s
}

/// Reads one answer with a `Content-Length` body from a connection that stays open:
/// (status, body). Status 0 when the connection ends first.
fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return (0, String::new()),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|v| v.parse().ok());
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if s.read_exact(&mut body).is_err() {
        return (0, String::new());
    }
    (
        status.unwrap_or(0),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get_on(s: &mut TcpStream, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    read_answer(s)
}

/// The `api` object of `/api/v1/health`, once the API answers it (rather than nothing, or a
/// 503 while the connections just closed still count).
fn api_health(a: &Agent) -> serde_json::Value {
    let mut doc = serde_json::Value::Null;
    assert!(
        wait_until(PATIENCE, || {
            let (status, body) = a.get("/api/v1/health");
            if status == 0 {
                return false;
            }
            doc = json(&body);
            doc.get("api").is_some()
        }),
        "the API never answered; its log:\n{}",
        a.log()
    );
    doc["api"].clone()
}

/// Whether the connection is closed by the agent (EOF or reset) within PATIENCE.
fn closed_by_agent(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn running_out_of_descriptors_is_survived() {
    // No header timeout in the way: the connections must hold their descriptors until closed.
    let a = Agent::start(&[
        ("API_MAX_CONNECTIONS", "4096"),
        ("API_HEADER_TIMEOUT_S", "3600"),
    ]);
    let pid = a.pid();
    let limit = open_fds(pid) + 24;
    set_nofile(pid, limit);
    let mut held = Vec::new();
    assert!(
        wait_until(PATIENCE, || {
            held.push(connect(a.port));
            open_fds(pid) >= limit && held.len() > 40
        }),
        "the agent never ran out of descriptors ({} open, limit {limit})",
        open_fds(pid)
    );
    // Out of descriptors. A file the agent closes now and then (the cursors' write every 2 s)
    // could free one for a moment: a limit under what is open keeps every open failing.
    set_nofile(pid, open_fds(pid) - 4);
    // A container started now cannot be inspected (no descriptor for the engine socket).
    let name = unique("emfile");
    let c = Container::run(&name, &[], &format!("echo hello-{name}; sleep 300"));
    assert!(
        wait_until(PATIENCE, || {
            a.log()
                .lines()
                .any(|l| l.contains(c.short()) && l.contains("Too many open files"))
        }),
        "the container's inspect never failed for lack of descriptors; log:\n{}",
        a.log()
    );
    drop(held);
    let api = api_health(&a);
    assert!(api["acceptErrors"].as_u64() > Some(0), "{api}");
    assert!(
        wait_until(PATIENCE, || a
            .logs("limit=100")
            .iter()
            .any(|m| m["message"].as_str() == Some(&format!("hello-{name}")))),
        "the container started during the exhaustion was never followed; log:\n{}",
        a.log()
    );
    let (status, body) = a.get("/api/v1/containers");
    assert_eq!(status, 200);
    assert!(body.contains(c.short()), "{body}");
}

#[test]
fn connections_over_the_cap_get_503_and_threads_stay_bounded() {
    let max = 8;
    let a = Agent::start(&[("API_MAX_CONNECTIONS", "8")]);
    let pid = a.pid();
    let before = proc_status(pid, "Threads");
    // Each held connection gets its answer, so it is admitted, and stays open (keep-alive).
    // The harness's own start-up probe may still hold a place for a moment after it closed:
    // a connection refused then is tried again once that place is free.
    let mut held: Vec<TcpStream> = Vec::new();
    let t0 = Instant::now();
    while held.len() < max {
        let mut s = connect(a.port);
        match get_on(&mut s, "/api/v1/containers").0 {
            200 => held.push(s),
            503 if t0.elapsed() < PATIENCE => std::thread::sleep(Duration::from_millis(50)),
            status => panic!("connection {} of {max}: {status}", held.len() + 1),
        }
    }
    for _ in 0..3 * max {
        let mut s = connect(a.port);
        let (status, body) = get_on(&mut s, "/api/v1/health");
        assert_eq!(status, 503, "{body}");
        assert!(json(&body)["error"].as_str().is_some(), "{body}");
    }
    let threads = proc_status(pid, "Threads");
    assert!(
        threads <= before + max as u64,
        "{threads} threads with {max} connections held, {before} before"
    );
    drop(held);
    let api = api_health(&a);
    assert!(api["refused"].as_u64() >= Some(3 * max as u64), "{api}");
    assert_eq!(api["maxConnections"], 8, "{api}");
    let (status, text) = a.get("/metrics");
    assert_eq!(status, 200);
    assert!(text.contains("container_logd_api_refused_total "), "{text}");
}

#[test]
fn slow_and_idle_connections_are_closed() {
    let a = Agent::start(&[("API_HEADER_TIMEOUT_S", "2"), ("API_IDLE_TIMEOUT_S", "3")]);
    // Slowloris: half a request head, then nothing.
    let mut slow = connect(a.port);
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let t = Instant::now();
    assert!(
        closed_by_agent(&mut slow),
        "the slow connection stayed open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // Keep-alive: one answer, then silence.
    let mut idle = connect(a.port);
    assert_eq!(get_on(&mut idle, "/api/v1/containers").0, 200);
    let t = Instant::now();
    assert!(
        closed_by_agent(&mut idle),
        "the idle connection stayed open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    let api = api_health(&a);
    assert!(api["headerTimeouts"].as_u64() >= Some(1), "{api}");
    assert!(api["idleClosed"].as_u64() >= Some(1), "{api}");
}
