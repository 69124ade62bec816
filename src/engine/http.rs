//! The HTTP/1.1 we speak to the engine: writing a `GET` request and parsing a response head
//! incrementally (status line, headers, body framing, `Api-Version`), plus turning an error
//! body (`{"message":"…"}`) into [`Error::Status`].
//!
//! Pure: bytes in, values out. It never touches a socket and never panics on what it is given.

use super::chunked::Framing;
use super::Error;

/// A response head larger than this is refused, so a broken peer cannot make us buffer forever.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Writes `GET path HTTP/1.1` with the headers the engine needs. `Host` is always sent because
/// the engine answers 400 without it; `one_shot` asks the engine to close after the answer.
pub fn write_request(out: &mut Vec<u8>, path: &str, one_shot: bool) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: docker\r\nUser-Agent: container-logd/");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\r\n");
    if one_shot {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Header names as sent, values trimmed; in order.
    pub headers: Vec<(String, String)>,
    /// How the body that follows is delimited.
    pub framing: Framing,
}

impl Head {
    /// The first header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The engine's maximum API version, from `Api-Version`.
    pub fn api_version(&self) -> Option<&str> {
        self.header("Api-Version")
    }

    /// Podman's own API version, from `Libpod-Api-Version`: only Podman sends it.
    pub fn libpod_version(&self) -> Option<&str> {
        self.header("Libpod-Api-Version").filter(|v| !v.is_empty())
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Parses a response head from the start of `buf`. Returns None while the head is incomplete,
/// else the head and how many bytes of `buf` it took (the body starts right after).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Error> {
    let Some((head_end, consumed)) = find_head_end(buf) else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(head_too_large());
        }
        return Ok(None);
    };
    if head_end > MAX_HEAD_BYTES {
        return Err(head_too_large());
    }
    let text = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Error::Protocol("response head is not UTF-8".into()))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or("");
    let status = parse_status_line(status_line)?;

    let mut headers = Vec::new();
    let mut body = BodyHeaders::default();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (name, value) = parse_header_line(line)?;
        body.note(name, value)?;
        headers.push((name.to_string(), value.to_string()));
    }
    Ok(Some((
        Head {
            status,
            headers,
            framing: body.framing(status),
        },
        consumed,
    )))
}

/// Builds the error for a non-2xx answer, using the engine's `{"message":"…"}` when the body
/// has one and the body text (or the bare status) otherwise.
pub fn status_error(status: u16, body: &[u8]) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        message: String,
    }
    let message = match serde_json::from_slice::<Body>(body) {
        Ok(b) => b.message,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("HTTP status {status}")
            } else {
                text.chars().take(1000).collect()
            }
        }
    };
    Error::Status { status, message }
}

/// Finds the blank line that ends the head: returns (end of the header lines, bytes consumed
/// including the blank line). Bare `\n` line ends are accepted as well as `\r\n`.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some((line_start, i + 1));
            }
            line_start = i + 1;
        }
    }
    None
}

fn parse_status_line(line: &str) -> Result<u16, Error> {
    let bad = || Error::Protocol(format!("bad status line {line:?}"));
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let mut parts = rest.splitn(3, ' ');
    let minor = parts.next().ok_or_else(bad)?;
    if minor != "0" && minor != "1" {
        return Err(bad());
    }
    let code = parts.next().ok_or_else(bad)?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    if status < 100 {
        return Err(bad());
    }
    Ok(status)
}

fn parse_content_length(value: &str) -> Result<u64, Error> {
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Protocol(format!("bad Content-Length {value:?}")));
    }
    value
        .parse()
        .map_err(|_| Error::Protocol(format!("bad Content-Length {value:?}")))
}

fn head_too_large() -> Error {
    Error::Protocol(format!("response head larger than {MAX_HEAD_BYTES} bytes"))
}

/// Splits `Name: value` into the name and the value without its surrounding blanks.
fn parse_header_line(line: &str) -> Result<(&str, &str), Error> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| Error::Protocol(format!("bad header line {line:?}")))?;
    if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(Error::Protocol(format!("bad header name {name:?}")));
    }
    Ok((name, value.trim_matches(|c| c == ' ' || c == '\t')))
}

/// What the headers say about where the body ends.
#[derive(Default)]
struct BodyHeaders {
    content_length: Option<u64>,
    /// The last transfer coding is `chunked`.
    chunked: bool,
    /// Some transfer coding other than `chunked` was named.
    other_coding: bool,
}

