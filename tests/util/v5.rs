//! A small blocking MQTT 5 subscriber for the tests, over rumqttc's v5 packet codecs (no
//! client library, no runtime): it connects with MQTT 5, subscribes at QoS 1, acknowledges and
//! collects every PUBLISH with its properties, in a thread. Killed (its socket shut down) when
//! dropped. MQTT 5 subscribers are what see the properties an MQTT 5 publisher sends; a 3.1.1
//! subscriber (`mosquitto_sub`) gets the same topics and payloads without them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    Connect, ConnectProperties, Filter, Packet, PubAck, PublishProperties, Subscribe,
};
use rumqttc::v5::mqttbytes::QoS;

use super::{unique, wait_until, PATIENCE};

/// One PUBLISH as the subscriber received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg5 {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// Its properties as the broker forwarded them (none: `None`).
    pub props: Option<PublishProperties>,
}

impl Msg5 {
    /// The user properties, in order.
    pub fn user(&self) -> Vec<(String, String)> {
        self.props
            .as_ref()
            .map(|p| p.user_properties.clone())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.payload))
        })
    }
}

/// See the module documentation.
pub struct Sub5 {
    sock: TcpStream,
    got: Arc<Mutex<Vec<Msg5>>>,
}

fn lock(m: &Mutex<Vec<Msg5>>) -> MutexGuard<'_, Vec<Msg5>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads one whole packet, with what is left over kept in `buf`.
fn read_packet(sock: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
    let mut chunk = [0u8; 16 << 10];
    loop {
        match Packet::read(buf, Some(16 << 20)) {
            Ok(p) => return Some(p),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("the v5 subscriber read a bad packet: {e}"),
        }
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn write(sock: &mut TcpStream, p: Packet) {
    let mut b = BytesMut::new();
    p.write(&mut b, None).expect("the v5 subscriber encodes");
    let _ = sock.write_all(&b);
}

impl Sub5 {
    /// Connects to the broker on `port` with MQTT 5 and subscribes to `filters` at QoS 1;
    /// returns once the broker confirmed the subscription.
    pub fn start(port: u16, filters: &[&str]) -> Sub5 {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect the v5 subscriber");
        sock.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut props = ConnectProperties::new();
        props.max_packet_size = Some(16 << 20);
        let connect = Connect {
            keep_alive: 0,
            client_id: unique("sub5"),
            clean_start: true,
            properties: Some(props),
        };
        write(&mut sock, Packet::Connect(connect, None, None));
        let mut buf = BytesMut::new();
        match read_packet(&mut sock, &mut buf) {
            Some(Packet::ConnAck(_)) => {}
            other => panic!("the v5 subscriber got {other:?} for its CONNECT"),
        }
        let filters: Vec<Filter> = filters
            .iter()
            .map(|f| Filter::new(*f, QoS::AtLeastOnce))
            .collect();
        let mut sub = Subscribe::new_many(filters, None);
        sub.pkid = 1;
        write(&mut sock, Packet::Subscribe(sub));
        match read_packet(&mut sock, &mut buf) {
            Some(Packet::SubAck(_)) => {}
            other => panic!("the v5 subscriber got {other:?} for its SUBSCRIBE"),
        }
        sock.set_read_timeout(None).expect("timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let (g, mut reader) = (got.clone(), sock.try_clone().expect("clone"));
        std::thread::spawn(move || {
            while let Some(p) = read_packet(&mut reader, &mut buf) {
                let Packet::Publish(p) = p else { continue };
                if p.qos != QoS::AtMostOnce {
                    write(&mut reader, Packet::PubAck(PubAck::new(p.pkid, None)));
                }
                lock(&g).push(Msg5 {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                    retain: p.retain,
                    props: p.properties,
                });
            }
        });
        Sub5 { sock, got }
    }

    /// Everything received so far, in order.
    pub fn all(&self) -> Vec<Msg5> {
        lock(&self.got).clone()
    }

    /// Waits until `f` holds for what was received; false after `timeout`.
    pub fn wait(&self, timeout: Duration, mut f: impl FnMut(&[Msg5]) -> bool) -> bool {
        wait_until(timeout, || f(&lock(&self.got)))
    }
}

impl Drop for Sub5 {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}
