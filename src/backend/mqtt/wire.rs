//! The MQTT wire, blocking, at MQTT 3.1.1 or MQTT 5 ([`Options::version`]): one broker
//! connection over a `std::net::TcpStream`, plain or rustls, split into a [`Writer`] for one
//! thread and a [`Reader`] for another, and a [`Closer`] with which any thread ends both. CONNECT
//! and CONNACK are rumqttc's own codecs (`rumqttc::mqttbytes::v4`, `rumqttc::v5::mqttbytes::v5`);
//! PUBLISH is encoded here straight into the write buffer (rumqttc's `Publish` would cost a topic
//! `String`, a payload `Bytes` and a second copy into the buffer, per message), and the
//! acknowledgements are decoded here too, straight from the read buffer: rumqttc's v5 `PubAck`
//! refuses reason codes it does not list (server busy, packet too large), which a broker may
//! still send, and its v4 one costs a buffer split per acknowledgement. For the clients that
//! subscribe (the fleet connection, `logs --broker`), SUBSCRIBE is rumqttc's too, and a PUBLISH
//! the broker forwards is decoded by rumqttc's readers into a [`Message`] (with, at MQTT 5,
//! its response topic and correlation data); the agent's own log connection subscribes to
//! nothing and reads such a packet, should one come, as [`Incoming::Other`].
//!
//! The two versions differ here only in CONNECT and CONNACK (v5 carries properties and the
//! broker's limits), in PUBLISH (v5 carries a property block, [`Props`], encoded once and
//! reused, and a topic alias, [`Alias`]) and in the reason codes of PUBACK, PUBREC and DISCONNECT
//! ([`Incoming`]); PUBREL, PINGREQ and DISCONNECT are the same bytes in both. Which topic gets
//! which alias is the caller's: this layer writes what it is told.
//!
//! This module owns bytes and sockets and nothing else: no session (packet ids, the window,
//! retries, when to ping, aliases and the spool are the caller's), no thread, no async runtime.
//! It never logs, never puts the password in a `Debug` or `Display`, and never turns certificate
//! verification off (the `ClientConfig` comes from the `tls` module next to it).
//!
//! Any error from a `Writer` or `Reader` call other than [`Error::Timeout`] leaves the connection
//! unusable (a packet may be half written or half read): drop the halves and connect again.
//!
//! TLS: rustls's `StreamOwned` cannot be split across two threads, so both halves share one
//! `ClientConnection` behind a mutex, each with its own `try_clone()` of the socket. The reader
//! blocks in a raw socket read without the lock, then takes it to decrypt what came (and to send
//! what rustls wants to send in answer, such as an alert); the writer takes it to encrypt and
//! write. Every TLS record goes out under the lock, so records leave in the order rustls made
//! them. The lock is held across the writer's socket write: while the broker is slow to read,
//! the reader waits with what it has read until that write is done.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use rumqttc::mqttbytes;
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Disconnect, LastWill, Login, Packet, PingReq, PubRel,
};
use rumqttc::v5::mqttbytes::v5 as mqtt5;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::config::{MqttVersion, Secret};

/// Buffered bytes at which a write call sends the buffer out by itself, so a burst reaches the
/// socket in chunks of this size. The bench's raw adapter (`bench/adapters`) made 0.26 writes
/// per message at QoS 1 and 0.015 at QoS 0 with a 32 KiB buffer.
const WRITE_CAP: usize = 32 << 10;
/// Payloads of this size or more are written from where they are, after what was buffered,
/// rather than copied into the buffer: a batch is one copy less (copies are most of what a
/// batched publish costs in instructions; `make bench`, instructions phase).
const DIRECT_MIN: usize = 4 << 10;
/// One socket read: a whole TLS record (16 KiB of plaintext, its header and tag) fits.
const READ_CHUNK: usize = (16 << 10) + 512;
/// MQTT 3.1.1 §2.2.3: a remaining length has at most four bytes of seven bits.
const MAX_REMAINING: usize = 268_435_455;
/// MQTT 5 §3.3.2.3: the property identifiers of a PUBLISH this layer writes.
const PROP_PAYLOAD_FORMAT: u8 = 0x01;
const PROP_MESSAGE_EXPIRY: u8 = 0x02;
const PROP_CONTENT_TYPE: u8 = 0x03;
const PROP_RESPONSE_TOPIC: u8 = 0x08;
const PROP_CORRELATION: u8 = 0x09;
const PROP_TOPIC_ALIAS: u8 = 0x23;
const PROP_USER: u8 = 0x26;

/// What the broker publishes for us when the connection dies without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Where.
    pub topic: String,
    /// What, byte for byte.
    pub payload: Vec<u8>,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Whether the broker keeps it for later subscribers.
    pub retain: bool,
    /// Its MQTT 5 properties (ignored at 3.1.1); a topic alias never applies to a will.
    pub props: Option<Props>,
}

/// How to reach a broker and log in. `Debug` shows the password as `***`.
#[derive(Debug, Clone)]
pub struct Options {
    /// A host name or an IP literal; also the TLS server name.
    pub host: String,
    pub port: u16,
    /// MQTT 3.1.1 or 5.
    pub version: MqttVersion,
    /// May be empty: an MQTT 5 broker then assigns one ([`ConnAck::assigned_client_id`]).
    pub client_id: String,
    /// Sent in CONNECT, in whole seconds (at most 65 535). Pinging in time is the caller's job.
    pub keep_alive: Duration,
    pub clean_session: bool,
    /// User name and password.
    pub credentials: Option<(String, Secret)>,
    pub will: Option<Will>,
    /// TLS with this configuration; plain TCP when `None`.
    pub tls: Option<Arc<ClientConfig>>,
    /// The limit of each step of `connect`: the TCP connect to each address, the TLS
    /// handshake's reads and writes, CONNECT and CONNACK. Must not be zero.
    pub connect_timeout: Duration,
    /// The largest remaining length of an incoming packet; a bigger one is a protocol error.
    /// A client that subscribes to nothing receives 2 to 4 bytes (and an MQTT 5 CONNACK, or an
    /// acknowledgement with a reason string, a few hundred). At MQTT 5 the broker is told
    /// (CONNECT's maximum packet size), so it does not send more.
    pub max_incoming_packet: usize,
}

/// A successful CONNACK. At MQTT 3.1.1 every limit is `None`; at MQTT 5 each is what the
/// broker said, `None` where it said nothing (no limit, MQTT 5 §3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// The broker kept a session for this client id (never with a clean session).
    pub session_present: bool,
    /// Receive maximum: QoS 1 and 2 publishes the broker takes unacknowledged at once.
    pub receive_max: Option<u16>,
    /// Maximum packet size, in bytes, of a whole packet.
    pub max_packet: Option<u32>,
    /// Topic alias maximum: the highest alias the broker takes (none when absent or 0).
    pub topic_alias_max: Option<u16>,
    /// Server keep alive: the keep-alive the client must use instead of its own.
    pub server_keep_alive: Option<u16>,
    /// The client id the broker assigned (when the client sent an empty one).
    pub assigned_client_id: Option<String>,
    /// Maximum QoS the broker takes (0 or 1; absent: 2).
    pub max_qos: Option<u8>,
    /// Whether the broker takes retained messages (absent: it does).
    pub retain_available: Option<bool>,
}

/// A packet from the broker, reduced to what a publishing client acts on. A reason code is
/// MQTT 5's (0 at 3.1.1, and when the broker left it out); 0x80 and above is a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// QoS 1 publish `pkid` is answered: delivered, or refused with the reason code.
    PubAck(u16, u8),
    /// QoS 2 publish `pkid` is received, with the reason code; answer a success with
    /// [`Writer::pubrel`]; a failure ends that publish's exchange.
    PubRec(u16, u8),
    /// QoS 2 publish `pkid` is delivered.
    PubComp(u16),
    PingResp,
    /// The broker is closing the connection, with the reason code (MQTT 5; a 3.1.1 broker
    /// sends none, and one that does is passed on with 0).
    Disconnect(u8),
    /// Anything else (a PUBLISH, a SUBACK…): nothing this layer has to answer.
    Other,
}

