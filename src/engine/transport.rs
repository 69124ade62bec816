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
/// What a connection starts with: a quiet container's reader never needs more. The first read
/// that fills it grows it to [`BUF_BYTES`]; a response head larger than that grows it further
/// (up to `MAX_HEAD_BYTES`).
const START_BYTES: usize = 2 * 1024;

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl Addr {
    /// Parses `unix:///path` or `tcp://host[:port]` (port 2375 when left out, as the docker CLI
    /// does).
    pub fn parse(docker_host: &str) -> Result<Addr, Error> {
        let bad = |why: &str| Error::InvalidHost(format!("{docker_host:?}: {why}"));
        if let Some(path) = docker_host.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = docker_host.strip_prefix("tcp://") {
            let hostport = rest.trim_end_matches('/');
            if hostport.is_empty() || hostport.contains('/') || hostport.starts_with(':') {
                return Err(bad("expected tcp://host:port"));
            }
            // An IPv6 literal ends in `]` when it has no port.
            let has_port = match hostport.rsplit_once(':') {
                Some((host, port)) => {
                    !host.is_empty()
                        && !port.is_empty()
                        && port.bytes().all(|b| b.is_ascii_digit())
                        && (!host.contains(':') || host.ends_with(']'))
                }
                None => false,
            };
            return Ok(Addr::Tcp(if has_port {
                hostport.to_string()
            } else {
                format!("{hostport}:2375")
            }));
        }
        Err(bad("only unix:// and tcp:// are supported"))
    }
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
        };
        let mut end = 0;
        loop {
            if end == reader.buf.len() {
                if end > MAX_HEAD_BYTES {
                    return Err(Error::Protocol("response head too large".into()));
                }
                reader
                    .buf
                    .resize((2 * end).clamp(BUF_BYTES, MAX_HEAD_BYTES + 1), 0);
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
            // A busy stream: the rest of its bytes are already waiting.
            self.buf.resize(BUF_BYTES, 0);
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

    #[test]
    fn parses_docker_host() {
        assert_eq!(
            Addr::parse("unix:///var/run/docker.sock").unwrap(),
            Addr::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            Addr::parse("tcp://10.0.0.1:2376").unwrap(),
            Addr::Tcp("10.0.0.1:2376".into())
        );
        assert_eq!(
            Addr::parse("tcp://docker.local/").unwrap(),
            Addr::Tcp("docker.local:2375".into())
        );
        assert_eq!(
            Addr::parse("tcp://[::1]:2375").unwrap(),
            Addr::Tcp("[::1]:2375".into())
        );
        assert_eq!(
            Addr::parse("tcp://[::1]").unwrap(),
            Addr::Tcp("[::1]:2375".into())
        );
        for bad in [
            "",
            "unix://",
            "tcp://",
            "tcp://:2375",
            "tcp://host:2375/path",
            "ssh://me@host",
            "npipe:////./pipe/docker_engine",
            "/var/run/docker.sock",
            "https://host:2376",
        ] {
            assert!(
                matches!(Addr::parse(bad), Err(Error::InvalidHost(_))),
                "{bad:?}"
            );
        }
    }
}
