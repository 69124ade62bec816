//! A real mosquitto for the end-to-end tests: a broker on a loopback port (a free one, or one a
//! test picked before) with its config and its persistence database in a temp dir of its own,
//! which can be stopped and started again on the same port; and a `mosquitto_sub` subscriber
//! that collects what it receives, payloads byte for byte, in a thread. Both are killed when
//! dropped, so a failing test leaves no process behind.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{free_port, unique, wait_until, TempDir, PATIENCE};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// What a broker is started with besides its listener.
pub struct BrokerOpts {
    /// `allow_anonymous true`.
    pub anonymous: bool,
    /// `persistence true` (in the broker's own dir): sessions and queued messages of
    /// subscribers with `-c` survive a stop and a start.
    pub persistence: bool,
    /// More config lines, after the main listener (so `cafile`/`certfile`/`keyfile` here make
    /// it a TLS listener, and a second `listener` line after them a plain one).
    pub extra: String,
    /// The port of the main listener; a free one when `None`. A test that configures a client
    /// before its broker exists picks the port first (with `free_port`).
    pub port: Option<u16>,
}

/// Options for a broker that takes only `user` with `pass`: writes `dir/passwd` with
/// `mosquitto_passwd`.
pub fn password_opts(dir: &Path, user: &str, pass: &str) -> BrokerOpts {
    let pw = dir.join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args([user, pass])
        .status()
        .expect("mosquitto_passwd");
    assert!(ok.success());
    BrokerOpts {
        anonymous: false,
        extra: format!("password_file {}", pw.display()),
        ..Default::default()
    }
}

impl Default for BrokerOpts {
    fn default() -> BrokerOpts {
        BrokerOpts {
            anonymous: true,
            persistence: true,
            extra: String::new(),
            port: None,
        }
    }
}

/// A private mosquitto, killed when dropped.
pub struct Broker {
    pub port: u16,
    pub dir: TempDir,
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Anonymous access, persistence on.
    pub fn start() -> Broker {
        Broker::start_opts(BrokerOpts::default())
    }

    pub fn start_opts(o: BrokerOpts) -> Broker {
        Broker::start_in(TempDir::new("broker"), o)
    }

    /// Starts a broker whose files go to `dir` (where a test may have put certificates).
    pub fn start_in(dir: TempDir, o: BrokerOpts) -> Broker {
        let port = o.port.unwrap_or_else(free_port);
        let conf = dir.path().join("mosquitto.conf");
        // `user root`: as root, mosquitto would otherwise switch to its own user and could
        // not write its database into our directory.
        let text = format!(
            "user root\nper_listener_settings false\nlog_dest none\n\
             max_queued_messages 0\nmax_inflight_messages 0\n\
             allow_anonymous {}\npersistence {}\npersistence_location {}/\n\
             listener {port} 127.0.0.1\n{}\n",
            o.anonymous,
            o.persistence,
            dir.path().display(),
            o.extra
        );
        std::fs::write(&conf, text).expect("mosquitto.conf");
        let mut b = Broker {
            port,
            dir,
            conf,
            child: None,
        };
        b.start_again();
        b
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the broker (again) on its port, waiting until it listens.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto");
        let port = self.port;
        let mut exited = None;
        let listening = wait_until(PATIENCE, || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        self.child = Some(child);
        assert!(exited.is_none(), "mosquitto on {port} exited: {exited:?}");
        assert!(listening, "mosquitto did not listen on {port}");
    }

    /// Sends `sig` (`STOP`, `CONT`, …) to the running broker: a stopped broker keeps its
    /// connections open and answers nothing.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status();
        }
    }

    /// SIGTERM (mosquitto saves its database), waiting until it is gone.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One message as `mosquitto_sub` printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub retained: bool,
    pub qos: u8,
    pub topic: String,
    /// The payload as text (`raw`, invalid UTF-8 replaced).
    pub payload: String,
    /// The payload byte for byte.
    pub raw: Vec<u8>,
}

impl Msg {
    pub fn new(retained: bool, qos: u8, topic: &str, raw: Vec<u8>) -> Msg {
        Msg {
            retained,
            qos,
            topic: topic.to_string(),
            payload: String::from_utf8_lossy(&raw).into_owned(),
            raw,
        }
    }

    /// The payload as JSON; panics when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.raw)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.payload))
    }
}

