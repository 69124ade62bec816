//! The socket under the HTTP: a unix or TCP stream behind one small enum, how to reach it
//! (parsed from `DOCKER_HOST`), a [`Closer`] another thread can use to end a stream at once,
//! and a buffered reader that gets a response head and then the body bytes.
//!
//! This is the only engine file that does I/O; the protocol itself lives in the parsers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::http::{parse_head, Head, MAX_HEAD_BYTES};
use super::Error;

/// The read buffer of a busy connection; reused for every read. One per followed container, so
/// it is small: 16 KiB is 160 lines of 100 bytes per read.
pub const BUF_BYTES: usize = 16 * 1024;
/// What a connection starts with: a quiet container's reader never needs more (a log stream's
/// response head is about 200 bytes, a quiet container's read a line or two). A read that fills
/// the buffer doubles it, up to [`BUF_BYTES`], so a stream whose reads hover about one size
/// settles there (the events stream: an event is about 1 KiB); a response head that fills it
/// doubles it too (up to `MAX_HEAD_BYTES`).
const START_BYTES: usize = 512;
/// A grown buffer is halved after this many reads in a row that would have fitted in a quarter
/// of it: a container that printed a backlog or a burst and then only a line now and then is
/// back at [`START_BYTES`] after 40 reads, and keeps no more than one that was always quiet; a
/// busy stream that now and then catches up with the engine stays between 8 and 16 KiB. (One
/// that falls silent right after its burst keeps its buffer until it prints again.)
const SHRINK_AFTER: u8 = 8;

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl Addr {
    /// Parses `DOCKER_HOST`: `unix:///path`, or `tcp://host[:port]` with an optional trailing
    /// `/` (port 2375 when left out, as the docker CLI does; an IPv6 host in brackets). This is
    /// the variable's only parser: the configuration checks the value with it, so an engine
    /// built from a `Config` never meets a bad one. On failure, says what is wrong.
    pub fn parse(docker_host: &str) -> Result<Addr, &'static str> {
        if let Some(path) = docker_host.strip_prefix("unix://") {
            if path.is_empty() {
                return Err("no socket path");
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        let Some(rest) = docker_host.strip_prefix("tcp://") else {
            return Err("only unix:// and tcp:// are supported");
        };
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        if hostport.contains(['/', '?', '#', '@']) {
            return Err("nothing may follow host:port, and no user may precede it");
        }
        let (host, port) = split_host_port(hostport)?;
        let port = match port {
            None => 2375,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err("the port must be a number from 1 to 65535"),
            },
        };
        Ok(Addr::Tcp(format!("{host}:{port}")))
    }
}

/// Splits `host[:port]` and checks the host: a name or IPv4 address of letters, digits, `-`,
/// `.` and `_`, or an IPv6 address in brackets.
fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), &'static str> {
    if let Some(inner) = hostport.strip_prefix('[') {
        let Some((ip, after)) = inner.split_once(']') else {
            return Err("an IPv6 address needs its closing ]");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not an IPv6 address in the brackets");
        }
        let host = &hostport[..ip.len() + 2];
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("expected [ipv6]:port"),
            },
        };
    }
    if hostport.matches(':').count() > 1 {
        return Err("an IPv6 address goes in brackets, e.g. tcp://[::1]:2375");
    }
    let (host, port) = match hostport.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    };
    if host.is_empty() {
        return Err("no host");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("the host may hold only letters, digits, -, . and _");
    }
    Ok((host, port))
}

