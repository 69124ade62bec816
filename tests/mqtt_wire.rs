//! The blocking MQTT wire (`src/backend/mqtt/wire.rs`) against a real mosquitto: every test
//! starts its own broker on a free loopback port and checks, with a real subscriber, what the
//! broker made of our bytes. Waits end on events, bounded by `PATIENCE`.
//!
//! The module is private to the crate, so it is compiled into this test as a module of its own;
//! the one name it takes from the crate, `crate::config::Secret`, is the library's own type,
//! re-exported below. (Its unit tests run here a second time.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use container_logd::config::Config;
use rustls::ClientConfig;

mod util;

// What only the agent uses (a write timeout at shutdown) is dead code here.
#[allow(dead_code)]
#[path = "../src/backend/mqtt/wire.rs"]
mod wire;

/// What `wire.rs` takes from the crate.
mod config {
    pub use container_logd::config::{MqttVersion, Secret};
}

use config::Secret;
use util::broker::{password_opts, Broker, Msg, SubOpts, Subscriber};
use util::{unique, TempDir, PATIENCE};
use wire::{connect, Closer, Error, Incoming, Options, Reader, Will, Writer};

/// The system allocator, counting the allocations of each thread, so a test can see what its
/// own loop allocates.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // During a thread's teardown its counter may be gone; that allocation is nobody's loop.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is passed on to `System` unchanged; counting touches a const-initialised
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// What the reader thread saw: every packet, then the error that ended it.
type Seen = Receiver<Result<Incoming, Error>>;

fn options(port: u16) -> Options {
    Options {
        host: "127.0.0.1".into(),
        port,
        version: config::MqttVersion::V311,
        client_id: unique("wire"),
        keep_alive: Duration::from_secs(30),
        clean_session: true,
        credentials: None,
        will: None,
        tls: None,
        connect_timeout: PATIENCE,
        max_incoming_packet: 1024,
    }
}

fn open(o: &Options) -> (Writer, Reader) {
    match connect(o) {
        Ok((w, r, ack)) => {
            assert!(!ack.session_present, "a clean session");
            (w, r)
        }
        Err(e) => panic!("connect to {}:{}: {e}", o.host, o.port),
    }
}

/// Runs `r` on a thread of its own, as a session would, until its first error (sent last).
fn read_on_thread(mut r: Reader) -> (Seen, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let t = thread::Builder::new()
        .name("wire-reader".into())
        .spawn(move || loop {
            let got = r.next();
            let end = got.is_err();
            if tx.send(got).is_err() || end {
                return;
            }
        })
        .expect("spawn reader");
    (rx, t)
}

/// The next thing the reader saw; panics if nothing comes within `PATIENCE`.
fn seen(rx: &Seen) -> Result<Incoming, Error> {
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("nothing from the reader within {PATIENCE:?}: {e}"))
}

/// Distinct payloads: text with the index, binary bytes, and every `big_every`th one of
/// `big` bytes.
fn payloads(n: usize, big_every: usize, big: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut p =
                format!("{{\"seq\":{i},\"line\":\"a log line of the wire test\"}}").into_bytes();
            p.extend_from_slice(&[0, 0xff, (i % 256) as u8]);
            if big_every > 0 && i % big_every == big_every - 1 {
                p.resize(big, b'x');
            }
            p
        })
        .collect()
}

/// Publishes `msgs` at QoS 1, at most `window` unacknowledged, as a session would: packet ids
/// 1, 2, …, a flush whenever it must wait; every PUBACK must match one in flight.
fn publish_acked(w: &mut Writer, rx: &Seen, topic: &str, msgs: &[Vec<u8>], window: usize) {
    let mut inflight = HashSet::new();
    let mut next = 0;
    while next < msgs.len() || !inflight.is_empty() {
        while next < msgs.len() && inflight.len() < window {
            let pkid = u16::try_from(next + 1).expect("ids fit");
            w.publish(pkid, topic, &msgs[next], 1, false, false)
                .expect("publish");
            inflight.insert(pkid);
            next += 1;
        }
        w.flush().expect("flush");
        match seen(rx) {
            Ok(Incoming::PubAck(id, 0)) => {
                assert!(inflight.remove(&id), "PUBACK {id} for nothing in flight")
            }
            other => panic!("{other:?} with {} in flight", inflight.len()),
        }
    }
}