/// `mosquitto_sub`'s `%x`: the payload in hexadecimal.
fn unhex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// How a subscriber connects.
#[derive(Default)]
pub struct SubOpts<'a> {
    pub creds: Option<(&'a str, &'a str)>,
    /// `-c` with a fixed client id: the session (and what is queued for it) outlives a broker
    /// restart (with the broker's persistence on).
    pub persistent: bool,
}

/// What the reader thread received, probes included; `arrived` is notified on every message.
#[derive(Default)]
struct Inbox {
    msgs: Mutex<Vec<Msg>>,
    arrived: Condvar,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Vec<Msg>> {
        self.msgs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A `mosquitto_sub -q 2` on a broker's port, killed when dropped.
pub struct Subscriber {
    child: Child,
    got: Arc<Inbox>,
    probe: String,
    /// How far `take` has read into what was received, probes included.
    taken: Mutex<usize>,
}

impl Subscriber {
    pub fn start(port: u16, filters: &[&str]) -> Subscriber {
        Subscriber::start_opts(port, filters, SubOpts::default())
    }

    /// Subscribes to `filters` and to a probe topic of its own, and returns once a probe
    /// published to the broker came back, so every filter is in place.
    pub fn start_opts(port: u16, filters: &[&str], o: SubOpts) -> Subscriber {
        let probe = format!("cld-probe/{}", unique("probe"));
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "2"])
            .args(["-F", "%r %q %t %x"]);
        if let Some((u, p)) = o.creds {
            cmd.args(["-u", u, "-P", p]);
        }
        if o.persistent {
            cmd.args(["-c", "-i", &unique("sub")]);
        }
        for f in filters.iter().copied().chain([probe.as_str()]) {
            cmd.args(["-t", f]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let got = Arc::new(Inbox::default());
        let g = got.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut it = line.splitn(4, ' ');
                let (Some(r), Some(q), Some(t), Some(Some(raw))) =
                    (it.next(), it.next(), it.next(), it.next().map(unhex))
                else {
                    continue;
                };
                g.lock()
                    .push(Msg::new(r == "1", q.parse().unwrap_or(9), t, raw));
                g.arrived.notify_all();
            }
        });
        let s = Subscriber {
            child,
            got,
            probe,
            taken: Mutex::new(0),
        };
        let ok = wait_until(PATIENCE, || {
            let mut pubcmd = Command::new("mosquitto_pub");
            pubcmd.args(["-q", "1"]);
            pubcmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
            if let Some((u, p)) = o.creds {
                pubcmd.args(["-u", u, "-P", p]);
            }
            let _ = pubcmd
                .args(["-t", &s.probe, "-m", "probe"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            wait_until(Duration::from_millis(1000), || {
                s.raw().iter().any(|m| m.topic == s.probe)
            })
        });
        assert!(ok, "subscriber on port {port} did not get its probe");
        s
    }

    fn raw(&self) -> Vec<Msg> {
        self.got.lock().clone()
    }

    /// Everything received so far, in order, without the probes.
    pub fn all(&self) -> Vec<Msg> {
        let mut v = self.raw();
        v.retain(|m| m.topic != self.probe);
        v
    }

    /// Waits until `f` holds for what was received; false after `timeout`.
    pub fn wait(&self, timeout: Duration, mut f: impl FnMut(&[Msg]) -> bool) -> bool {
        wait_until(timeout, || f(&self.all()))
    }

    /// The next `n` messages not taken before (probes left out), or those that came before
    /// `within` ran out. Returns as soon as the `n`th arrives.
    pub fn take(&self, n: usize, within: Duration) -> Vec<Msg> {
        let until = Instant::now() + within;
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let mut got = self.got.lock();
        let mut out = Vec::new();
        loop {
            while out.len() < n && *taken < got.len() {
                let m = &got[*taken];
                *taken += 1;
                if m.topic != self.probe {
                    out.push(m.clone());
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if out.len() >= n || left.is_zero() {
                return out;
            }
            got = self
                .got
                .arrived
                .wait_timeout(got, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Panics if a message not taken yet arrives within `quiet`.
    pub fn nothing_more(&self, quiet: Duration) {
        if let Some(m) = self.take(1, quiet).pop() {
            panic!("unexpected message on {}: {}", m.topic, m.payload);
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
