//! Measurement: the cost of publishing N log-sized messages to an MQTT broker through
//! rumqttc's sync `Client`/`Connection` (a tokio current-thread runtime inside) against
//! rumqttc's own v4 packet types (`rumqttc::mqttbytes::v4`) over a blocking `std::net::TcpStream`.
//!
//! Usage: `adapters client|raw N [QOS]`, QOS 1 (default) or 0; the broker is 127.0.0.1 on
//! `ADAPTERS_PORT` (default 1883). Prints one line of `key=value` figures at the end.
//! `ADAPTERS_RECV_TIMEOUT=1`: the client mode's connection thread calls `recv_timeout(6 s)`, as
//! the agent's does, instead of `recv()` (what `iter()` calls). `ADAPTERS_WBUF=BYTES`: the raw
//! mode's write buffer (32 KiB).
//!
//! Both modes do the same work around the adapter: one fresh ~430-byte JSON payload (a `Vec<u8>`)
//! and one topic `String` per message, at most `WINDOW` unacknowledged QoS 1 publishes counted by
//! a second thread that sees the acks, a wait for every PUBACK, then DISCONNECT.

use std::error::Error;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{ConnAck, Connect, Disconnect, Packet, Publish};
use rumqttc::mqttbytes::{self, QoS};
use rumqttc::{Client, ConnectReturnCode, Event, MqttOptions, Outgoing};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Unacknowledged QoS 1 publishes at most (the agent's `MAX_INFLIGHT_UNITS`).
const WINDOW: u64 = 192;
/// rumqttc's own in-flight window and request channel, as the agent sets them.
const CLIENT_INFLIGHT: u16 = 200;
const REQUEST_CAP: usize = WINDOW as usize + 16;
/// Largest packet either side accepts (the agent's `MAX_PACKET`).
const MAX_PACKET: usize = 1 << 20;
/// Keep-alive long enough that no PINGREQ falls inside a run.
const KEEP_ALIVE: u16 = 60;
/// The raw mode's write buffer (`ADAPTERS_WBUF` overrides it).
const WBUF: usize = 32 << 10;
const TOPIC: &str = "container-logd/bench-host/web-frontend-7c9d/log";
const PAYLOAD_LEN: usize = 430;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: adapters client|raw N [QOS 0|1]   (broker 127.0.0.1:$ADAPTERS_PORT)");
        std::process::exit(2);
    }
    let n: u64 = args[2].parse().expect("N");
    let qos = match args.get(3).map(String::as_str).unwrap_or("1") {
        "0" => QoS::AtMostOnce,
        "1" => QoS::AtLeastOnce,
        q => panic!("QOS must be 0 or 1, not {q}"),
    };
    let port: u16 = std::env::var("ADAPTERS_PORT")
        .ok()
        .map(|p| p.parse().expect("ADAPTERS_PORT"))
        .unwrap_or(1883);

    let payload = Payload::new();
    let start = Instant::now();
    let res = match args[1].as_str() {
        "client" => client(port, n, qos, &payload),
        "raw" => raw(port, n, qos, &payload),
        m => panic!("MODE must be client or raw, not {m}"),
    };
    let threads = match res {
        Ok(t) => t,
        Err(e) => {
            eprintln!("adapters {}: {e}", args[1]);
            std::process::exit(1);
        }
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "mode={} qos={} n={} secs={:.3} msgs_per_s={:.0} threads={} threads_exit={} vmhwm_kib={}",
        args[1],
        qos as u8,
        n,
        secs,
        n as f64 / secs,
        threads,
        status("Threads"),
        status("VmHWM"),
    );
}