/// The subscriber got exactly `msgs` on `topic`, in order, byte for byte, at `qos`.
fn received_in_order(sub: &Subscriber, topic: &str, msgs: &[Vec<u8>], qos: u8) {
    let got = sub.take(msgs.len(), PATIENCE);
    assert_eq!(got.len(), msgs.len(), "messages received");
    for (i, (m, sent)) in got.iter().zip(msgs).enumerate() {
        assert_eq!((m.topic.as_str(), m.qos), (topic, qos), "message {i}");
        assert!(m.raw == *sent, "message {i} differs");
    }
}

#[test]
fn qos1_thousand_messages_acked_by_packet_id_and_received_in_order() {
    let broker = Broker::start();
    let topic = unique("wire/qos1");
    let sub = Subscriber::start(broker.port, &[&topic]);
    let (mut w, r) = open(&options(broker.port));
    let (rx, reader) = read_on_thread(r);
    let msgs = payloads(1000, 0, 0);
    publish_acked(&mut w, &rx, &topic, &msgs, 100);
    received_in_order(&sub, &topic, &msgs, 1);
    w.disconnect().expect("disconnect");
    assert!(matches!(seen(&rx), Err(Error::Closed)));
    reader.join().expect("reader");
}

#[test]
fn qos0_bursts_are_written_whole_and_counted() {
    let broker = Broker::start();
    let topic = unique("wire/qos0");
    let sub = Subscriber::start(broker.port, &[&topic]);
    let o = options(broker.port);
    let (mut w, r) = open(&o);
    let (rx, _reader) = read_on_thread(r);
    // Every 50th message is larger than the write buffer and goes out from the caller's slice.
    let msgs = payloads(300, 50, 100_000);
    let mut expected = connect_size(&o);
    for m in &msgs {
        w.publish(0, &topic, m, 0, false, false).expect("publish");
        let p = rumqttc::mqttbytes::v4::Publish::new(
            topic.as_str(),
            rumqttc::QoS::AtMostOnce,
            m.clone(),
        );
        expected += p.size() as u64;
    }
    // The broker answers a ping after everything before it.
    w.ping().expect("ping");
    w.flush().expect("flush");
    assert!(matches!(seen(&rx), Ok(Incoming::PingResp)));
    assert_eq!(w.buffered(), 0);
    assert_eq!(
        w.bytes_written(),
        expected + 2,
        "CONNECT, the publishes, PINGREQ"
    );
    received_in_order(&sub, &topic, &msgs, 0);
}

/// The size of the CONNECT `connect` sends for `o`, as rumqttc counts it.
fn connect_size(o: &Options) -> u64 {
    rumqttc::mqttbytes::v4::Connect::new(o.client_id.as_str()).size() as u64
}

#[test]
fn qos2_goes_through_pubrec_pubrel_pubcomp() {
    let broker = Broker::start();
    let topic = unique("wire/qos2");
    let sub = Subscriber::start(broker.port, &[&topic]);
    let (mut w, r) = open(&options(broker.port));
    let (rx, _reader) = read_on_thread(r);
    let msgs = payloads(2, 0, 0);
    w.publish(7, &topic, &msgs[0], 2, false, false)
        .expect("publish");
    w.publish(8, &topic, &msgs[1], 2, true, false)
        .expect("publish");
    w.flush().expect("flush");
    assert!(matches!(seen(&rx), Ok(Incoming::PubRec(7, 0))));
    assert!(matches!(seen(&rx), Ok(Incoming::PubRec(8, 0))));
    w.pubrel(7).expect("pubrel");
    w.pubrel(8).expect("pubrel");
    w.flush().expect("flush");
    assert!(matches!(seen(&rx), Ok(Incoming::PubComp(7))));
    assert!(matches!(seen(&rx), Ok(Incoming::PubComp(8))));
    received_in_order(&sub, &topic, &msgs, 2);
    // Once each: a ping's answer comes after anything else the broker would send us, and a
    // probe from another connection after anything else the subscriber would get.
    w.ping().expect("ping");
    w.flush().expect("flush");
    assert!(matches!(seen(&rx), Ok(Incoming::PingResp)));
    let (mut other, _r) = open(&options(broker.port));
    other
        .publish(0, &topic, b"after", 0, false, false)
        .expect("probe");
    other.flush().expect("flush");
    let after = sub.take(1, PATIENCE);
    assert_eq!(after.first().map(|m| m.raw.as_slice()), Some(&b"after"[..]));
}

