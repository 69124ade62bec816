//! The MQTT 3.1.1 wire, blocking: one broker connection over a `std::net::TcpStream`, plain or
//! rustls, split into a [`Writer`] for one thread and a [`Reader`] for another, and a
//! [`Closer`] with which any thread ends both. Packets are rumqttc's own codecs
//! (`rumqttc::mqttbytes::v4`), except PUBLISH, which is encoded here straight into the write
//! buffer: rumqttc's `Publish` would cost a topic `String`, a payload `Bytes` (a copy of the
//! payload, or the caller's `Vec` given away) and then a second copy into the buffer, per message.
//!
//! This module owns bytes and sockets and nothing else: no session (packet ids, the window,
//! retries, when to ping and the spool are the caller's), no thread, no async runtime. It never
//! logs, never puts the password in a `Debug` or `Display`, and never turns certificate
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

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes;
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Disconnect, LastWill, Login, Packet, PingReq, PubRel,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::config::Secret;

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
}

/// How to reach a broker and log in. `Debug` shows the password as `***`.
#[derive(Debug, Clone)]
pub struct Options {
    /// A host name or an IP literal; also the TLS server name.
    pub host: String,
    pub port: u16,
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
    /// A client that subscribes to nothing receives 2 to 4 bytes.
    pub max_incoming_packet: usize,
}

/// A successful CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// The broker kept a session for this client id (never with a clean session).
    pub session_present: bool,
}

/// A packet from the broker, reduced to what a publishing client acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// QoS 1 publish `pkid` is delivered.
    PubAck(u16),
    /// QoS 2 publish `pkid` is received; answer with [`Writer::pubrel`].
    PubRec(u16),
    /// QoS 2 publish `pkid` is delivered.
    PubComp(u16),
    PingResp,
    /// Not sent by MQTT 3.1.1 brokers; passed on if one does.
    Disconnect,
    /// Anything else (a PUBLISH, a SUBACK…): nothing this layer has to answer.
    Other,
}

/// Why a connection could not be made or went away.
#[derive(Debug)]
pub enum Error {
    /// The host could not be resolved or reached, or the socket failed.
    Io(io::Error),
    /// TLS failed: the handshake (an unknown CA, a name mismatch) or a record later.
    Tls(rustls::Error),
    /// The broker refused the connection with this CONNACK return code (MQTT 3.1.1 §3.2.2.3).
    Refused(u8),
    /// Not MQTT 3.1.1 as spoken here: a malformed or oversized packet from the broker, or a value
    /// of ours that MQTT cannot carry.
    Protocol(String),
    /// The connection ended: the broker closed it (EOF or TLS close_notify), or a [`Closer`] did.
    Closed,
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

/// What a CONNACK return code means, in the words of MQTT 3.1.1 §3.2.2.3.
fn refusal(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "a return code MQTT 3.1.1 does not define",
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
        closer: closer.clone(),
    };
    let mut reader = Reader {
        sock,
        tls,
        framer: Framer::new(o.max_incoming_packet),
        chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        eof: false,
        closer,
    };
    connect_packet(o)?
        .write(&mut writer.buf)
        .map_err(|e| Error::Protocol(e.to_string()))?;
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

/// CONNECT for `o`.
fn connect_packet(o: &Options) -> Result<Connect, Error> {
    let mut c = Connect::new(o.client_id.as_str());
    c.keep_alive = u16::try_from(o.keep_alive.as_secs()).unwrap_or(u16::MAX);
    c.clean_session = o.clean_session;
    if let Some(w) = &o.will {
        let qos = mqttbytes::qos(w.qos)
            .map_err(|_| Error::Protocol(format!("will QoS {} is not 0, 1 or 2", w.qos)))?;
        c.last_will = Some(LastWill::new(
            w.topic.as_str(),
            w.payload.clone(),
            qos,
            w.retain,
        ));
    }
    if let Some((user, password)) = &o.credentials {
        c.login = Some(Login::new(user.as_str(), password.expose()));
    }
    Ok(c)
}

/// The sending half. Packets go into a buffer, which goes out on [`Writer::flush`] or by itself
/// once it holds `WRITE_CAP` bytes; the caller flushes when it has nothing more to send.
#[derive(Debug)]
pub struct Writer {
    sock: TcpStream,
    tls: Option<Tls>,
    buf: BytesMut,
    written: u64,
    closer: Closer,
}

impl Writer {
    /// Adds a PUBLISH. `pkid` is ignored at QoS 0 and must not be 0 otherwise; `dup` is for a
    /// publish sent again and is dropped at QoS 0 (MQTT 3.1.1 §3.3.1.1). The topic is not checked
    /// for wildcards (a broker closes the connection on one). A payload of `DIRECT_MIN` bytes or
    /// more is written from `payload` itself, after what was buffered. An `InvalidInput` error
    /// (a QoS over 2, a packet id 0, an empty or too long topic) wrote nothing: the connection is
    /// still good.
    pub fn publish(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        dup: bool,
    ) -> io::Result<()> {
        let flags = PublishFlags { qos, retain, dup };
        publish_header(&mut self.buf, pkid, topic, payload.len(), flags)?;
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

/// The flags of a PUBLISH's first byte.
#[derive(Debug, Clone, Copy)]
struct PublishFlags {
    qos: u8,
    retain: bool,
    dup: bool,
}

/// Appends a PUBLISH's fixed and variable header for a payload of `payload_len` bytes (MQTT 3.1.1
/// §3.3): what rumqttc's `Publish::write` writes before the payload, byte for byte (the unit
/// tests compare them).
fn publish_header(
    buf: &mut BytesMut,
    pkid: u16,
    topic: &str,
    payload_len: usize,
    f: PublishFlags,
) -> io::Result<()> {
    if f.qos > 2 {
        return Err(invalid(format!("QoS {} is not 0, 1 or 2", f.qos)));
    }
    if f.qos > 0 && pkid == 0 {
        return Err(invalid(format!("packet id 0 at QoS {}", f.qos)));
    }
    if topic.is_empty() {
        return Err(invalid("an empty topic".into()));
    }
    let topic_len = u16::try_from(topic.len())
        .map_err(|_| invalid(format!("a topic of {} bytes", topic.len())))?;
    let id_len = if f.qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + id_len + payload_len;
    if remaining > MAX_REMAINING {
        return Err(invalid(format!("a payload of {payload_len} bytes")));
    }
    let dup = f.dup && f.qos > 0;
    buf.put_u8(0x30 | u8::from(dup) << 3 | f.qos << 1 | u8::from(f.retain));
    put_remaining_length(buf, remaining);
    buf.put_u16(topic_len);
    buf.extend_from_slice(topic.as_bytes());
    if f.qos > 0 {
        buf.put_u16(pkid);
    }
    Ok(())
}

/// MQTT 3.1.1 §2.2.3: seven bits a byte, least significant first; `len` ≤ `MAX_REMAINING`.
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
        self.packet().map(Incoming::from)
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
        match self.packet()? {
            Packet::ConnAck(a) if a.code == ConnectReturnCode::Success => Ok(ConnAck {
                session_present: a.session_present,
            }),
            Packet::ConnAck(a) => Err(Error::Refused(a.code as u8)),
            p => Err(Error::Protocol(format!(
                "{} where CONNACK was due",
                name(&p)
            ))),
        }
    }