/// A PUBLISH the broker forwards for one of our subscriptions ([`Writer::subscribe`]), read by
/// [`Reader::next_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// MQTT 5: the response topic it names (always `None` at 3.1.1).
    pub response_topic: Option<String>,
    /// MQTT 5: its correlation data (always `None` at 3.1.1).
    pub correlation: Option<Vec<u8>>,
}

/// The topic alias of one MQTT 5 PUBLISH (MQTT 5 §3.3.2.3.4). Ignored at 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alias {
    /// The topic, in full, and no alias.
    #[default]
    None,
    /// The topic in full, and this alias for it from now on, on this connection.
    Set(u16),
    /// This alias, set earlier on this connection, and an empty topic.
    Use(u16),
}

/// One PUBLISH for [`Writer::publish_with`].
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// Ignored at QoS 0; not 0 otherwise.
    pub pkid: u16,
    /// The topic in full, also when `alias` is [`Alias::Use`] (then it is not written).
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// 0, 1 or 2.
    pub qos: u8,
    pub retain: bool,
    /// A publish sent again; dropped at QoS 0.
    pub dup: bool,
    /// MQTT 5 only (ignored at 3.1.1): the property block besides the alias.
    pub props: Option<&'a Props>,
    /// MQTT 5 only (ignored at 3.1.1).
    pub alias: Alias,
}

/// The properties of an MQTT 5 PUBLISH besides its topic alias, encoded once (a PUBLISH copies
/// the bytes): payload format indicator, message expiry interval, user properties and content
/// type, in the order rumqttc writes them (the alias goes between the first two and the rest).
/// The default has none of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Props {
    /// The payload format indicator and the message expiry interval, encoded.
    head: Vec<u8>,
    /// The user properties and the content type, encoded.
    tail: Vec<u8>,
    content_type: String,
    utf8: bool,
    expiry: Option<u32>,
    user: Vec<(String, String)>,
}

impl Props {
    /// The properties of publishes whose payload is `content_type` (UTF-8 text when `utf8`),
    /// that expire after `expiry` seconds (never when `None`), with the user properties `user`
    /// in this order. `InvalidInput` when a string is longer than MQTT carries (65 535 bytes).
    pub fn new(
        content_type: &str,
        utf8: bool,
        expiry: Option<u32>,
        user: Vec<(String, String)>,
    ) -> io::Result<Props> {
        let mut head = Vec::with_capacity(7);
        if utf8 {
            head.extend_from_slice(&[PROP_PAYLOAD_FORMAT, 1]);
        }
        if let Some(secs) = expiry {
            head.push(PROP_MESSAGE_EXPIRY);
            head.extend_from_slice(&secs.to_be_bytes());
        }
        let mut tail = Vec::new();
        for (k, v) in &user {
            tail.push(PROP_USER);
            put_string(&mut tail, k)?;
            put_string(&mut tail, v)?;
        }
        if !content_type.is_empty() {
            tail.push(PROP_CONTENT_TYPE);
            put_string(&mut tail, content_type)?;
        }
        Ok(Props {
            head,
            tail,
            content_type: content_type.to_string(),
            utf8,
            expiry,
            user,
        })
    }

    /// These properties plus a response topic and correlation data (MQTT 5 §4.10: a request,
    /// or its answer), each when given. Not for a will.
    pub fn with_reply(
        mut self,
        response_topic: Option<&str>,
        correlation: Option<&[u8]>,
    ) -> io::Result<Props> {
        if let Some(t) = response_topic {
            self.tail.push(PROP_RESPONSE_TOPIC);
            put_string(&mut self.tail, t)?;
        }
        if let Some(c) = correlation {
            let len = u16::try_from(c.len())
                .map_err(|_| invalid(format!("correlation data of {} bytes", c.len())))?;
            self.tail.push(PROP_CORRELATION);
            self.tail.extend_from_slice(&len.to_be_bytes());
            self.tail.extend_from_slice(c);
        }
        Ok(self)
    }

    /// Bytes of the block (without its length), with an alias or without.
    fn len(&self, alias: bool) -> usize {
        self.head.len() + if alias { 3 } else { 0 } + self.tail.len()
    }

    /// The same properties as rumqttc's will properties.
    fn will(&self) -> mqtt5::LastWillProperties {
        mqtt5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: self.utf8.then_some(1),
            message_expiry_interval: self.expiry,
            content_type: (!self.content_type.is_empty()).then(|| self.content_type.clone()),
            response_topic: None,
            correlation_data: None,
            user_properties: self.user.clone(),
        }
    }
}

/// An MQTT string: its length in two bytes, then its bytes.
fn put_string(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    let len =
        u16::try_from(s.len()).map_err(|_| invalid(format!("a string of {} bytes", s.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Why a connection could not be made or went away.
#[derive(Debug)]
pub enum Error {
    /// The host could not be resolved or reached, or the socket failed.
    Io(io::Error),
    /// TLS failed: the handshake (an unknown CA, a name mismatch) or a record later.
    Tls(rustls::Error),
    /// The broker refused the connection with this CONNACK return code (MQTT 3.1.1 §3.2.2.3:
    /// 1 to 5) or reason code (MQTT 5 §3.2.2.2: 0x80 and above).
    Refused(u8),
    /// Not MQTT as spoken here: a malformed or oversized packet from the broker, or a value
    /// of ours that MQTT cannot carry.
    Protocol(String),
    /// The connection ended: the broker closed it (EOF or TLS close_notify), or a [`Closer`] did.
    Closed,
    /// The broker closed the connection with a DISCONNECT of this MQTT 5 reason code.
    Disconnected(u8),
    /// Nothing came in time: the connect timeout, or the reader's read timeout. After a read
    /// timeout the connection is still good; whatever was half read is kept.
    Timeout,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "broker connection: {e}"),
            Error::Tls(e) => write!(f, "TLS with the broker: {e}"),
            Error::Refused(code) => write!(
                f,
                "the broker refused the connection: {} (CONNACK code {code})",
                refusal(*code)
            ),
            Error::Protocol(what) => write!(f, "MQTT protocol error: {what}"),
            Error::Closed => f.write_str("the connection to the broker is closed"),
            Error::Disconnected(code) => write!(
                f,
                "the broker closed the connection: {} (reason code 0x{code:02x})",
                reason_name(*code)
            ),
            Error::Timeout => f.write_str("the broker did not answer in time"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    /// Time-outs become [`Error::Timeout`]; rustls's errors, which its I/O helpers wrap in an
    /// `io::Error`, become [`Error::Tls`].
    fn from(e: io::Error) -> Error {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Error::Tls(tls.clone());
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            _ => Error::Io(e),
        }
    }
}

/// What a CONNACK return code means, in the words of MQTT 3.1.1 §3.2.2.3 (1 to 5) or of
/// MQTT 5 §3.2.2.2 (0x80 and above).
fn refusal(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        0x80.. => reason_name(code),
        _ => "a return code MQTT does not define",
    }
}

/// An MQTT 5 reason code in the words of MQTT 5 §2.4 (for 0x80 and above, a failure).
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x92 => "packet identifier not found",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9F => "connection rate exceeded",
        _ => "a reason code MQTT 5 does not define",
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// A codec error while encoding one of our own packets: a value MQTT cannot carry.
fn encoding(e: mqttbytes::Error) -> io::Error {
    invalid(e.to_string())
}

/// The TLS state both halves share.
type Tls = Arc<Mutex<ClientConnection>>;

fn lock(tls: &Mutex<ClientConnection>) -> io::Result<MutexGuard<'_, ClientConnection>> {
    tls.lock()
        .map_err(|_| io::Error::other("the TLS state was poisoned by a panic"))
}

/// Ends the connection from any thread: shuts the socket down both ways, so a blocked
/// [`Reader::next`] returns [`Error::Closed`] at once and the broker sees the connection die (and
/// publishes the will). Sends no DISCONNECT.
#[derive(Debug, Clone)]
pub struct Closer(Arc<Closing>);

#[derive(Debug)]
struct Closing {
    sock: TcpStream,
    done: AtomicBool,
}

impl Closer {
    fn new(sock: TcpStream) -> Closer {
        Closer(Arc::new(Closing {
            sock,
            done: AtomicBool::new(false),
        }))
    }

    pub fn close(&self) {
        self.0.done.store(true, Ordering::SeqCst);
        // A socket the broker already closed cannot be shut down again; nothing is lost.
        let _ = self.0.sock.shutdown(Shutdown::Both);
    }

    /// Whether `close` was called. After it, the reader may see a reset rather than an EOF
    /// (Linux answers data that comes after a shutdown with RST), which is still our own close.
    fn closed(&self) -> bool {
        self.0.done.load(Ordering::SeqCst)
    }
}

/// Connects, logs in and waits for the CONNACK; the halves of the connection and what the
/// broker said. A refusal is [`Error::Refused`] with the broker's return code.
pub fn connect(o: &Options) -> Result<(Writer, Reader, ConnAck), Error> {
    let mut sock = dial(&o.host, o.port, o.connect_timeout)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(o.connect_timeout))?;
    sock.set_write_timeout(Some(o.connect_timeout))?;
    let tls = match &o.tls {
        Some(cfg) => Some(Arc::new(Mutex::new(handshake(cfg, &o.host, &mut sock)?))),
        None => None,
    };
    let closer = Closer::new(sock.try_clone()?);
    let mut writer = Writer {
        sock: sock.try_clone()?,
        tls: tls.clone(),
        buf: BytesMut::with_capacity(WRITE_CAP + DIRECT_MIN),
        written: 0,
        v5: o.version == MqttVersion::V5,
        closer: closer.clone(),
    };
    let mut reader = Reader {
        sock,
        tls,
        framer: Framer::new(o.max_incoming_packet, o.version),
        chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        eof: false,
        closer,
    };
    connect_packet(o, &mut writer.buf)?;
    writer.flush()?;
    let ack = reader.connack()?;
    // The socket options are the socket's, shared by every clone.
    reader.sock.set_read_timeout(None)?;
    reader.sock.set_write_timeout(None)?;
    Ok((writer, reader, ack))
}