#[test]
fn the_will_is_published_when_the_socket_dies_and_not_after_disconnect() {
    let broker = Broker::start();
    let topic = unique("wire/will");
    let sub = Subscriber::start(broker.port, &[&topic]);
    let mut o = options(broker.port);
    o.will = Some(Will {
        topic: topic.clone(),
        payload: b"offline \x00\xff".to_vec(),
        qos: 1,
        retain: false,
        props: None,
    });

    // A clean DISCONNECT: the broker drops the will and closes; then a probe, which the
    // subscriber must get first.
    let (mut w, r) = open(&o);
    let (rx, _reader) = read_on_thread(r);
    w.disconnect().expect("disconnect");
    assert!(matches!(seen(&rx), Err(Error::Closed)));
    let (mut probe, _r) = open(&options(broker.port));
    probe
        .publish(1, &topic, b"probe", 1, false, false)
        .expect("probe");
    probe.flush().expect("flush");
    let got = sub.take(1, PATIENCE);
    assert_eq!(got.first().map(|m| m.raw.as_slice()), Some(&b"probe"[..]));

    // The socket shut down without a DISCONNECT: the will.
    let (_w, r) = open(&o);
    let closer = r.closer();
    closer.close();
    let got = sub.take(1, PATIENCE);
    assert_eq!(
        got.first().map(|m| (m.raw.as_slice(), m.qos)),
        Some((&b"offline \x00\xff"[..], 1))
    );
}

#[test]
fn refused_credentials_give_the_return_code() {
    let dir = TempDir::new("wire-auth");
    let broker = Broker::start_opts(password_opts(dir.path(), "logd", "s3cret word"));
    let mut o = options(broker.port);
    o.credentials = Some(("logd".into(), Secret::new("wrong-pass".into())));
    let e = connect(&o).expect_err("refused");
    let text = e.to_string();
    assert!(matches!(e, Error::Refused(5)), "{e:?}");
    assert!(text.contains("not authorized"), "{text}");
    assert!(!text.contains("wrong-pass") && !format!("{o:?}").contains("wrong-pass"));

    o.credentials = None;
    assert!(matches!(connect(&o), Err(Error::Refused(5))));

    let topic = unique("wire/auth");
    let sub = Subscriber::start_opts(
        broker.port,
        &[&topic],
        SubOpts {
            creds: Some(("logd", "s3cret word")),
            ..Default::default()
        },
    );
    o.credentials = Some(("logd".into(), Secret::new("s3cret word".into())));
    let (mut w, r) = open(&o);
    let (rx, _reader) = read_on_thread(r);
    let msgs = payloads(3, 0, 0);
    publish_acked(&mut w, &rx, &topic, &msgs, 2);
    received_in_order(&sub, &topic, &msgs, 1);
}