impl BodyHeaders {
    /// Takes note of one header; those that do not frame the body are ignored.
    fn note(&mut self, name: &str, value: &str) -> Result<(), Error> {
        if name.eq_ignore_ascii_case("Content-Length") {
            let n = parse_content_length(value)?;
            // Two different lengths mean we cannot know where the body ends.
            if self.content_length.is_some_and(|old| old != n) {
                return Err(Error::Protocol("conflicting Content-Length headers".into()));
            }
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("Transfer-Encoding") {
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                // Only a final `chunked` frames the body; anything after it means read to EOF.
                self.chunked = coding.eq_ignore_ascii_case("chunked");
                self.other_coding |= !self.chunked;
            }
        }
        Ok(())
    }

    /// How the body of a response with this status is delimited.
    fn framing(&self, status: u16) -> Framing {
        if status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Length(0)
        } else if self.chunked {
            Framing::Chunked
        } else if self.other_coding {
            Framing::UntilEof
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else {
            Framing::UntilEof
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: &[u8] = include_bytes!("../../tests/data/ping.http");
    const LOGS: &[u8] = include_bytes!("../../tests/data/logs-small.http");
    const NOT_FOUND: &[u8] = include_bytes!("../../tests/data/logs-404.http");

    fn full(buf: &[u8]) -> (Head, usize) {
        parse_head(buf).unwrap().unwrap()
    }

    #[test]
    fn writes_a_request() {
        let mut out = Vec::new();
        write_request(&mut out, "/_ping", true);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            format!(
                "GET /_ping HTTP/1.1\r\nHost: docker\r\nUser-Agent: container-logd/{}\r\n\
                 Connection: close\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        let mut out = Vec::new();
        write_request(&mut out, "/v1.41/events", false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /v1.41/events HTTP/1.1\r\nHost: docker\r\n"));
        assert!(!text.contains("Connection"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn parses_the_recorded_ping() {
        let (head, used) = full(PING);
        assert_eq!(head.status, 200);
        assert!(head.is_success());
        assert_eq!(head.api_version(), Some("1.41"));
        assert_eq!(head.header("content-length"), Some("2"));
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(&PING[used..], b"OK");
    }

    #[test]
    fn parses_the_recorded_log_head() {
        let (head, used) = full(LOGS);
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Chunked);
        assert!(LOGS[used..].starts_with(b"2b\r\n"));
    }

    #[test]
    fn is_incremental_at_every_length() {
        let (_, used) = full(PING);
        for end in 0..used {
            assert!(parse_head(&PING[..end]).unwrap().is_none(), "at {end}");
        }
        for end in used..=PING.len() {
            assert_eq!(parse_head(&PING[..end]).unwrap().unwrap().1, used);
        }
    }

    #[test]
    fn surfaces_the_engines_message() {
        let (head, used) = full(NOT_FOUND);
        assert_eq!(head.status, 404);
        let e = status_error(head.status, &NOT_FOUND[used..]);
        assert!(e.is_not_found());
        match e {
            Error::Status { status, message } => {
                assert_eq!(status, 404);
                assert_eq!(message, "No such container: no-such-ctr");
            }
            other => panic!("{other:?}"),
        }
        match status_error(500, b"  plain text\n") {
            Error::Status { message, .. } => assert_eq!(message, "plain text"),
            other => panic!("{other:?}"),
        }
        match status_error(502, b"") {
            Error::Status { message, .. } => assert_eq!(message, "HTTP status 502"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framing_rules() {
        let f = |s: &str| full(s.as_bytes()).0.framing;
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilEof);
        assert_eq!(
            f("HTTP/1.1 200 OK\nContent-Length: 5\n\n"),
            Framing::Length(5)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nTRANSFER-ENCODING: Chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Framing::UntilEof
        );
        assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n"), Framing::Length(0));
        assert_eq!(
            f("HTTP/1.0 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            Framing::Length(3)
        );
    }

    #[test]
    fn rejects_bad_heads() {
        for s in [
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 099 OK\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert!(parse_head(s.as_bytes()).is_err(), "{s:?} should fail");
        }
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n").is_err());
    }

    #[test]
    fn caps_the_head() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD_BYTES {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(parse_head(&big).is_err());
        big.extend_from_slice(b"\r\n");
        assert!(parse_head(&big).is_err());
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut buf = b"HTTP/1.1 200 OK\r\n".to_vec();
            for _ in 0..(seed % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(b"\r\n: aZ09\t\xffHTTP/1.1 "[(seed % 19) as usize]);
            }
            let _ = parse_head(&buf);
        }
    }
}