/// Resolves `host` and tries each address in turn.
fn dial(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Error> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(sock) => return Ok(sock),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => Error::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )),
    })
}

/// The TLS handshake on `sock`, verifying the broker's certificate for `host`.
fn handshake(
    cfg: &Arc<ClientConfig>,
    host: &str,
    sock: &mut TcpStream,
) -> Result<ClientConnection, Error> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| invalid(format!("{host:?} is not a valid TLS server name")))?;
    let mut conn = ClientConnection::new(cfg.clone(), name).map_err(Error::Tls)?;
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    Ok(conn)
}

/// Appends the CONNECT for `o`, in its version.
fn connect_packet(o: &Options, buf: &mut BytesMut) -> Result<(), Error> {
    let keep_alive = u16::try_from(o.keep_alive.as_secs()).unwrap_or(u16::MAX);
    let qos = match &o.will {
        Some(w) => Some(
            mqttbytes::qos(w.qos)
                .map_err(|_| Error::Protocol(format!("will QoS {} is not 0, 1 or 2", w.qos)))?,
        ),
        None => None,
    };
    let written = match o.version {
        MqttVersion::V311 => {
            let mut c = Connect::new(o.client_id.as_str());
            c.keep_alive = keep_alive;
            c.clean_session = o.clean_session;
            if let (Some(w), Some(qos)) = (&o.will, qos) {
                let payload = w.payload.clone();
                c.last_will = Some(LastWill::new(w.topic.as_str(), payload, qos, w.retain));
            }
            if let Some((user, password)) = &o.credentials {
                c.login = Some(Login::new(user.as_str(), password.expose()));
            }
            c.write(buf).map(drop)
        }
        MqttVersion::V5 => return connect_packet5(o, keep_alive, qos, buf),
    };
    written.map_err(|e| Error::Protocol(e.to_string()))
}

/// The MQTT 5 CONNECT: clean start, no session kept after the connection (the session expiry
/// interval's default, 0), no topic aliases from the broker, and the largest packet we take.
fn connect_packet5(
    o: &Options,
    keep_alive: u16,
    will_qos: Option<mqttbytes::QoS>,
    buf: &mut BytesMut,
) -> Result<(), Error> {
    let mut props = mqtt5::ConnectProperties::new();
    props.max_packet_size = Some(u32::try_from(o.max_incoming_packet + 5).unwrap_or(u32::MAX));
    let c = mqtt5::Connect {
        keep_alive,
        client_id: o.client_id.clone(),
        clean_start: o.clean_session,
        properties: Some(props),
    };
    let will = match (&o.will, will_qos) {
        (Some(w), Some(qos)) => Some(mqtt5::LastWill::new(
            w.topic.as_str(),
            w.payload.clone(),
            v5_qos(qos),
            w.retain,
            w.props.as_ref().map(Props::will),
        )),
        _ => None,
    };
    let login = o
        .credentials
        .as_ref()
        .map(|(user, password)| mqtt5::Login::new(user.as_str(), password.expose()));
    c.write(&will, &login, buf)
        .map(drop)
        .map_err(|e| Error::Protocol(e.to_string()))
}

/// rumqttc's two `QoS` types are the same three values.
fn v5_qos(q: mqttbytes::QoS) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        mqttbytes::QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        mqttbytes::QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        mqttbytes::QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The sending half. Packets go into a buffer, which goes out on [`Writer::flush`] or by itself
/// once it holds `WRITE_CAP` bytes; the caller flushes when it has nothing more to send.
#[derive(Debug)]
pub struct Writer {
    sock: TcpStream,
    tls: Option<Tls>,
    buf: BytesMut,
    written: u64,
    /// MQTT 5: a PUBLISH carries properties.
    v5: bool,
    closer: Closer,
}

impl Writer {
    /// Adds a PUBLISH with no properties and no topic alias; see [`Writer::publish_with`].
    pub fn publish(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        dup: bool,
    ) -> io::Result<()> {
        self.publish_with(&Publish {
            pkid,
            topic,
            payload,
            qos,
            retain,
            dup,
            props: None,
            alias: Alias::None,
        })
    }

    /// Adds a PUBLISH. `pkid` is ignored at QoS 0 and must not be 0 otherwise; `dup` is for a
    /// publish sent again and is dropped at QoS 0 (MQTT 3.1.1 §3.3.1.1). At MQTT 5 the PUBLISH
    /// carries `props` and `alias`; at 3.1.1 they are ignored. The topic is not checked for
    /// wildcards (a broker closes the connection on one). A payload of `DIRECT_MIN` bytes or
    /// more is written from `payload` itself, after what was buffered. An `InvalidInput` error
    /// (a QoS over 2, a packet id 0, an empty or too long topic, alias 0) wrote nothing: the
    /// connection is still good.
    pub fn publish_with(&mut self, p: &Publish<'_>) -> io::Result<()> {
        let payload = p.payload;
        let v5 = self.v5.then_some((p.props, p.alias));
        publish_header(&mut self.buf, p, v5)?;
        if payload.len() >= DIRECT_MIN {
            self.flush()?;
            send(&mut self.sock, self.tls.as_deref(), payload)?;
            self.written += payload.len() as u64;
            return Ok(());
        }
        self.buf.extend_from_slice(payload);
        self.spill()
    }

    /// Adds a PUBREL, the answer to [`Incoming::PubRec`].
    pub fn pubrel(&mut self, pkid: u16) -> io::Result<()> {
        PubRel::new(pkid).write(&mut self.buf).map_err(encoding)?;
        self.spill()
    }