/// A figure of `/proc/self/status` (the number only; VmHWM is in kB).
fn status(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A rendered log message of `PAYLOAD_LEN` bytes; each one differs in its sequence number.
struct Payload {
    template: Vec<u8>,
    seq_at: usize,
}

impl Payload {
    fn new() -> Payload {
        let head = concat!(
            r#"{"ts":"2026-11-29T20:31:52.123456789Z","host":"bench-host","#,
            r#""container":"web-frontend-7c9d","image":"nginx:1.27","stream":"stdout","#,
            r#""level":"info","seq":"#
        );
        let mid = r#","line":""#;
        let tail = r#""}"#;
        let fixed = head.len() + 10 + mid.len() + tail.len();
        let line: String = "GET /api/v1/items?page=3 HTTP/1.1 200 1532 \"-\" \"Mozilla/5.0\" "
            .chars()
            .cycle()
            .take(PAYLOAD_LEN - fixed)
            .collect();
        let text = format!("{head}{:010}{mid}{line}{tail}", 0);
        assert_eq!(text.len(), PAYLOAD_LEN);
        Payload {
            template: text.into_bytes(),
            seq_at: head.len(),
        }
    }

    /// A fresh buffer, as a rendered message would be.
    fn render(&self, seq: u64) -> Vec<u8> {
        let mut v = self.template.clone();
        let mut s = seq;
        for b in v[self.seq_at..self.seq_at + 10].iter_mut().rev() {
            *b = b'0' + (s % 10) as u8;
            s /= 10;
        }
        v
    }
}

/// Acknowledgements seen by the thread that reads them, and the wait of the publishing thread.
/// The reader wakes the publisher only when it waits (a futex call saved per read otherwise).
struct Window {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    connected: bool,
    acked: u64,
    waiting: bool,
}

impl Window {
    fn new() -> Arc<Window> {
        Arc::new(Window {
            state: Mutex::default(),
            cv: Condvar::new(),
        })
    }
    fn connected(&self) {
        self.state.lock().unwrap().connected = true;
        self.cv.notify_one();
    }
    fn ack(&self, n: u64) {
        let mut s = self.state.lock().unwrap();
        s.acked += n;
        if s.waiting {
            drop(s);
            self.cv.notify_one();
        }
    }
    fn wait_connected(&self) {
        let mut s = self.state.lock().unwrap();
        while !s.connected {
            s = self.cv.wait(s).unwrap();
        }
    }
    fn has_room(&self, sent: u64) -> bool {
        sent - self.state.lock().unwrap().acked < WINDOW
    }
    /// Blocks until fewer than `limit` of `sent` are unacknowledged.
    fn wait_below(&self, sent: u64, limit: u64) -> Res<()> {
        let mut s = self.state.lock().unwrap();
        while sent - s.acked >= limit {
            s.waiting = true;
            let (g, t) = self.cv.wait_timeout(s, Duration::from_secs(30)).unwrap();
            s = g;
            s.waiting = false;
            if t.timed_out() && sent - s.acked >= limit {
                return Err(format!("no ack for 30 s ({} of {sent} acked)", s.acked).into());
            }
        }
        Ok(())
    }
}

/// rumqttc's `Client`/`Connection`, used as the agent uses them. Returns the thread count
/// after the last ack.
fn client(port: u16, n: u64, qos: QoS, payload: &Payload) -> Res<u64> {
    // `ADAPTERS_HOST=localhost` (loopback still) shows what a host name costs: tokio resolves
    // it on a thread of its blocking pool, which then idles for 10 s.
    let host = match std::env::var("ADAPTERS_HOST").as_deref() {
        Ok("localhost") => "localhost",
        _ => "127.0.0.1",
    };
    let mut options = MqttOptions::new("adapters-client", host, port);
    options
        .set_keep_alive(Duration::from_secs(KEEP_ALIVE.into()))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(CLIENT_INFLIGHT);
    let (client, mut connection) = Client::new(options, REQUEST_CAP);

    let win = Window::new();
    let w = win.clone();
    let conn = thread::Builder::new()
        .name("conn".into())
        .spawn(move || -> Res<()> {
            // As the agent's connection thread polls while connected (`CONN_TICK`), if asked.
            let with_timeout = std::env::var_os("ADAPTERS_RECV_TIMEOUT").is_some();
            loop {
                let event = if with_timeout {
                    match connection.recv_timeout(Duration::from_secs(6)) {
                        Ok(e) => e,
                        Err(rumqttc::RecvTimeoutError::Timeout) => continue,
                        Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    match connection.recv() {
                        Ok(e) => e,
                        Err(_) => break,
                    }
                };
                match event? {
                    Event::Incoming(Packet::ConnAck(ConnAck { code, .. })) => {
                        if code != ConnectReturnCode::Success {
                            return Err(format!("refused: {code:?}").into());
                        }
                        w.connected();
                    }
                    Event::Incoming(Packet::PubAck(_)) => w.ack(1),
                    Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
                    _ => {}
                }
            }
            Ok(())
        })?;

    win.wait_connected();
    for seq in 0..n {
        if qos == QoS::AtLeastOnce {
            if !win.has_room(seq) {
                win.wait_below(seq, WINDOW)?;
            }
            client.try_publish(TOPIC, qos, false, payload.render(seq))?;
        } else {
            client.publish(TOPIC, qos, false, payload.render(seq))?;
        }
    }
    if qos == QoS::AtLeastOnce {
        win.wait_below(n, 1)?;
    }
    let threads = status("Threads");
    client.disconnect()?;
    conn.join().map_err(|_| "conn thread panicked")??;
    Ok(threads)
}

/// rumqttc's v4 packets over a blocking `TcpStream`: this thread writes, a second one reads.
/// Returns the thread count after the last ack.
fn raw(port: u16, n: u64, qos: QoS, payload: &Payload) -> Res<u64> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let mut input = stream.try_clone()?;
    let wbuf = std::env::var("ADAPTERS_WBUF")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WBUF);
    let mut out = BufWriter::with_capacity(wbuf, stream);
    let mut scratch = BytesMut::with_capacity(1024);

    let mut connect = Connect::new("adapters-raw");
    connect.keep_alive = KEEP_ALIVE;
    connect.clean_session = true;
    connect.write(&mut scratch)?;
    out.write_all(&scratch)?;
    out.flush()?;

    let mut inbuf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    match read_packet(&mut input, &mut inbuf, &mut chunk)? {
        Packet::ConnAck(ConnAck {
            code: ConnectReturnCode::Success,
            ..
        }) => {}
        p => return Err(format!("expected a successful CONNACK, got {p:?}").into()),
    }

    let win = Window::new();
    let w = win.clone();
    let reader = thread::Builder::new()
        .name("reader".into())
        .spawn(move || read_acks(input, inbuf, &w))?;

    let mut pkid: u16 = 0;
    for seq in 0..n {
        let mut publish = Publish::from_bytes(TOPIC, qos, Bytes::from(payload.render(seq)));
        if qos == QoS::AtLeastOnce {
            if !win.has_room(seq) {
                out.flush()?; // nothing may wait in our buffer while we wait for the broker
                win.wait_below(seq, WINDOW)?;
            }
            pkid = pkid.checked_add(1).unwrap_or(1);
            publish.pkid = pkid;
        }
        scratch.clear();
        publish.write(&mut scratch)?;
        out.write_all(&scratch)?;
    }
    out.flush()?;
    if qos == QoS::AtLeastOnce {
        win.wait_below(n, 1)?;
    }
    let threads = status("Threads");

    scratch.clear();
    Disconnect.write(&mut scratch)?;
    out.write_all(&scratch)?;
    out.flush()?;
    out.get_ref().shutdown(Shutdown::Write)?;
    reader.join().map_err(|_| "reader thread panicked")??;
    Ok(threads)
}

/// The reading thread: counts PUBACKs (in order, as MQTT 3.1.1 §4.6 has the broker send them)
/// until the broker closes the connection.
fn read_acks(mut input: TcpStream, mut buf: BytesMut, win: &Window) -> Res<()> {
    let mut chunk = [0u8; 4096];
    let mut expect: u16 = 1;
    loop {
        let k = input.read(&mut chunk)?;
        if k == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..k]);
        let mut acks = 0;
        loop {
            match Packet::read(&mut buf, MAX_PACKET) {
                Ok(Packet::PubAck(ack)) => {
                    if ack.pkid != expect {
                        return Err(format!("PUBACK {} where {expect} was due", ack.pkid).into());
                    }
                    expect = expect.checked_add(1).unwrap_or(1);
                    acks += 1;
                }
                Ok(Packet::PingResp) => {}
                Ok(p) => return Err(format!("unexpected packet {p:?}").into()),
                Err(mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if acks > 0 {
            win.ack(acks);
        }
    }
}

/// Reads one whole packet, keeping what follows it in `buf`.
fn read_packet(input: &mut TcpStream, buf: &mut BytesMut, chunk: &mut [u8]) -> Res<Packet> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let k = input.read(chunk)?;
        if k == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}
