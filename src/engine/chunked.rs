//! Body framing: an incremental decoder for `Transfer-Encoding: chunked` (a state machine that
//! takes runs of bytes where it can and single bytes where it must, so a chunk may be cut
//! anywhere between two reads), a `Content-Length` counter, and read-to-EOF.
//!
//! Pure: it takes the bytes a socket gave and hands the body bytes to a sink as slices of its
//! input, without copying. Chunk extensions are ignored and trailers skipped.
//! `src/reference/chunked.rs` keeps the byte-at-a-time decoder it replaced, which the tests
//! and the fuzz targets check it against.

use super::Error;
use memchr::{memchr, memchr2};

/// Extensions and trailers longer than this are refused rather than skipped forever.
const MAX_SKIP_BYTES: usize = 64 * 1024;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    UntilEof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `digits` counts them.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: an extension (or whitespace) we skip until the line ends.
    Extension {
        size: u64,
    },
    /// Saw `\r` after the size line, want `\n`.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// The `\r\n` after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final blank line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    Done,
}

/// Decodes one response body.
#[derive(Debug)]
pub struct BodyDecoder {
    framing: Framing,
    state: State,
    /// Bytes still expected with `Framing::Length`.
    left: u64,
    /// Extension or trailer bytes skipped so far (capped).
    skipped: usize,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyDecoder {
            framing,
            state: State::Size { size: 0, digits: 0 },
            left,
            skipped: 0,
        }
    }

    /// True once the body is complete (last chunk and trailers seen, or all of
    /// `Content-Length`). Bytes after that are not part of this body.
    pub fn is_done(&self) -> bool {
        match self.framing {
            Framing::Chunked => self.state == State::Done,
            Framing::Length(_) => self.left == 0,
            Framing::UntilEof => false,
        }
    }

    /// Called when the peer closed the connection: fine for read-to-EOF bodies and finished
    /// bodies, an error for a body cut short.
    pub fn on_eof(&self) -> Result<(), Error> {
        if self.framing == Framing::UntilEof || self.is_done() {
            Ok(())
        } else {
            Err(Error::Protocol(
                "connection closed in the middle of the body".into(),
            ))
        }
    }

    /// Decodes `input`, passing body bytes to `sink`. Returns how many bytes of `input` belong
    /// to this body (all of them unless it finished part-way).
    pub fn decode(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        match self.framing {
            Framing::UntilEof => {
                if !input.is_empty() {
                    sink(input)?;
                }
                Ok(input.len())
            }
            Framing::Length(_) => {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if n > 0 {
                    sink(&input[..n])?;
                }
                self.left -= n as u64;
                Ok(n)
            }
            Framing::Chunked => self.decode_chunked(input, sink),
        }
    }

    /// Chunk framing a run at a time: a chunk's data goes to the sink as one slice, its size
    /// is read in one loop, the `\r\n` after it in one step, and extensions and trailers are
    /// skipped up to their line end at once. What is left (the line ends, anything cut
    /// between two reads) goes a byte at a time through [`BodyDecoder::step`].
    fn decode_chunked(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            match self.state {
                State::Data { left } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    sink(&rest[..n])?;
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                }
                State::Done => return Ok(i),
                State::Size { size: 0, digits: 0 } => match whole_chunk(rest) {
                    Some(WholeChunk { data, used }) if !data.is_empty() => {
                        sink(data)?;
                        i += used;
                    }
                    _ => i += self.size_digits(rest, 0, 0)?,
                },
                State::Size { size, digits } => i += self.size_digits(rest, size, digits)?,
                State::DataCr if rest.starts_with(b"\r\n") => {
                    i += 2;
                    self.state = State::Size { size: 0, digits: 0 };
                }
                State::Extension { .. } => i += self.skip_run(rest, memchr2(b'\r', b'\n', rest))?,
                State::TrailerLine => i += self.skip_run(rest, memchr(b'\n', rest))?,
                _ => {
                    self.state = self.step(rest[0])?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    /// The hex digits of a chunk size at the start of `rest` and the byte after them (which
    /// ends them or is an error); returns how many bytes it took.
    #[inline]
    fn size_digits(&mut self, rest: &[u8], mut size: u64, mut digits: u8) -> Result<usize, Error> {
        for (i, &b) in rest.iter().enumerate() {
            let v = HEX[usize::from(b)];
            if v == NOT_HEX {
                self.state = self.size_byte(size, digits, b)?;
                return Ok(i + 1);
            }
            if digits >= 15 {
                return Err(bad_byte("chunk size too large", b));
            }
            size = size * 16 + u64::from(v);
            digits += 1;
        }
        self.state = State::Size { size, digits };
        Ok(rest.len())
    }

    /// Skips extension or trailer bytes up to `end` (where the line ends, if `rest` holds
    /// it), and takes the line end's first byte; returns how many bytes it took.
    #[inline]
    fn skip_run(&mut self, rest: &[u8], end: Option<usize>) -> Result<usize, Error> {
        let n = end.unwrap_or(rest.len());
        self.skipped += n;
        if self.skipped > MAX_SKIP_BYTES {
            return Err(skip_too_long());
        }
        match end {
            Some(e) => {
                self.state = self.step(rest[e])?;
                Ok(e + 1)
            }
            None => Ok(n),
        }
    }

    /// One byte of chunk framing (everything but chunk data).
    fn step(&mut self, b: u8) -> Result<State, Error> {
        Ok(match self.state {
            State::Size { size, digits } => return self.size_byte(size, digits, b),
            State::Extension { size } => match b {
                b'\r' => State::SizeLf { size },
                b'\n' => self.after_size(size),
                _ => {
                    self.skip()?;
                    State::Extension { size }
                }
            },
            State::SizeLf { size } => match b {
                b'\n' => self.after_size(size),
                _ => return Err(bad_byte("expected LF after chunk size", b)),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(bad_byte("expected CRLF after chunk data", b)),
            },
            State::DataLf => match b {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(bad_byte("expected LF after chunk data", b)),
            },
            State::TrailerStart => match b {
                b'\r' => State::TrailerLf,
                b'\n' => State::Done,
                _ => {
                    self.skip()?;
                    State::TrailerLine
                }
            },
            State::TrailerLine => {
                if b == b'\n' {
                    State::TrailerStart
                } else {
                    self.skip()?;
                    State::TrailerLine
                }
            }
            State::TrailerLf => match b {
                b'\n' => State::Done,
                _ => return Err(bad_byte("expected LF at the end of the trailers", b)),
            },
            // Data and Done are handled by the caller.
            State::Data { .. } | State::Done => self.state,
        })
    }

    /// One byte of a chunk size line while in its hex digits: one more digit, or what ends
    /// them (an extension, the line end).
    #[inline]
    fn size_byte(&mut self, size: u64, digits: u8, b: u8) -> Result<State, Error> {
        Ok(match b {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                if digits >= 15 {
                    return Err(bad_byte("chunk size too large", b));
                }
                State::Size {
                    size: size * 16 + u64::from(HEX[usize::from(b)]),
                    digits: digits + 1,
                }
            }
            _ if digits == 0 => return Err(bad_byte("missing chunk size", b)),
            b';' | b' ' | b'\t' => {
                self.skipped = 0;
                State::Extension { size }
            }
            b'\r' => State::SizeLf { size },
            b'\n' => self.after_size(size),
            _ => return Err(bad_byte("unexpected byte in chunk size", b)),
        })
    }

    fn after_size(&mut self, size: u64) -> State {
        if size == 0 {
            self.skipped = 0;
            State::TrailerStart
        } else {
            State::Data { left: size }
        }
    }

    fn skip(&mut self) -> Result<(), Error> {
        self.skipped += 1;
        if self.skipped > MAX_SKIP_BYTES {
            return Err(skip_too_long());
        }
        Ok(())
    }
}