    /// Adds a SUBSCRIBE of `filters` at QoS 0 with packet id `pkid` (not 0); the broker's SUBACK
    /// is read as [`Incoming::Other`]. Subscriptions end with the connection: subscribe again
    /// on every new one.
    pub fn subscribe(&mut self, pkid: u16, filters: &[&str]) -> io::Result<()> {
        if self.v5 {
            let f = filters
                .iter()
                .map(|t| mqtt5::Filter::new(*t, rumqttc::v5::mqttbytes::QoS::AtMostOnce));
            let mut sub = mqtt5::Subscribe::new_many(f, None);
            sub.pkid = pkid;
            sub.write(&mut self.buf)
                .map_err(|e| invalid(e.to_string()))?;
        } else {
            let f = filters.iter().map(|t| {
                mqttbytes::v4::SubscribeFilter::new((*t).to_string(), mqttbytes::QoS::AtMostOnce)
            });
            let mut sub = mqttbytes::v4::Subscribe::new_many(f);
            sub.pkid = pkid;
            sub.write(&mut self.buf).map_err(encoding)?;
        }
        self.spill()
    }

    /// Adds a PINGREQ; the broker answers [`Incoming::PingResp`].
    pub fn ping(&mut self) -> io::Result<()> {
        PingReq.write(&mut self.buf).map_err(encoding)?;
        self.spill()
    }

    /// Sends what is buffered and a DISCONNECT (and TLS's close_notify): the broker drops the
    /// will and closes the connection, which the reader sees as [`Error::Closed`].
    pub fn disconnect(&mut self) -> io::Result<()> {
        Disconnect.write(&mut self.buf).map_err(encoding)?;
        self.flush()?;
        if let Some(tls) = &self.tls {
            let mut conn = lock(tls)?;
            conn.send_close_notify();
            write_records(&mut conn, &mut self.sock)?;
        }
        Ok(())
    }

    /// Writes out everything buffered; blocks while the socket does.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let sent = send(&mut self.sock, self.tls.as_deref(), &self.buf);
        if sent.is_ok() {
            self.written += self.buf.len() as u64;
        }
        // After a failed write the connection is unusable; nothing buffered will go anywhere.
        self.buf.clear();
        sent
    }

    /// MQTT bytes written to the socket (or to TLS) so far, CONNECT included.
    #[allow(dead_code)] // read by tests/mqtt_wire.rs; the agent counts messages, not bytes
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// MQTT bytes waiting for the next flush.
    #[allow(dead_code)] // read by tests/mqtt_wire.rs; the agent flushes when it will wait
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// A time limit for each socket write (none by default). A write that times out may have
    /// sent part of a packet: the connection is then unusable.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(timeout)
    }

    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    /// Writes the buffer out once it is big enough.
    fn spill(&mut self) -> io::Result<()> {
        if self.buf.len() >= WRITE_CAP {
            self.flush()
        } else {
            Ok(())
        }
    }
}

/// Appends a PUBLISH's fixed and variable header (MQTT 3.1.1 §3.3; with `v5`, its properties
/// and alias, MQTT 5 §3.3.2): what rumqttc's `Publish::write` (v4, or v5) writes before the
/// payload, byte for byte (the unit tests compare them). Writes nothing when it fails.
fn publish_header(
    buf: &mut BytesMut,
    p: &Publish<'_>,
    v5: Option<(Option<&Props>, Alias)>,
) -> io::Result<()> {
    let (qos, pkid) = (p.qos, p.pkid);
    if qos > 2 {
        return Err(invalid(format!("QoS {qos} is not 0, 1 or 2")));
    }
    if qos > 0 && pkid == 0 {
        return Err(invalid(format!("packet id 0 at QoS {qos}")));
    }
    let (props, alias) = v5.unwrap_or((None, Alias::None));
    let alias_id = match alias {
        Alias::None => None,
        Alias::Set(0) | Alias::Use(0) => return Err(invalid("topic alias 0".into())),
        Alias::Set(id) | Alias::Use(id) => Some(id),
    };
    let topic = if matches!(alias, Alias::Use(_)) {
        ""
    } else {
        p.topic
    };
    if topic.is_empty() && alias_id.is_none() {
        return Err(invalid("an empty topic".into()));
    }
    let topic_len = u16::try_from(topic.len())
        .map_err(|_| invalid(format!("a topic of {} bytes", topic.len())))?;
    let id_len = if qos > 0 { 2 } else { 0 };
    let props_len = props.map_or(0, |pr| pr.len(false)) + if alias_id.is_some() { 3 } else { 0 };
    let props_field = if v5.is_some() {
        varint_len(props_len) + props_len
    } else {
        0
    };
    let remaining = 2 + topic.len() + id_len + props_field + p.payload.len();
    if remaining > MAX_REMAINING {
        return Err(invalid(format!("a payload of {} bytes", p.payload.len())));
    }
    let dup = p.dup && qos > 0;
    buf.put_u8(0x30 | u8::from(dup) << 3 | qos << 1 | u8::from(p.retain));
    put_remaining_length(buf, remaining);
    buf.put_u16(topic_len);
    buf.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        buf.put_u16(pkid);
    }
    if v5.is_some() {
        put_properties(buf, props_len, props, alias_id);
    }
    Ok(())
}

/// An MQTT 5 PUBLISH's property length and properties, the alias between the block's head and
/// tail (rumqttc's order).
fn put_properties(buf: &mut BytesMut, len: usize, props: Option<&Props>, alias: Option<u16>) {
    put_remaining_length(buf, len);
    if let Some(pr) = props {
        buf.extend_from_slice(&pr.head);
    }
    if let Some(id) = alias {
        buf.put_u8(PROP_TOPIC_ALIAS);
        buf.put_u16(id);
    }
    if let Some(pr) = props {
        buf.extend_from_slice(&pr.tail);
    }
}

/// Bytes of a variable byte integer (MQTT 5 §1.5.5; the remaining length's encoding).
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The bytes a PUBLISH of `payload_len` bytes takes on the wire, whole, at MQTT 5 with `props`
/// and an alias (`alias`: the alias property is there; `topic_len`: 0 when only the alias is).
pub fn publish_size(
    topic_len: usize,
    qos: u8,
    props: Option<&Props>,
    alias: bool,
    payload_len: usize,
) -> usize {
    let props_len =
        props.map_or(0, |p| p.len(alias)) + if alias && props.is_none() { 3 } else { 0 };
    let remaining = 2
        + topic_len
        + if qos > 0 { 2 } else { 0 }
        + varint_len(props_len)
        + props_len
        + payload_len;
    1 + varint_len(remaining) + remaining
}

/// MQTT 3.1.1 §2.2.3: seven bits a byte, least significant first; `len` ≤ `MAX_REMAINING`.
#[inline]
fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