/// A connected socket.
#[derive(Debug)]
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    /// Connects, giving up on TCP after `timeout` (a unix socket connects or fails at once).
    pub fn connect(addr: &Addr, timeout: Duration) -> io::Result<Conn> {
        match addr {
            Addr::Unix(path) => Ok(Conn::Unix(UnixStream::connect(path)?)),
            Addr::Tcp(hostport) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
                for sa in hostport.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, timeout) {
                        Ok(s) => {
                            // Requests are small and latency matters more than packet count.
                            s.set_nodelay(true)?;
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(d),
            Conn::Tcp(s) => s.set_read_timeout(d),
        }
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(d),
            Conn::Tcp(s) => s.set_write_timeout(d),
        }
    }

    pub fn shutdown(&self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// Ends a stream from another thread: shuts the socket down both ways, so a blocked read
/// returns at once.
#[derive(Debug, Clone)]
pub struct Closer {
    conn: Arc<Conn>,
}

impl Closer {
    pub fn close(&self) {
        // A socket already closed by the peer reports an error here; it is closed either way.
        if let Err(e) = self.conn.shutdown() {
            log::debug!("shutting down the engine socket: {e}");
        }
    }
}

/// A connection with its read buffer, for reading one response.
pub struct Reader {
    conn: Conn,
    closer: Closer,
    buf: Vec<u8>,
    /// Body bytes already read along with the head, at the start of `buf`.
    leftover: usize,
    /// The read timeout currently set on the socket, so it is only changed when it changes.
    timeout: Option<Duration>,
    /// Small reads in a row while the buffer is grown ([`SHRINK_AFTER`]).
    small_reads: u8,
}

impl Reader {
    /// Sends `request` on `conn` and reads the response head, waiting at most `timeout` for
    /// each read.
    pub fn send(
        mut conn: Conn,
        request: &[u8],
        timeout: Duration,
    ) -> Result<(Reader, Head), Error> {
        conn.set_write_timeout(Some(timeout))?;
        conn.set_read_timeout(Some(timeout))?;
        conn.write_all(request)?;
        let closer = Closer {
            conn: Arc::new(conn.try_clone()?),
        };
        let mut reader = Reader {
            conn,
            closer,
            buf: vec![0; START_BYTES],
            leftover: 0,
            timeout: Some(timeout),
            small_reads: 0,
        };
        let mut end = 0;
        loop {
            if end == reader.buf.len() {
                if end > MAX_HEAD_BYTES {
                    return Err(Error::Protocol("response head too large".into()));
                }
                reader.buf.resize((2 * end).min(MAX_HEAD_BYTES + 1), 0);
            }
            let n = match reader.conn.read(&mut reader.buf[end..]) {
                Ok(0) => {
                    return Err(Error::Protocol(
                        "connection closed before the response head".into(),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            end += n;
            if let Some((head, used)) = parse_head(&reader.buf[..end])? {
                reader.buf.copy_within(used..end, 0);
                reader.leftover = end - used;
                return Ok((reader, head));
            }
        }
    }

    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    /// How many bytes the next read can take at most, or `None` when it gives the body bytes
    /// that came with the head (they need no read).
    pub fn room(&self) -> Option<usize> {
        (self.leftover == 0).then_some(self.buf.len())
    }

    /// Sets the socket's read timeout if it differs from the one set.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.timeout != timeout {
            self.conn.set_read_timeout(timeout)?;
            self.timeout = timeout;
        }
        Ok(())
    }

    /// Reads the next bytes (those left over from the head first); returns them, empty at EOF.
    pub fn read(&mut self) -> io::Result<&[u8]> {
        let n = if self.leftover > 0 {
            std::mem::take(&mut self.leftover)
        } else {
            loop {
                match self.conn.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            }
        };
        if n == self.buf.len() && n < BUF_BYTES {
            // A busy stream: more of its bytes are likely waiting.
            self.buf.resize((2 * n).min(BUF_BYTES), 0);
            self.small_reads = 0;
        } else if self.buf.len() > START_BYTES {
            self.small_reads = if n <= self.buf.len() / 4 {
                self.small_reads + 1
            } else {
                0
            };
            if self.small_reads == SHRINK_AFTER {
                // The bytes just read are within what is kept.
                self.buf.truncate((self.buf.len() / 2).max(START_BYTES));
                self.buf.shrink_to_fit();
                self.small_reads = 0;
            }
        }
        Ok(&self.buf[..n])
    }
}

/// True for the error a read gives when its timeout passes.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy stream's buffer doubles up to `BUF_BYTES`; once the stream has gone quiet it is
    /// halved every `SHRINK_AFTER` reads, back to `START_BYTES`, and it grows again with the
    /// next burst. Reads of about one size keep the buffer at the size that holds them.
    #[test]
    fn the_read_buffer_grows_with_a_burst_and_shrinks_when_quiet() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        let (mut reader, _) = Reader::send(Conn::Unix(ours), b"", Duration::from_secs(5)).unwrap();
        assert_eq!(reader.buf.len(), START_BYTES);
        // Reads of 0.5, 1, 2, 4, 8 and 16 KiB, the last one full.
        let burst = vec![b'x'; 63 * START_BYTES];
        let mut read = |theirs: &mut UnixStream, bytes: &[u8]| {
            theirs.write_all(bytes).unwrap();
            let mut got = 0;
            while got < bytes.len() {
                got += reader.read().unwrap().len();
            }
            reader.buf.len()
        };
        assert_eq!(read(&mut theirs, &burst), BUF_BYTES);
        let mut sizes = Vec::new();
        for _ in 0..5 * SHRINK_AFTER {
            sizes.push(read(&mut theirs, b"a line\n"));
        }
        let step = usize::from(SHRINK_AFTER);
        assert_eq!(sizes[step - 2], BUF_BYTES);
        assert_eq!(
            [1, 2, 3, 4, 5].map(|k| sizes[k * step - 1]),
            [
                BUF_BYTES / 2,
                BUF_BYTES / 4,
                BUF_BYTES / 8,
                BUF_BYTES / 16,
                START_BYTES
            ]
        );
        assert_eq!(read(&mut theirs, &burst), BUF_BYTES);
        for _ in 0..5 * SHRINK_AFTER {
            read(&mut theirs, b"a line\n");
        }
        // Reads of 1.5 KiB: the buffer doubles once and stays there.
        let event = vec![b'e'; START_BYTES * 3 / 2];
        for _ in 0..3 * SHRINK_AFTER {
            assert!(read(&mut theirs, &event) <= 2 * START_BYTES);
        }
        assert_eq!(reader.buf.len(), 2 * START_BYTES);
    }

    #[test]
    fn parses_docker_host() {
        for (good, addr) in [
            (
                "unix:///var/run/docker.sock",
                Addr::Unix("/var/run/docker.sock".into()),
            ),
            ("unix://relative.sock", Addr::Unix("relative.sock".into())),
            ("tcp://10.0.0.1:2376", Addr::Tcp("10.0.0.1:2376".into())),
            ("tcp://docker.local/", Addr::Tcp("docker.local:2375".into())),
            (
                "tcp://docker-proxy_1:2375/",
                Addr::Tcp("docker-proxy_1:2375".into()),
            ),
            ("tcp://[::1]:2375", Addr::Tcp("[::1]:2375".into())),
            ("tcp://[::1]", Addr::Tcp("[::1]:2375".into())),
            ("tcp://h:65535", Addr::Tcp("h:65535".into())),
        ] {
            assert_eq!(Addr::parse(good), Ok(addr), "{good:?}");
        }
    }

    #[test]
    fn refuses_bad_docker_hosts() {
        for bad in [
            "",
            "unix://",
            "tcp://",
            "tcp:///",
            "tcp://:2375",
            "tcp://host:2375/path",
            "tcp://host:2375//",
            "tcp://h:notaport",
            "tcp://h:",
            "tcp://h:0",
            "tcp://h:65536",
            "tcp://h:+80",
            "tcp://h:2375:1",
            "tcp://h:2375?x=1",
            "tcp://user@h:2375",
            "tcp://my host:2375",
            "tcp://::1:2375",
            "tcp://[::1",
            "tcp://[::1]2375",
            "tcp://[nope]:2375",
            "ssh://me@host",
            "npipe:////./pipe/docker_engine",
            "/var/run/docker.sock",
            "http://x",
            "https://host:2376",
            "TCP://h:2375",
        ] {
            assert!(Addr::parse(bad).is_err(), "{bad:?}");
        }
    }
}
