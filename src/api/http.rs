//! The HTTP/1.1 of the API, as far as a GET-only API needs it: the request head parsed from
//! bytes, and the head of an answer rendered into bytes. Pure: no socket in here
//! (`server.rs` owns the sockets).
//!
//! Deliberately absent: request bodies (a request that announces one is answered and the
//! connection closed), `Expect`, trailers, chunked requests, HTTP/2.

/// A request head longer than this is refused (431) and the connection closed.
pub const MAX_HEAD: usize = 16 * 1024;

/// One parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, … as sent.
    pub method: String,
    /// The request target, e.g. `/api/v1/logs?limit=5`.
    pub url: String,
    /// HTTP/1.1 or later; HTTP/1.0 otherwise.
    pub http11: bool,
    /// Header names and values, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Whether the client lets the connection stay open after the answer: HTTP/1.1 unless it
    /// says `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`; never when the
    /// request has a body we would have to skip.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("Connection").unwrap_or("");
        let has = |t: &str| conn.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        let body = self
            .header("Content-Length")
            .is_some_and(|v| v.trim() != "0")
            || self.header("Transfer-Encoding").is_some();
        !body
            && if self.http11 {
                !has("close")
            } else {
                has("keep-alive")
            }
    }
}

/// Why a head cannot be read; the connection is answered 400 (431 for `TooLarge`) and closed.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not `METHOD TARGET HTTP/1.x`.
    BadRequestLine,
    /// A header line without a colon, or not UTF-8.
    BadHeader,
    /// More than [`MAX_HEAD`] bytes without the end of the head.
    TooLarge,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            _ => 400,
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadError::BadRequestLine => "bad request line",
            HeadError::BadHeader => "bad header line",
            HeadError::TooLarge => "request head too large",
        })
    }
}

impl std::error::Error for HeadError {}

/// Parses a request head at the start of `buf`. `Ok(None)`: not complete yet, read more.
/// `Ok(Some((request, n)))`: the head took the first `n` bytes (what follows is the next
/// request of a pipelining client).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    // Blank lines before a request line are allowed (RFC 9112 §2.2).
    let start = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let Some(end) = find_end(&buf[start..]) else {
        return if buf.len() > MAX_HEAD {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let text = std::str::from_utf8(&buf[start..start + end]).map_err(|_| HeadError::BadHeader)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let (method, url, http11) = request_line(lines.next().unwrap_or(""))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').ok_or(HeadError::BadHeader)?;
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(HeadError::BadHeader);
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let req = Request {
        method,
        url,
        http11,
        headers,
    };
    Ok(Some((req, start + end)))
}

/// The length of the head including its blank line, if `buf` holds all of it.
fn find_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn request_line(line: &str) -> Result<(String, String, bool), HeadError> {
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(url), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::BadRequestLine);
    };
    let http11 = match version {
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/1.") => true,
        _ => return Err(HeadError::BadRequestLine),
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || !url.starts_with('/') {
        return Err(HeadError::BadRequestLine);
    }
    Ok((method.to_string(), url.to_string(), http11))
}

/// The reason phrase of the statuses we send.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// The head of an answer with a body of `len` bytes: status line, `Content-Type`,
/// `Content-Length`, the `extra` headers, and `Connection: close` unless `keep_alive`.
pub fn response_head(
    status: u16,
    content_type: &str,
    len: usize,
    extra: &[(&str, &str)],
    keep_alive: bool,
) -> String {
    use std::fmt::Write as _;
    let mut h = String::with_capacity(160);
    let _ = write!(
        h,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n",
        reason(status)
    );
    for (k, v) in extra {
        let _ = write!(h, "{k}: {v}\r\n");
    }
    h.push_str(if keep_alive {
        "\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> (Request, usize) {
        parse_head(s.as_bytes()).expect("valid").expect("complete")
    }

    #[test]
    fn a_simple_get() {
        let (r, n) =
            parsed("GET /api/v1/logs?limit=5 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\nGET");
        assert_eq!(n, 59);
        assert_eq!(r.method, "GET");
        assert_eq!(r.url, "/api/v1/logs?limit=5");
        assert!(r.http11);
        assert_eq!(r.header("host"), Some("x"));
        assert!(r.keep_alive());
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        for s in [
            "",
            "GET / HTTP/1.1",
            "GET / HTTP/1.1\r\nHost: x\r\n",
            "GET / HT",
        ] {
            assert_eq!(parse_head(s.as_bytes()), Ok(None), "{s:?}");
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!parsed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .0
            .keep_alive());
        assert!(!parsed("GET / HTTP/1.0\r\n\r\n").0.keep_alive());
        assert!(parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .0
            .keep_alive());
        assert!(!parsed("GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
            .0
            .keep_alive());
        assert!(parsed("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .0
            .keep_alive());
    }

    #[test]
    fn bare_newlines_and_leading_blank_lines() {
        let (r, n) = parsed("\r\nGET /x HTTP/1.1\nHost: y\n\n");
        assert_eq!((r.url.as_str(), n), ("/x", 27));
        assert_eq!(r.header("Host"), Some("y"));
    }

    #[test]
    fn bad_heads_are_refused() {
        let bad = |s: &str| parse_head(s.as_bytes()).expect_err(s);
        assert_eq!(bad("GET /\r\n\r\n"), HeadError::BadRequestLine);
        assert_eq!(bad("GET / SPDY/3\r\n\r\n"), HeadError::BadRequestLine);
        assert_eq!(bad("get / HTTP/1.1\r\n\r\n"), HeadError::BadRequestLine);
        assert_eq!(bad("GET x HTTP/1.1\r\n\r\n"), HeadError::BadRequestLine);
        assert_eq!(
            bad("GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
            HeadError::BadHeader
        );
        assert_eq!(
            bad("GET / HTTP/1.1\r\nA b: c\r\n\r\n"),
            HeadError::BadHeader
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(bad(&long), HeadError::TooLarge);
        assert_eq!(HeadError::TooLarge.status(), 431);
    }

    #[test]
    fn answer_heads() {
        let h = response_head(503, "application/json", 12, &[("Retry-After", "1")], false);
        assert_eq!(
            h,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
             Content-Length: 12\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        );
        assert!(response_head(200, "text/plain", 0, &[], true).ends_with("0\r\n\r\n"));
    }
}