/// Writes `data` to the socket, through TLS when there is TLS.
fn send(
    sock: &mut TcpStream,
    tls: Option<&Mutex<ClientConnection>>,
    data: &[u8],
) -> io::Result<()> {
    let Some(tls) = tls else {
        return sock.write_all(data);
    };
    let mut conn = lock(tls)?;
    let mut rest = data;
    while !rest.is_empty() {
        // rustls takes as much plaintext as its buffer limit allows; the records go out before
        // the next part goes in.
        let took = conn.writer().write(rest)?;
        rest = &rest[took..];
        let out = write_records(&mut conn, sock)?;
        if took == 0 && out == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// Writes every TLS record the connection has to send; how many bytes.
fn write_records(conn: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<usize> {
    let mut total = 0;
    while conn.wants_write() {
        match conn.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// The receiving half.
#[derive(Debug)]
pub struct Reader {
    sock: TcpStream,
    tls: Option<Tls>,
    framer: Framer,
    chunk: Box<[u8]>,
    /// The broker closed its side (EOF or close_notify); what is framed is still handed out.
    eof: bool,
    closer: Closer,
}

impl Reader {
    /// Blocks until a whole packet has come. With a read timeout set, returns
    /// [`Error::Timeout`] when nothing came within it, so a thread can look at the time (and
    /// ping, or give up on a dead broker) and call again; a packet that was half read then is
    /// completed by the next call.
    pub fn next(&mut self) -> Result<Incoming, Error> {
        self.frame().map(|f| match f {
            Frame::In(i) => i,
            Frame::ConnAck(_) | Frame::Other(_) | Frame::Message(_) => Incoming::Other,
        })
    }

    /// Blocks until a whole packet has come, as [`Reader::next`]: a PUBLISH of a subscription
    /// is `Some`, anything else `None` (acknowledgements, SUBACK, PINGRESP).
    pub fn next_message(&mut self) -> Result<Option<Message>, Error> {
        self.frame().map(|f| match f {
            Frame::Message(m) => Some(m),
            _ => None,
        })
    }

    /// The limit of each wait for bytes in [`Reader::next`]; `None` (the default) waits for ever.
    /// Zero is refused (`std::net::TcpStream::set_read_timeout`).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }

    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    fn connack(&mut self) -> Result<ConnAck, Error> {
        let kind = match self.frame()? {
            Frame::ConnAck(a) => return Ok(a),
            Frame::In(Incoming::PubAck(..)) => 4,
            Frame::In(Incoming::PubRec(..)) => 5,
            Frame::In(Incoming::PubComp(_)) => 7,
            Frame::In(Incoming::PingResp) => 13,
            Frame::In(Incoming::Disconnect(_)) => 14,
            Frame::In(Incoming::Other) => 0,
            Frame::Message(_) => 3,
            Frame::Other(kind) => kind,
        };
        Err(Error::Protocol(format!(
            "{} where CONNACK was due",
            name(kind)
        )))
    }

    fn frame(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(f) = self.framer.frame()? {
                return Ok(f);
            }
            self.fill()?;
        }
    }

    /// One socket read, decrypted when there is TLS, into the framer. Whatever goes wrong after
    /// a `Closer` was used is [`Error::Closed`].
    fn fill(&mut self) -> Result<(), Error> {
        match self.fill_once() {
            Err(Error::Timeout) => Err(Error::Timeout),
            Err(_) if self.closer.closed() => Err(Error::Closed),
            other => other,
        }
    }

    fn fill_once(&mut self) -> Result<(), Error> {
        if self.eof {
            return Err(Error::Closed);
        }
        let n = loop {
            match self.sock.read(&mut self.chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            self.eof = true;
            return Err(Error::Closed);
        }
        let data = &self.chunk[..n];
        match &self.tls {
            None => self.framer.push(data),
            Some(tls) => {
                self.eof = decrypt(tls, &mut self.sock, data, &mut self.framer.buf)?;
            }
        }
        Ok(())
    }
}

/// Feeds `data` (TLS records from the socket) to the connection and appends the plaintext to
/// `out`; writes what the connection has to send in answer (alerts, key updates). Whether the
/// broker sent close_notify.
fn decrypt(
    tls: &Mutex<ClientConnection>,
    sock: &mut TcpStream,
    mut data: &[u8],
    out: &mut BytesMut,
) -> Result<bool, Error> {
    let mut conn = lock(tls)?;
    let mut closed = false;
    while !data.is_empty() {
        if conn.read_tls(&mut data)? == 0 {
            return Err(Error::Io(io::Error::other("rustls took no TLS data")));
        }
        let state = match conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                // rustls has queued an alert for the broker; it goes if it can.
                let _ = write_records(&mut conn, sock);
                return Err(Error::Tls(e));
            }
        };
        let k = state.plaintext_bytes_to_read();
        if k > 0 {
            let start = out.len();
            out.resize(start + k, 0);
            conn.reader().read_exact(&mut out[start..])?;
        }
        closed |= state.peer_has_closed();
    }
    write_records(&mut conn, sock)?;
    Ok(closed)
}

/// One whole packet from the broker, decoded as far as a publishing client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    /// A CONNACK that accepted the connection (a refusal is [`Error::Refused`]).
    ConnAck(ConnAck),
    In(Incoming),
    /// A PUBLISH (of a subscription).
    Message(Message),
    /// A packet of this type (the first byte's high four bits) that needs no answer.
    Other(u8),
}

/// Cuts whole packets out of the bytes received, with a fixed-header reader of its own: the
/// acknowledgements and PINGRESP are read here (keeping every MQTT 5 reason code, which rumqttc's
/// v5 `PubAck` does not), the rest with rumqttc's `Packet::read` (3.1.1) or `ConnAck::read` (5).
#[derive(Debug)]
struct Framer {
    buf: BytesMut,
    max: usize,
    version: MqttVersion,
}

impl Framer {
    fn new(max: usize, version: MqttVersion) -> Framer {
        Framer {
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
            version,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, or `None` until more bytes come.
    /// The acknowledgements and PINGRESP, what a publishing client reads most, are read here
    /// in both versions, straight from the buffer; the rest by the version's reader.
    fn frame(&mut self) -> Result<Option<Frame>, Error> {
        let Some((header_len, remaining)) = fixed_header(&self.buf)? else {
            return Ok(None);
        };
        if remaining > self.max {
            return Err(self.too_big(remaining));
        }
        let total = header_len + remaining;
        if self.buf.len() < total {
            return Ok(None);
        }
        let kind = self.buf[0] >> 4;
        let body = &self.buf[header_len..total];
        let reason = |at: usize| body.get(at).copied().unwrap_or(0);
        let pkid = || match body {
            [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(Error::Protocol(format!(
                "{} without a packet id",
                name(kind)
            ))),
        };
        let incoming = match kind {
            4 => Incoming::PubAck(pkid()?, reason(2)),
            5 => Incoming::PubRec(pkid()?, reason(2)),
            7 => Incoming::PubComp(pkid()?),
            13 => Incoming::PingResp,
            14 => Incoming::Disconnect(reason(0)),
            0 => return Err(Error::Protocol("packet type 0".into())),
            _ => {
                return match self.version {
                    MqttVersion::V311 => self.frame4(),
                    MqttVersion::V5 => self.frame5(header_len, remaining).map(Some),
                }
            }
        };
        self.buf.advance(total);
        Ok(Some(Frame::In(incoming)))
    }

    /// Any other 3.1.1 packet, whole in the buffer, with rumqttc's `Packet::read`.
    fn frame4(&mut self) -> Result<Option<Frame>, Error> {
        let p = match Packet::read(&mut self.buf, self.max) {
            Ok(p) => p,
            Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => return Err(self.too_big(n)),
            Err(mqttbytes::Error::InvalidConnectReturnCode(code)) => {
                return Err(Error::Refused(code))
            }
            Err(e) => return Err(Error::Protocol(e.to_string())),
        };
        Ok(Some(match p {
            Packet::ConnAck(a) if a.code == ConnectReturnCode::Success => Frame::ConnAck(ConnAck {
                session_present: a.session_present,
                ..ConnAck::default()
            }),
            Packet::ConnAck(a) => return Err(Error::Refused(a.code as u8)),
            Packet::Publish(p) => Frame::Message(Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
                retain: p.retain,
                response_topic: None,
                correlation: None,
            }),
            p => Frame::Other(kind4(&p)),
        }))
    }

    /// Any other MQTT 5 packet, whole in the buffer: a CONNACK is read; the rest needs no
    /// answer.
    fn frame5(&mut self, header_len: usize, remaining: usize) -> Result<Frame, Error> {
        let packet = self.buf.split_to(header_len + remaining);
        match packet[0] >> 4 {
            2 => Ok(Frame::ConnAck(connack5(
                packet.freeze(),
                header_len,
                remaining,
            )?)),
            3 => {
                let header = mqtt5::FixedHeader::new(packet[0], header_len - 1, remaining);
                let p = mqtt5::Publish::read(header, packet.freeze())
                    .map_err(|e| Error::Protocol(e.to_string()))?;
                let props = p.properties.unwrap_or_default();
                Ok(Frame::Message(Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                    retain: p.retain,
                    response_topic: props.response_topic,
                    correlation: props.correlation_data.map(|c| c.to_vec()),
                }))
            }
            kind => Ok(Frame::Other(kind)),
        }
    }

    fn too_big(&self, n: usize) -> Error {
        Error::Protocol(format!(
            "an incoming packet of {n} bytes, over the limit of {}",
            self.max
        ))
    }
}

/// The fixed header at the front of `buf`: its length and the remaining length; `None` until
/// it is all there.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, Error> {
    let mut remaining = 0usize;
    for i in 1..=4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Ok(Some((i + 1, remaining)));
        }
    }
    Err(Error::Protocol("a remaining length of five bytes".into()))
}