/// A chunk whole at the start of the input: its data and the bytes it takes, size line and
/// final `\r\n` included.
struct WholeChunk<'a> {
    data: &'a [u8],
    used: usize,
}

/// The usual chunk, whole in `rest`: a size of 1 to 15 hex digits, `\r\n`, the data and
/// `\r\n`, which leave the decoder where it was (at the next size). `None` for anything else
/// (the last chunk, an extension, a bare `\n`, a chunk cut by the end of `rest`, bad bytes),
/// which the general path takes.
#[inline]
fn whole_chunk(rest: &[u8]) -> Option<WholeChunk<'_>> {
    let mut size = 0u64;
    let mut digits = 0;
    while let Some(&b) = rest.get(digits) {
        let v = HEX[usize::from(b)];
        if v == NOT_HEX || digits == 15 {
            break;
        }
        size = size * 16 + u64::from(v);
        digits += 1;
    }
    let data_start = digits + 2;
    if digits == 0 || rest.get(digits..data_start) != Some(b"\r\n") {
        return None;
    }
    let data_end = data_start.checked_add(usize::try_from(size).ok()?)?;
    let used = data_end.checked_add(2)?;
    if rest.get(data_end..used) != Some(b"\r\n") {
        return None;
    }
    Some(WholeChunk {
        data: &rest[data_start..data_end],
        used,
    })
}