    fn packet(&mut self) -> Result<Packet, Error> {
        loop {
            if let Some(p) = self.framer.packet()? {
                return Ok(p);
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

/// Cuts whole packets out of the bytes received, with rumqttc's `Packet::read`.
#[derive(Debug)]
struct Framer {
    buf: BytesMut,
    max: usize,
}

impl Framer {
    fn new(max: usize) -> Framer {
        Framer {
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, or `None` until more bytes come.
    fn packet(&mut self) -> Result<Option<Packet>, Error> {
        match Packet::read(&mut self.buf, self.max) {
            Ok(p) => Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => Err(Error::Protocol(format!(
                "an incoming packet of {n} bytes, over the limit of {}",
                self.max
            ))),
            Err(mqttbytes::Error::InvalidConnectReturnCode(code)) => Err(Error::Refused(code)),
            Err(e) => Err(Error::Protocol(e.to_string())),
        }
    }
}

impl From<Packet> for Incoming {
    fn from(p: Packet) -> Incoming {
        match p {
            Packet::PubAck(a) => Incoming::PubAck(a.pkid),
            Packet::PubRec(r) => Incoming::PubRec(r.pkid),
            Packet::PubComp(c) => Incoming::PubComp(c.pkid),
            Packet::PingResp => Incoming::PingResp,
            Packet::Disconnect => Incoming::Disconnect,
            _ => Incoming::Other,
        }
    }
}

/// A packet's type, for messages (its `Debug` could show a payload, or a CONNECT's password).
fn name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{ConnAck as RawConnAck, PubAck, PubComp, PubRec, Publish};
    use rumqttc::mqttbytes::QoS;

    fn header(pkid: u16, topic: &str, len: usize, qos: u8, retain: bool, dup: bool) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let f = PublishFlags { qos, retain, dup };
        publish_header(&mut buf, pkid, topic, len, f).expect("valid publish");
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
                        Publish::new(topic, mqttbytes::qos(qos).expect("qos"), payload.clone());
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
        let f = |qos| PublishFlags {
            qos,
            retain: false,
            dup: false,
        };
        let mut buf = BytesMut::new();
        let long = "t".repeat(65_536);
        let cases: [(u16, &str, usize, u8); 5] = [
            (1, "t", 0, 3),
            (0, "t", 0, 1),
            (1, "", 0, 1),
            (1, &long, 0, 1),
            (1, "t", MAX_REMAINING, 1),
        ];
        for (pkid, topic, len, qos) in cases {
            let e = publish_header(&mut buf, pkid, topic, len, f(qos)).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(buf.is_empty(), "nothing written for {e}");
        }
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
        w(Publish::new("a/b", QoS::AtMostOnce, vec![7u8; 200]).write(&mut b));
        w(PubAck::new(65_535).write(&mut b));
        w(Disconnect.write(&mut b));
        w(PubAck::new(300).write(&mut b));
        let expected = vec![
            Incoming::Other,
            Incoming::PubAck(1),
            Incoming::PubRec(2),
            Incoming::PubComp(3),
            Incoming::PingResp,
            Incoming::Other,
            Incoming::PubAck(65_535),
            Incoming::Disconnect,
            Incoming::PubAck(300),
        ];
        (b.to_vec(), expected)
    }

    fn drain(f: &mut Framer, into: &mut Vec<Incoming>) {
        while let Some(p) = f.packet().expect("valid packets") {
            into.push(p.into());
        }
    }

    #[test]
    fn framing_holds_at_every_split() {
        let (bytes, expected) = recorded();
        for at in 0..=bytes.len() {
            let mut f = Framer::new(1024);
            let mut got = Vec::new();
            f.push(&bytes[..at]);
            drain(&mut f, &mut got);
            f.push(&bytes[at..]);
            drain(&mut f, &mut got);
            assert_eq!(got, expected, "split at {at}");
            assert!(f.buf.is_empty());
        }
    }

    #[test]
    fn framing_holds_byte_by_byte() {
        let (bytes, expected) = recorded();
        let mut f = Framer::new(1024);
        let mut got = Vec::new();
        for b in bytes {
            f.push(&[b]);
            drain(&mut f, &mut got);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn an_oversized_packet_is_refused_from_its_header() {
        let mut f = Framer::new(100);
        // A PUBLISH announcing 101 bytes: refused before they come.
        f.push(&[0x30, 101]);
        assert!(matches!(f.packet(), Err(Error::Protocol(m)) if m.contains("101")));
        // Exactly the limit is fine, once it is all there.
        let mut f = Framer::new(100);
        let mut b = BytesMut::new();
        Publish::new("t", QoS::AtMostOnce, vec![1u8; 97])
            .write(&mut b)
            .expect("encodes");
        f.push(&b[..50]);
        assert!(matches!(f.packet(), Ok(None)));
        f.push(&b[50..]);
        assert!(matches!(f.packet(), Ok(Some(Packet::Publish(_)))));
    }

    #[test]
    fn malformed_input_is_a_protocol_error() {
        let cases: [&[u8]; 3] = [
            &[0x40, 0xff, 0xff, 0xff, 0xff, 0x01], // a remaining length of five bytes
            &[0x40, 0x00],                         // PUBACK without its packet id
            &[0x00, 0x00],                         // packet type 0
        ];
        for bytes in cases {
            let mut f = Framer::new(1 << 20);
            f.push(bytes);
            assert!(matches!(f.packet(), Err(Error::Protocol(_))), "{bytes:?}");
        }
        let mut f = Framer::new(1 << 20);
        f.push(&[0x20, 0x02, 0x00, 0x09]);
        assert!(matches!(f.packet(), Err(Error::Refused(9))));
    }

    fn options() -> Options {
        Options {
            host: "broker.example".into(),
            port: 8883,
            client_id: "pi-7".into(),
            keep_alive: Duration::from_secs(100_000),
            clean_session: false,
            credentials: Some(("logd".into(), Secret::new("hunter2-pw".into()))),
            will: Some(Will {
                topic: "status/pi-7".into(),
                payload: b"offline".to_vec(),
                qos: 1,
                retain: true,
            }),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            max_incoming_packet: 64,
        }
    }

    #[test]
    fn connect_carries_login_will_and_keep_alive() {
        let mut b = BytesMut::new();
        connect_packet(&options())
            .expect("valid")
            .write(&mut b)
            .expect("encodes");
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
        assert!(matches!(connect_packet(&o), Err(Error::Protocol(_))));
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
        let timeout: Error = io::Error::from(io::ErrorKind::WouldBlock).into();
        assert!(matches!(timeout, Error::Timeout));
        let tls: Error =
            io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError).into();
        assert!(matches!(tls, Error::Tls(rustls::Error::DecryptError)));
    }
}