/// An MQTT 5 CONNACK, whole in `packet`: the broker's limits, or [`Error::Refused`] with its
/// reason code. A 3.1.1 CONNACK (two bytes: what a broker that does not speak MQTT 5 may answer)
/// is a refusal with its return code.
fn connack5(packet: bytes::Bytes, header_len: usize, remaining: usize) -> Result<ConnAck, Error> {
    let code = packet.get(header_len + 1).copied().unwrap_or(0);
    if code != 0 {
        return Err(Error::Refused(code));
    }
    if remaining < 3 {
        return Err(Error::Protocol(
            "an MQTT 3.1.1 CONNACK: the broker does not speak MQTT 5".into(),
        ));
    }
    let header = mqtt5::FixedHeader::new(packet[0], header_len - 1, remaining);
    let a = mqtt5::ConnAck::read(header, packet).map_err(|e| Error::Protocol(e.to_string()))?;
    let p = a.properties.unwrap_or_else(no_connack_properties);
    Ok(ConnAck {
        session_present: a.session_present,
        receive_max: p.receive_max,
        max_packet: p.max_packet_size,
        topic_alias_max: p.topic_alias_max,
        server_keep_alive: p.server_keep_alive,
        assigned_client_id: p.assigned_client_identifier,
        max_qos: p.max_qos,
        retain_available: p.retain_available.map(|r| r != 0),
    })
}

