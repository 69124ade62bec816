//! The integration-test harness: the private Docker engine of `tests/env.sh` (and its private
//! Podman service, in `podman`), containers that remove themselves, the real agent binary in a fresh directory, mosquitto brokers on free
//! loopback ports, and small HTTP and wait helpers. Everything started here is stopped by a
//! `Drop`, so a failing test leaves nothing behind.
#![allow(dead_code)]

pub mod broker;
pub mod msgs;
pub mod podman;
pub mod tls;
pub mod v5;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "cld-busybox";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The private engine's `DOCKER_HOST`, started on first use.
pub fn engine() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| start_service("up", "host"))
}

/// Starts a private service with `tests/env.sh UP` (idempotent) and returns what
/// `tests/env.sh HOST` prints: its `DOCKER_HOST`.
pub fn start_service(up: &str, host: &str) -> String {
    let env_sh = repo().join("tests/env.sh");
    let status = Command::new(&env_sh)
        .arg(up)
        .status()
        .unwrap_or_else(|e| panic!("run tests/env.sh {up}: {e}"));
    assert!(
        status.success(),
        "tests/env.sh {up} failed: the private service is needed"
    );
    let out = Command::new(&env_sh)
        .arg(host)
        .output()
        .unwrap_or_else(|e| panic!("tests/env.sh {host}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs the docker CLI against the private engine.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", engine())
        .output()
        .expect("docker CLI")
}

/// A name no other test uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "cld-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A container removed (with `docker rm -f`) when dropped.
pub struct Container {
    pub name: String,
    pub id: String,
}

impl Container {
    /// `docker run -d --network none --name NAME <extra> cld-busybox sh -c SCRIPT`.
    pub fn run(name: &str, extra: &[&str], script: &str) -> Container {
        let mut args = vec!["run", "-d", "--network", "none", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        let out = docker(&args);
        assert!(
            out.status.success(),
            "docker run {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Container {
            name: name.to_string(),
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        }
    }

    /// `Container::run` with the balena labels that give the container's `appId` and
    /// `serviceName`.
    pub fn run_app(
        name: &str,
        app: &str,
        service: &str,
        extra: &[&str],
        script: &str,
    ) -> Container {
        let app = format!("io.balena.app-id={app}");
        let service = format!("io.balena.service-name={service}");
        let mut args = vec!["-l", app.as_str(), "-l", service.as_str()];
        args.extend_from_slice(extra);
        Container::run(name, &args, script)
    }

    pub fn short(&self) -> &str {
        &self.id[..12]
    }

    /// Waits for the container to exit; its exit code.
    pub fn wait(&self, timeout: Duration) -> i32 {
        let out = Command::new("timeout")
            .arg(format!("{}", timeout.as_secs().max(1)))
            .args(["docker", "wait", &self.name])
            .env("DOCKER_HOST", engine())
            .output()
            .expect("docker wait");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("container {} did not exit in {timeout:?}", self.name))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // After a failed assertion an agent or backend may still be writing into the
        // directory; give it a moment and try again.
        for _ in 0..3 {
            if std::fs::remove_dir_all(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range: a port taken from it could be given to an outgoing
    // connection before our server binds it, and a client polling a port that nobody listens
    // on yet can even connect to itself there.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_000);
    let span = low - 10_000;
    let start = (std::process::id() * 7919 + NEXT.fetch_add(1, Ordering::Relaxed) * 211) % span;
    for i in 0..span {
        let port = 10_000 + (start + i * 97) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

/// The wall clock in ms since the epoch, as message timestamps are.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How long a test waits for something that must happen: generous, so that a busy machine
/// only makes a test slower, never failing. Waits return as soon as the awaited event comes.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.0 GET; (status, body). Status 0 when nothing answers.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// What the agent runs with unless told otherwise: the private engine, MQTT off, the API on
/// `port`, LOG_DIR and STATE_DIR under `dir`, debug logging.
pub fn agent_env(dir: &Path, port: u16) -> Vec<(String, String)> {
    agent_env_on(engine(), dir, port)
}

/// [`agent_env`] with another engine's `DOCKER_HOST`.
pub fn agent_env_on(host: &str, dir: &Path, port: u16) -> Vec<(String, String)> {
    vec![
        ("DOCKER_HOST".into(), host.into()),
        ("MQTT_BROKER".into(), "off".into()),
        ("API_LISTEN".into(), format!("127.0.0.1:{port}")),
        ("LOG_DIR".into(), dir.join("logs").display().to_string()),
        ("STATE_DIR".into(), dir.join("state").display().to_string()),
        ("LOG_LEVEL".into(), "debug".into()),
    ]
}

/// The real agent binary, run in its own directory; killed when dropped.
pub struct Agent {
    pub dir: TempDir,
    pub port: u16,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Starts the agent with [`agent_env`] for a fresh directory and a free port; `env` adds
    /// or overrides variables.
    pub fn start(env: &[(&str, &str)]) -> Agent {
        Agent::start_on(engine(), env)
    }

    /// [`Agent::start`] against the engine at `host` (a `DOCKER_HOST`).
    pub fn start_on(host: &str, env: &[(&str, &str)]) -> Agent {
        let dir = TempDir::new("agent");
        let port = free_port();
        let mut vars = agent_env_on(host, dir.path(), port);
        for (k, v) in env {
            vars.retain(|(x, _)| x != k);
            vars.push((k.to_string(), v.to_string()));
        }
        let mut a = Agent {
            dir,
            port,
            child: None,
            env: vars,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_container-logd"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(PATIENCE, || http_get(port, "/api/v1/health", None).0 != 0),
            "agent API did not come up; its log:\n{}",
            self.log()
        );
    }

    /// Starts the agent again with the same directory and settings.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; the exit code and how long the stop took.
    pub fn stop(&mut self) -> (i32, Duration) {
        let t0 = Instant::now();
        self.signal("TERM");
        let mut c = self.child.take().expect("running");
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return (status.code().unwrap_or(-1), t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("agent did not stop within 15 s; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The variables the agent runs with: for running `logs` or `check` against it.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path, None)
    }

    /// The number of live streams open, from `/api/v1/health`.
    pub fn streams(&self) -> u64 {
        let (_, body) = self.get("/api/v1/health");
        json(&body)["streams"].as_u64().expect("streams")
    }

    /// `/api/v1/logs` with a query, as JSON values.
    pub fn logs(&self, query: &str) -> Vec<serde_json::Value> {
        let (status, body) = self.get(&format!("/api/v1/logs?{query}"));
        assert_eq!(status, 200, "{body}");
        match json(&body) {
            serde_json::Value::Array(v) => v,
            other => panic!("not an array: {other}"),
        }
    }

    /// The container lines (no `system` or `manager` messages) that `query` finds.
    pub fn container_lines(&self, query: &str) -> Vec<serde_json::Value> {
        self.logs(query)
            .into_iter()
            .filter(|m| m["source"]["type"] == "container")
            .collect()
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The JSON lines of `LOG_DIR/{app}/{service}.log`.
    /// The complete lines of a log file. A last line without its newline is one the agent is
    /// still writing (its buffer reaches the file in pieces); it is left for the next look.
    pub fn file_lines(&self, app: &str, service: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.log_dir().join(app).join(format!("{service}.log")))
            .unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete.lines().map(json).collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `message` fields of some messages.
pub fn messages(v: &[serde_json::Value]) -> Vec<String> {
    v.iter()
        .map(|m| m["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A private engine of a test's own (for stopping and starting it); removed when dropped.
pub struct OwnEngine {
    pub dir: PathBuf,
}

impl OwnEngine {
    pub fn start(tag: &str) -> OwnEngine {
        let dir = PathBuf::from(format!("/tmp/cld-{tag}-{}", std::process::id()));
        let e = OwnEngine { dir };
        e.run("up");
        e
    }

    fn run(&self, cmd: &str) {
        let status = Command::new(repo().join("tests/env.sh"))
            .arg(cmd)
            .env("CLD_ENGINE_DIR", &self.dir)
            .status()
            .expect("tests/env.sh");
        assert!(
            status.success(),
            "tests/env.sh {cmd} for {}",
            self.dir.display()
        );
    }

    pub fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// Stops the engine, keeping its containers.
    pub fn stop(&self) {
        self.run("stop");
    }

    pub fn up(&self) {
        self.run("up");
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", self.host())
            .output()
            .expect("docker CLI")
    }
}

impl Drop for OwnEngine {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/env.sh"))
            .arg("down")
            .env("CLD_ENGINE_DIR", &self.dir)
            .status();
    }
}

/// A TCP listener on loopback that forwards every connection to a Unix socket, as a
/// docker-socket-proxy does; runs until the test process ends.
pub fn tcp_proxy_to(unix_path: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let target = unix_path.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let Ok(upstream) = std::os::unix::net::UnixStream::connect(&target) else {
                continue;
            };
            let (mut a_read, mut b_write) = match (conn.try_clone(), upstream.try_clone()) {
                (Ok(a), Ok(b)) => (a, b),
                _ => continue,
            };
            let (mut b_read, mut a_write) = (upstream, conn);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a_read, &mut b_write);
                let _ = b_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut b_read, &mut a_write);
                let _ = a_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}
