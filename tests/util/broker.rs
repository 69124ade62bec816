//! A real mosquitto for the end-to-end tests: a broker on a free loopback port with its config
//! and its persistence database in a temp dir of its own, which can be stopped and started
//! again on the same port; and a `mosquitto_sub` subscriber that collects what it receives in a
//! thread. Both are killed when dropped, so a failing test leaves no process behind.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{free_port, unique, wait_until, TempDir};

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
}

impl Default for BrokerOpts {
    fn default() -> BrokerOpts {
        BrokerOpts {
            anonymous: true,
            persistence: true,
            extra: String::new(),
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
        let port = free_port();
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
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "mosquitto did not listen on {port}"
        );
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
    pub payload: String,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        super::json(&self.payload)
    }
}

/// How a subscriber connects.
#[derive(Default)]
pub struct SubOpts<'a> {
    pub creds: Option<(&'a str, &'a str)>,
    /// `-c` with a fixed client id: the session (and what is queued for it) outlives a broker
    /// restart (with the broker's persistence on).
    pub persistent: bool,
}

/// A `mosquitto_sub -q 2` on a broker's port, killed when dropped.
pub struct Subscriber {
    child: Child,
    got: Arc<Mutex<Vec<Msg>>>,
    probe: String,
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
            .args(["-F", "%r %q %t %p"]);
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
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut it = line.splitn(4, ' ');
                let (Some(r), Some(q), Some(t), Some(p)) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    continue;
                };
                g.lock().unwrap_or_else(|e| e.into_inner()).push(Msg {
                    retained: r == "1",
                    qos: q.parse().unwrap_or(9),
                    topic: t.to_string(),
                    payload: p.to_string(),
                });
            }
        });
        let s = Subscriber { child, got, probe };
        let ok = wait_until(Duration::from_secs(10), || {
            let mut pubcmd = Command::new("mosquitto_pub");
            pubcmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
            if let Some((u, p)) = o.creds {
                pubcmd.args(["-u", u, "-P", p]);
            }
            let _ = pubcmd
                .args(["-t", &s.probe, "-m", "probe"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            wait_until(Duration::from_millis(300), || {
                s.raw().iter().any(|m| m.topic == s.probe)
            })
        });
        assert!(ok, "subscriber on port {port} did not get its probe");
        s
    }

    fn raw(&self) -> Vec<Msg> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