/// A CONNACK without properties says what one with none of them says.
fn no_connack_properties() -> mqtt5::ConnAckProperties {
    mqtt5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// The packet type of a 3.1.1 packet (the first byte's high four bits).
fn kind4(p: &Packet) -> u8 {
    match p {
        Packet::Connect(_) => 1,
        Packet::ConnAck(_) => 2,
        Packet::Publish(_) => 3,
        Packet::PubAck(_) => 4,
        Packet::PubRec(_) => 5,
        Packet::PubRel(_) => 6,
        Packet::PubComp(_) => 7,
        Packet::Subscribe(_) => 8,
        Packet::SubAck(_) => 9,
        Packet::Unsubscribe(_) => 10,
        Packet::UnsubAck(_) => 11,
        Packet::PingReq => 12,
        Packet::PingResp => 13,
        Packet::Disconnect => 14,
    }
}

/// A packet type's name, for messages (a packet's `Debug` could show a payload, or a CONNECT's
/// password).
fn name(kind: u8) -> &'static str {
    match kind {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "a packet of an unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{
        ConnAck as RawConnAck, PubAck, PubComp, PubRec, Publish as RawPublish,
    };
    use rumqttc::mqttbytes::QoS;

    fn publish<'a>(pkid: u16, topic: &'a str, payload: &'a [u8], qos: u8) -> Publish<'a> {
        Publish {
            pkid,
            topic,
            payload,
            qos,
            retain: false,
            dup: false,
            props: None,
            alias: Alias::None,
        }
    }

    fn header(pkid: u16, topic: &str, len: usize, qos: u8, retain: bool, dup: bool) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let payload = vec![0; len];
        let p = Publish {
            retain,
            dup,
            ..publish(pkid, topic, &payload, qos)
        };
        publish_header(&mut buf, &p, None).expect("valid publish");
        buf.to_vec()
    }

    #[test]
    fn publish_is_encoded_as_rumqttc_encodes_it() {
        let topic = "container-logd/host/web/log";
        // Remaining lengths on both sides of each size of the length field.
        let remaining = [40, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152];
        for qos in 0..=2u8 {
            let id_len = if qos > 0 { 2 } else { 0 };
            for &r in &remaining {
                let len = r - 2 - topic.len() - id_len;
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                for (retain, dup) in [(false, false), (true, false), (false, true), (true, true)] {
                    let dup = dup && qos > 0;
                    let mut ours = header(513, topic, len, qos, retain, dup);
                    ours.extend_from_slice(&payload);
                    let mut p =
                        RawPublish::new(topic, mqttbytes::qos(qos).expect("qos"), payload.clone());
                    p.pkid = if qos > 0 { 513 } else { 0 };
                    p.retain = retain;
                    p.dup = dup;
                    let mut theirs = BytesMut::new();
                    p.write(&mut theirs).expect("rumqttc encodes");
                    assert!(
                        ours == theirs[..],
                        "qos {qos} remaining {r} retain {retain} dup {dup}"
                    );
                }
            }
        }
    }

    #[test]
    fn dup_is_dropped_at_qos_0() {
        assert_eq!(header(0, "t", 0, 0, false, true)[0], 0x30);
        assert_eq!(header(1, "t", 0, 1, false, true)[0], 0x3a);
    }

    #[test]
    fn publish_refuses_what_mqtt_cannot_carry() {
        let mut buf = BytesMut::new();
        let long = "t".repeat(65_536);
        let huge = vec![0u8; MAX_REMAINING];
        let cases: [(Publish, bool); 8] = [
            (publish(1, "t", &[], 3), false),
            (publish(0, "t", &[], 1), false),
            (publish(1, "", &[], 1), false),
            (publish(1, &long, &[], 1), false),
            (publish(1, "t", &huge, 1), false),
            (publish(1, "", &[], 1), true),
            (
                Publish {
                    alias: Alias::Set(0),
                    ..publish(1, "t", &[], 1)
                },
                true,
            ),
            (
                Publish {
                    alias: Alias::Use(0),
                    ..publish(1, "t", &[], 1)
                },
                true,
            ),
        ];
        for (p, v5) in cases {
            let e = publish_header(&mut buf, &p, v5.then_some((p.props, p.alias)))
                .expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(buf.is_empty(), "nothing written for {e}");
        }
    }

    fn props() -> Props {
        let user = vec![
            ("host".to_string(), "pi-7".to_string()),
            ("appId".to_string(), "1001".to_string()),
            ("service".to_string(), "web".to_string()),
        ];
        Props::new("application/json", true, Some(3600), user).expect("props")
    }

    /// rumqttc's v5 encoding of a publish with the same properties and alias.
    fn rumqttc5(p: &Publish, props: Option<&Props>) -> Vec<u8> {
        let v5qos = rumqttc::v5::mqttbytes::qos(p.qos).expect("qos");
        let topic = if matches!(p.alias, Alias::Use(_)) {
            ""
        } else {
            p.topic
        };
        let properties = props.map(|pr| mqtt5::PublishProperties {
            payload_format_indicator: pr.utf8.then_some(1),
            message_expiry_interval: pr.expiry,
            topic_alias: match p.alias {
                Alias::None => None,
                Alias::Set(id) | Alias::Use(id) => Some(id),
            },
            response_topic: None,
            correlation_data: None,
            user_properties: pr.user.clone(),
            subscription_identifiers: Vec::new(),
            content_type: Some(pr.content_type.clone()),
        });
        let mut raw = mqtt5::Publish::new(topic, v5qos, p.payload.to_vec(), properties);
        raw.pkid = p.pkid;
        raw.retain = p.retain;
        raw.dup = p.dup;
        let mut b = BytesMut::new();
        raw.write(&mut b).expect("rumqttc encodes");
        b.to_vec()
    }

    #[test]
    fn a_v5_publish_is_encoded_as_rumqttc_encodes_it() {
        let pr = props();
        let topic = "container-logd/pi-7/1001/web/info";
        for len in [0, 40, 100, 16_300, 16_400, 2_097_100, 2_097_200] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for alias in [Alias::None, Alias::Set(7), Alias::Use(7)] {
                for (qos, pkid) in [(0, 0), (1, 513), (2, 65_535)] {
                    let p = Publish {
                        props: Some(&pr),
                        alias,
                        retain: qos == 2,
                        dup: qos == 1,
                        ..publish(pkid, topic, &payload, qos)
                    };
                    let mut ours = BytesMut::new();
                    publish_header(&mut ours, &p, Some((p.props, p.alias))).expect("valid");
                    let header_len = ours.len();
                    ours.extend_from_slice(&payload);
                    let theirs = rumqttc5(&p, Some(&pr));
                    assert!(ours == theirs[..], "len {len} alias {alias:?} qos {qos}");
                    let topic_len = if matches!(alias, Alias::Use(_)) {
                        0
                    } else {
                        topic.len()
                    };
                    let alias_on = alias != Alias::None;
                    assert_eq!(
                        publish_size(topic_len, qos, Some(&pr), alias_on, len),
                        ours.len(),
                        "the size computed ahead, {header_len} bytes of header"
                    );
                }
            }
        }
        // No properties at all: a property length of 0.
        let p = publish(9, "a/b", b"{}", 1);
        let mut ours = BytesMut::new();
        publish_header(&mut ours, &p, Some((None, Alias::None))).expect("valid");
        ours.extend_from_slice(b"{}");
        assert!(ours == rumqttc5(&p, None)[..]);
    }

    #[test]
    fn properties_refuse_strings_mqtt_cannot_carry() {
        let long = "x".repeat(65_536);
        assert!(Props::new(&long, true, None, Vec::new()).is_err());
        assert!(Props::new("a", true, None, vec![(long.clone(), "v".into())]).is_err());
        assert!(Props::new("a", true, None, vec![("k".into(), long)]).is_err());
        assert_eq!(Props::default().len(true), 3, "the alias alone");
    }

    /// What a broker sends a publishing client, as rumqttc encodes it, and what the reader makes
    /// of it.
    fn recorded() -> (Vec<u8>, Vec<Incoming>) {
        let mut b = BytesMut::new();
        let w = |r: Result<usize, mqttbytes::Error>| r.expect("encodes");
        w(RawConnAck::new(ConnectReturnCode::Success, true).write(&mut b));
        w(PubAck::new(1).write(&mut b));
        w(PubRec::new(2).write(&mut b));
        w(PubComp::new(3).write(&mut b));
        w(rumqttc::mqttbytes::v4::PingResp.write(&mut b));
        w(RawPublish::new("a/b", QoS::AtMostOnce, vec![7u8; 200]).write(&mut b));
        w(PubAck::new(65_535).write(&mut b));
        w(Disconnect.write(&mut b));
        w(PubAck::new(300).write(&mut b));
        let expected = vec![
            Incoming::Other,
            Incoming::PubAck(1, 0),
            Incoming::PubRec(2, 0),
            Incoming::PubComp(3),
            Incoming::PingResp,
            Incoming::Other,
            Incoming::PubAck(65_535, 0),
            Incoming::Disconnect(0),
            Incoming::PubAck(300, 0),
        ];
        (b.to_vec(), expected)
    }

    fn drain(f: &mut Framer, into: &mut Vec<Incoming>) {
        while let Some(frame) = f.frame().expect("valid packets") {
            into.push(match frame {
                Frame::In(i) => i,
                Frame::ConnAck(_) | Frame::Other(_) | Frame::Message(_) => Incoming::Other,
            });
        }
    }

    /// A PUBLISH of a subscription is read whole, with its MQTT 5 response topic and
    /// correlation data; a 3.1.1 one has neither.
    #[test]
    fn publishes_of_a_subscription_are_read() {
        let mut b = BytesMut::new();
        let props = mqtt5::PublishProperties {
            response_topic: Some("reply/1".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"c-7")),
            ..Default::default()
        };
        let mut p = mqtt5::Publish::new(
            "q/pi",
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            &b"{}"[..],
            Some(props),
        );
        p.retain = true;
        p.write(&mut b).expect("encodes");
        let mut f = Framer::new(1 << 16, MqttVersion::V5);
        f.push(&b);
        let Ok(Some(Frame::Message(m))) = f.frame() else {
            panic!("a message");
        };
        assert_eq!(
            (m.topic.as_str(), &m.payload[..], m.retain),
            ("q/pi", &b"{}"[..], true)
        );
        assert_eq!(m.response_topic.as_deref(), Some("reply/1"));
        assert_eq!(m.correlation.as_deref(), Some(&b"c-7"[..]));
        let mut b = BytesMut::new();
        mqttbytes::v4::Publish::new("q/pi", mqttbytes::QoS::AtMostOnce, &b"{}"[..])
            .write(&mut b)
            .expect("encodes");
        let mut f = Framer::new(1 << 16, MqttVersion::V311);
        f.push(&b);
        let Ok(Some(Frame::Message(m))) = f.frame() else {
            panic!("a message");
        };
        assert_eq!((m.topic.as_str(), m.response_topic), ("q/pi", None));
    }

    /// What an MQTT 5 broker sends a publishing client, as rumqttc encodes it (and the reason
    /// codes rumqttc's own PUBACK does not list, by hand), and what the reader makes of it.
    fn recorded5() -> (Vec<u8>, Vec<Incoming>) {
        let mut b = BytesMut::new();
        let w = |r: Result<usize, rumqttc::v5::mqttbytes::Error>| r.expect("encodes");
        let props = mqtt5::ConnAckProperties {
            receive_max: Some(20),
            topic_alias_max: Some(10),
            ..no_connack_properties()
        };
        w(mqtt5::ConnAck {
            session_present: false,
            code: mqtt5::ConnectReturnCode::Success,
            properties: Some(props),
        }
        .write(&mut b));
        w(mqtt5::PubAck::new(1, None).write(&mut b));
        let mut refused = mqtt5::PubAck::new(2, None);
        refused.reason = mqtt5::PubAckReason::NotAuthorized;
        refused.properties = Some(mqtt5::PubAckProperties {
            reason_string: Some("ACL".into()),
            user_properties: Vec::new(),
        });
        w(refused.write(&mut b));
        b.extend_from_slice(&[0x40, 0x03, 0x00, 0x03, 0x89]); // server busy, no properties
        b.extend_from_slice(&[0x50, 0x04, 0x00, 0x04, 0x97, 0x00]); // PUBREC, quota exceeded
        w(mqtt5::PubRec::new(5, None).write(&mut b));
        w(mqtt5::PubComp::new(6, None).write(&mut b));
        w(mqtt5::PingResp::write(&mut b));
        let publish = mqtt5::Publish::new(
            "a/b",
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            vec![7u8; 200],
            None,
        );
        w(publish.write(&mut b));
        b.extend_from_slice(&[0xe0, 0x01, 0x95]); // DISCONNECT, packet too large
        b.extend_from_slice(&[0xe0, 0x00]); // DISCONNECT, normal
        let expected = vec![
            Incoming::Other,
            Incoming::PubAck(1, 0),
            Incoming::PubAck(2, 0x87),
            Incoming::PubAck(3, 0x89),
            Incoming::PubRec(4, 0x97),
            Incoming::PubRec(5, 0),
            Incoming::PubComp(6),
            Incoming::PingResp,
            Incoming::Other,
            Incoming::Disconnect(0x95),
            Incoming::Disconnect(0),
        ];
        (b.to_vec(), expected)
    }

    #[test]
    fn framing_holds_at_every_split() {
        for (version, (bytes, expected)) in [
            (MqttVersion::V311, recorded()),
            (MqttVersion::V5, recorded5()),
        ] {
            for at in 0..=bytes.len() {
                let mut f = Framer::new(1024, version);
                let mut got = Vec::new();
                f.push(&bytes[..at]);
                drain(&mut f, &mut got);
                f.push(&bytes[at..]);
                drain(&mut f, &mut got);
                assert_eq!(got, expected, "{version:?} split at {at}");
                assert!(f.buf.is_empty());
            }
        }
    }

    #[test]
    fn framing_holds_byte_by_byte() {
        for (version, (bytes, expected)) in [
            (MqttVersion::V311, recorded()),
            (MqttVersion::V5, recorded5()),
        ] {
            let mut f = Framer::new(1024, version);
            let mut got = Vec::new();
            for b in bytes {
                f.push(&[b]);
                drain(&mut f, &mut got);
            }
            assert_eq!(got, expected, "{version:?}");
        }
    }

    #[test]
    fn an_oversized_packet_is_refused_from_its_header() {
        for version in [MqttVersion::V311, MqttVersion::V5] {
            let mut f = Framer::new(100, version);
            // A PUBLISH announcing 101 bytes: refused before they come.
            f.push(&[0x30, 101]);
            assert!(matches!(f.frame(), Err(Error::Protocol(m)) if m.contains("101")));
            // Exactly the limit is fine, once it is all there.
            let mut f = Framer::new(100, version);
            let mut b = BytesMut::new();
            RawPublish::new("t", QoS::AtMostOnce, vec![1u8; 97])
                .write(&mut b)
                .expect("encodes");
            f.push(&b[..50]);
            assert!(matches!(f.frame(), Ok(None)));
            f.push(&b[50..]);
            assert!(matches!(f.frame(), Ok(Some(Frame::Message(_)))));
        }
    }

    #[test]
    fn malformed_input_is_a_protocol_error() {
        let cases: [&[u8]; 3] = [
            &[0x40, 0xff, 0xff, 0xff, 0xff, 0x01], // a remaining length of five bytes
            &[0x40, 0x00],                         // PUBACK without its packet id
            &[0x00, 0x00],                         // packet type 0
        ];
        for version in [MqttVersion::V311, MqttVersion::V5] {
            for bytes in cases {
                let mut f = Framer::new(1 << 20, version);
                f.push(bytes);
                assert!(
                    matches!(f.frame(), Err(Error::Protocol(_))),
                    "{version:?} {bytes:?}"
                );
            }
            let mut f = Framer::new(1 << 20, version);
            f.push(&[0x20, 0x02, 0x00, 0x09]);
            assert!(matches!(f.frame(), Err(Error::Refused(9))), "{version:?}");
        }
    }

    #[test]
    fn a_v5_connack_gives_the_limits_or_the_reason_code() {
        let mut b = BytesMut::new();
        let props = mqtt5::ConnAckProperties {
            receive_max: Some(7),
            max_packet_size: Some(4096),
            topic_alias_max: Some(10),
            server_keep_alive: Some(20),
            assigned_client_identifier: Some("auto-1234".into()),
            max_qos: Some(1),
            retain_available: Some(0),
            ..no_connack_properties()
        };
        mqtt5::ConnAck {
            session_present: true,
            code: mqtt5::ConnectReturnCode::Success,
            properties: Some(props),
        }
        .write(&mut b)
        .expect("encodes");
        let mut f = Framer::new(1024, MqttVersion::V5);
        f.push(&b);
        let want = ConnAck {
            session_present: true,
            receive_max: Some(7),
            max_packet: Some(4096),
            topic_alias_max: Some(10),
            server_keep_alive: Some(20),
            assigned_client_id: Some("auto-1234".into()),
            max_qos: Some(1),
            retain_available: Some(false),
        };
        assert_eq!(f.frame().expect("valid"), Some(Frame::ConnAck(want)));
        // Refused: bad user name or password; a 3.1.1 answer from a broker without MQTT 5.
        let cases: [(&[u8], u8); 2] = [
            (&[0x20, 0x03, 0x00, 0x86, 0x00], 0x86),
            (&[0x20, 0x02, 0x00, 0x01], 1),
        ];
        for (bytes, code) in cases {
            let mut f = Framer::new(1024, MqttVersion::V5);
            f.push(bytes);
            assert!(
                matches!(f.frame(), Err(Error::Refused(c)) if c == code),
                "{bytes:?}"
            );
        }
        let mut f = Framer::new(1024, MqttVersion::V5);
        f.push(&[0x20, 0x02, 0x00, 0x00]);
        assert!(matches!(f.frame(), Err(Error::Protocol(m)) if m.contains("MQTT 5")));
    }

    fn options() -> Options {
        Options {
            host: "broker.example".into(),
            port: 8883,
            version: MqttVersion::V311,
            client_id: "pi-7".into(),
            keep_alive: Duration::from_secs(100_000),
            clean_session: false,
            credentials: Some(("logd".into(), Secret::new("hunter2-pw".into()))),
            will: Some(Will {
                topic: "status/pi-7".into(),
                payload: b"offline".to_vec(),
                qos: 1,
                retain: true,
                props: Some(props()),
            }),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            max_incoming_packet: 64,
        }
    }

    #[test]
    fn connect_carries_login_will_and_keep_alive() {
        let mut b = BytesMut::new();
        connect_packet(&options(), &mut b).expect("valid");
        let Ok(Packet::Connect(c)) = Packet::read(&mut b, 1 << 20) else {
            panic!("not a CONNECT");
        };
        assert_eq!(c.client_id, "pi-7");
        assert_eq!(c.keep_alive, u16::MAX, "clamped");
        assert!(!c.clean_session);
        let will = c.last_will.expect("will");
        assert_eq!(
            (will.topic.as_str(), &will.message[..]),
            ("status/pi-7", &b"offline"[..])
        );
        assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
        let login = c.login.expect("login");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("logd", "hunter2-pw")
        );

        let mut o = options();
        if let Some(w) = o.will.as_mut() {
            w.qos = 3;
        }
        assert!(matches!(
            connect_packet(&o, &mut BytesMut::new()),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn a_v5_connect_carries_the_same_and_its_properties() {
        let o = Options {
            version: MqttVersion::V5,
            ..options()
        };
        let mut b = BytesMut::new();
        connect_packet(&o, &mut b).expect("valid");
        let Ok(mqtt5::Packet::Connect(c, will, login)) = mqtt5::Packet::read(&mut b, None) else {
            panic!("not an MQTT 5 CONNECT");
        };
        assert_eq!((c.client_id.as_str(), c.keep_alive), ("pi-7", u16::MAX));
        assert!(!c.clean_start);
        let props = c.properties.expect("properties");
        assert_eq!(
            props.max_packet_size,
            Some(64 + 5),
            "the largest packet we take"
        );
        assert_eq!(
            (props.topic_alias_max, props.session_expiry_interval),
            (None, None)
        );
        let will = will.expect("will");
        assert_eq!(
            (&will.topic[..], &will.message[..]),
            (&b"status/pi-7"[..], &b"offline"[..])
        );
        let wp = will.properties.expect("will properties");
        assert_eq!(wp.content_type.as_deref(), Some("application/json"));
        assert_eq!(wp.payload_format_indicator, Some(1));
        assert_eq!(
            wp.user_properties[0],
            ("host".to_string(), "pi-7".to_string())
        );
        let login = login.expect("login");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("logd", "hunter2-pw")
        );
    }

    #[test]
    fn the_password_never_shows() {
        let text = format!("{:?}", options());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("logd"));
    }

    #[test]
    fn errors_say_what_to_do() {
        let refused = Error::Refused(4).to_string();
        assert!(refused.contains("bad user name or password"), "{refused}");
        assert!(Error::Refused(5).to_string().contains("not authorized"));
        assert!(Error::Refused(0x87).to_string().contains("not authorized"));
        assert!(Error::Refused(0x86)
            .to_string()
            .contains("bad user name or password"));
        let gone = Error::Disconnected(0x95).to_string();
        assert!(
            gone.contains("packet too large") && gone.contains("0x95"),
            "{gone}"
        );
        let timeout: Error = io::Error::from(io::ErrorKind::WouldBlock).into();
        assert!(matches!(timeout, Error::Timeout));
        let tls: Error =
            io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError).into();
        assert!(matches!(tls, Error::Tls(rustls::Error::DecryptError)));
    }
}