#[cold]
fn skip_too_long() -> Error {
    Error::Protocol("chunk extension or trailer too long".into())
}

/// Marks a byte that is not a hex digit in [`HEX`].
const NOT_HEX: u8 = 0xff;

/// The value of each byte as a hex digit, or [`NOT_HEX`].
const HEX: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => NOT_HEX,
        };
        b += 1;
    }
    t
};

/// The error for a byte of chunk framing that does not fit; only built on the error path.
#[cold]
fn bad_byte(what: &str, b: u8) -> Error {
    Error::Protocol(format!("bad chunked body: {what} (byte {b:#04x})"))
}

/// The de-chunked body of a recorded response, and whether its terminal chunk was in it.
/// Shared by the parsers' tests that replay recordings from `tests/data`.
#[cfg(test)]
pub(crate) fn recorded_body(resp: &[u8]) -> (Vec<u8>, bool) {
    let (_, used) = super::http::parse_head(resp).unwrap().unwrap();
    let mut d = BodyDecoder::new(Framing::Chunked);
    let mut out = Vec::new();
    d.decode(&resp[used..], &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    (out, d.is_done())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::http::parse_head;

    const SMALL: &[u8] = include_bytes!("../../tests/data/logs-small.http");
    const PLAIN: &[u8] = include_bytes!("../../tests/data/logs-plain.http");
    const EVENTS: &[u8] = include_bytes!("../../tests/data/events.http");

    fn body_of(resp: &[u8]) -> &[u8] {
        let (_, used) = parse_head(resp).unwrap().unwrap();
        &resp[used..]
    }

    /// Decodes `input` fed in the given pieces; returns (body, bytes consumed, done).
    fn decode_pieces(framing: Framing, pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), Error> {
        let mut d = BodyDecoder::new(framing);
        let mut out = Vec::new();
        let mut used = 0;
        for p in pieces {
            used += d.decode(p, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
        }
        Ok((out, used, d.is_done()))
    }

    /// The body of a recorded chunked response, decoded by a naive reference parser.
    fn reference(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
            rest = &rest[eol + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }

    #[test]
    fn decodes_recorded_bodies_split_at_every_offset() {
        for resp in [SMALL, EVENTS, PLAIN] {
            let body = body_of(resp);
            let want = reference(body);
            let (got, used, done) = decode_pieces(Framing::Chunked, &[body]).unwrap();
            assert_eq!(got, want);
            assert_eq!(used, body.len());
            assert!(done);
            let step = if body.len() > 10_000 { 7 } else { 1 };
            for cut in (0..=body.len()).step_by(step) {
                let (got, used, done) =
                    decode_pieces(Framing::Chunked, &[&body[..cut], &body[cut..]]).unwrap();
                assert_eq!(got, want, "cut at {cut}");
                assert_eq!(used, body.len());
                assert!(done);
            }
        }
    }

    #[test]
    fn decodes_byte_at_a_time() {
        let body = body_of(PLAIN);
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        let (got, _, done) = decode_pieces(Framing::Chunked, &pieces).unwrap();
        assert_eq!(got, reference(body));
        assert!(done);
    }

    #[test]
    fn ignores_extensions_and_skips_trailers() {
        let body = b"5;name=value\r\nhello\r\n1 \r\n!\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\nNEXT";
        let (got, used, done) = decode_pieces(Framing::Chunked, &[body]).unwrap();
        assert_eq!(got, b"hello!");
        assert!(done);
        assert_eq!(&body[used..], b"NEXT");
        // Bare LF line ends are tolerated too.
        let (got, _, done) = decode_pieces(Framing::Chunked, &[b"3\nabc\n0\n\n"]).unwrap();
        assert_eq!(got, b"abc");
        assert!(done);
        let (got, _, done) =
            decode_pieces(Framing::Chunked, &[b"A\r\n0123456789\r\n0\r\n\r\n"]).unwrap();
        assert_eq!(got, b"0123456789");
        assert!(done);
    }

    #[test]
    fn not_done_until_the_final_blank_line() {
        let (_, _, done) = decode_pieces(Framing::Chunked, &[b"3\r\nabc\r\n0\r\n"]).unwrap();
        assert!(!done);
        let d = BodyDecoder::new(Framing::Chunked);
        assert!(d.on_eof().is_err());
    }

    #[test]
    fn rejects_bad_chunks() {
        for body in [
            &b"\r\n"[..],
            b"x\r\n",
            b"3\r\nabcX",
            b"3\r\nabc\rX",
            b"3\rX",
            b"10000000000000000\r\n",
            b"-1\r\n",
            b"0\r\n\rX",
        ] {
            assert!(
                decode_pieces(Framing::Chunked, &[body]).is_err(),
                "{body:?}"
            );
        }
        let mut long_ext = b"1;".to_vec();
        long_ext.resize(MAX_SKIP_BYTES + 10, b'x');
        assert!(decode_pieces(Framing::Chunked, &[&long_ext]).is_err());
    }

    #[test]
    fn content_length_and_eof() {
        let (got, used, done) = decode_pieces(Framing::Length(4), &[b"ab", b"cdef"]).unwrap();
        assert_eq!(got, b"abcd");
        assert_eq!(used, 4);
        assert!(done);
        let d = BodyDecoder::new(Framing::Length(4));
        assert!(!d.is_done());
        assert!(d.on_eof().is_err());
        assert!(BodyDecoder::new(Framing::Length(0)).is_done());
        let (got, _, done) = decode_pieces(Framing::UntilEof, &[b"ab", b"", b"cd"]).unwrap();
        assert_eq!(got, b"abcd");
        assert!(!done);
        assert!(BodyDecoder::new(Framing::UntilEof).on_eof().is_ok());
    }

    #[test]
    fn sink_errors_propagate() {
        let mut d = BodyDecoder::new(Framing::Chunked);
        let r = d.decode(b"3\r\nabc\r\n", &mut |_| {
            Err(Error::Protocol("stop".into()))
        });
        assert!(r.is_err());
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            let mut buf = Vec::new();
            for _ in 0..(seed % 48) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"0123456789abcdefF;\r\n \tzX";
                buf.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = decode_pieces(Framing::Chunked, &[&buf]);
        }
    }
}