/// The agent's own rustls configuration (`MQTT_CA_FILE`), certificates verified.
fn tls_config(ca: &Path) -> Arc<ClientConfig> {
    let env: HashMap<String, String> = [
        ("MQTT_BROKER", "mqtts://localhost:8883"),
        ("MQTT_CA_FILE", ca.to_str().expect("utf-8 path")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = Config::from_env(&env)
        .expect("config")
        .mqtt
        .expect("mqtt on");
    container_logd::backend::mqtt::tls::client_config(&c).expect("tls config")
}

#[test]
fn tls_with_the_test_ca_and_a_wrong_ca_refused() {
    let dir = TempDir::new("wire-tls");
    let d = dir.path();
    let (broker, tls_port) = util::tls::broker(d);
    let topic = unique("wire/tls");
    let sub = Subscriber::start(broker.port, &[&topic]);

    let mut o = options(tls_port);
    o.host = "localhost".into();
    o.tls = Some(tls_config(&d.join("ca.crt")));
    let (mut w, r) = open(&o);
    let (rx, reader) = read_on_thread(r);
    // Every 100th message is bigger than the write buffer and than a TLS record.
    let msgs = payloads(1000, 100, 40_000);
    publish_acked(&mut w, &rx, &topic, &msgs, 100);
    received_in_order(&sub, &topic, &msgs, 1);
    // DISCONNECT and close_notify; the broker closes.
    w.disconnect().expect("disconnect");
    assert!(matches!(seen(&rx), Err(Error::Closed)));
    reader.join().expect("reader");

    o.tls = Some(tls_config(&d.join("other-ca.crt")));
    let e = connect(&o).expect_err("an unknown CA is refused");
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
}

/// Closes `closer` while the reader thread waits in `next`; how long until it returned, and
/// with what.
fn close_under_reader(
    w: &mut Writer,
    rx: &Seen,
    closer: &Closer,
) -> (Duration, Result<Incoming, Error>) {
    // A ping's answer first: the reader thread is then in (or about to enter) its next wait.
    w.ping().expect("ping");
    w.flush().expect("flush");
    assert!(matches!(seen(rx), Ok(Incoming::PingResp)));
    let t0 = Instant::now();
    closer.close();
    let got = seen(rx);
    (t0.elapsed(), got)
}

#[test]
fn a_closer_unblocks_a_blocked_reader_at_once() {
    let dir = TempDir::new("wire-close");
    let (broker, tls_port) = util::tls::broker(dir.path());
    let mut tls = options(tls_port);
    tls.tls = Some(tls_config(&dir.path().join("ca.crt")));
    for o in [options(broker.port), tls] {
        let (mut w, r) = open(&o);
        let closer = w.closer();
        let (rx, reader) = read_on_thread(r);
        let (took, got) = close_under_reader(&mut w, &rx, &closer);
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(matches!(got, Err(Error::Closed)), "{got:?}");
        reader.join().expect("reader");
        // The writer's socket is shut down as well.
        let sent = w
            .publish(1, "t", b"late", 1, false, false)
            .and_then(|()| w.flush());
        assert!(sent.is_err(), "a write after close");
    }
}

#[test]
fn a_stopped_broker_ends_the_reader() {
    let mut broker = Broker::start();
    let (mut w, r) = open(&options(broker.port));
    let (rx, reader) = read_on_thread(r);
    w.ping().expect("ping");
    w.flush().expect("flush");
    assert!(matches!(seen(&rx), Ok(Incoming::PingResp)));
    broker.stop();
    let got = seen(&rx);
    assert!(matches!(got, Err(Error::Closed | Error::Io(_))), "{got:?}");
    reader.join().expect("reader");
}

#[test]
fn a_read_timeout_lets_the_thread_tick_and_the_connection_lives_on() {
    let broker = Broker::start();
    let (mut w, mut r) = open(&options(broker.port));
    r.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let got = r.next();
    assert!(matches!(got, Err(Error::Timeout)), "{got:?}");
    w.ping().expect("ping");
    w.flush().expect("flush");
    let until = Instant::now() + PATIENCE;
    loop {
        match r.next() {
            Ok(Incoming::PingResp) => break,
            Err(Error::Timeout) if Instant::now() < until => continue,
            other => panic!("{other:?} where PINGRESP was due"),
        }
    }
    // After the time-outs, the same connection still publishes.
    let topic = unique("wire/tick");
    let sub = Subscriber::start(broker.port, &[&topic]);
    w.publish(0, &topic, b"still here", 0, false, false)
        .expect("publish");
    w.flush().expect("flush");
    let got: Vec<Msg> = sub.take(1, PATIENCE);
    assert_eq!(
        got.first().map(|m| m.raw.as_slice()),
        Some(&b"still here"[..])
    );
}

#[test]
fn publishing_and_reading_acks_allocate_nothing_per_message() {
    let broker = Broker::start();
    let topic = unique("wire/alloc");
    let (mut w, mut r) = open(&options(broker.port));
    let msgs = payloads(1000, 0, 0);
    // One thread for both halves, a window of 100: publish, flush, read the acks.
    let mut exchange = |msgs: &[Vec<u8>]| {
        for (k, batch) in msgs.chunks(100).enumerate() {
            for (i, m) in batch.iter().enumerate() {
                let pkid = u16::try_from(k * 100 + i + 1).expect("ids fit");
                w.publish(pkid, &topic, m, 1, false, false)
                    .expect("publish");
            }
            w.flush().expect("flush");
            for _ in batch {
                let got = r.next();
                assert!(matches!(got, Ok(Incoming::PubAck(_, 0))), "{got:?}");
            }
        }
    };
    // The first round may grow the reader's buffer once.
    exchange(&msgs[..100]);
    let probe = allocations();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(16)));
    assert_eq!(allocations(), probe + 1, "the counter counts");
    let before = allocations();
    exchange(&msgs);
    let made = allocations() - before;
    assert_eq!(
        made, 0,
        "allocations for 1000 QoS 1 publishes and their acks"
    );
}
