//! The chunked body decoder as it was before its fast path: a byte-at-a-time state machine.
//! Kept verbatim (tests excepted) to check `engine::chunked` against.

pub use crate::engine::chunked::Framing;
use crate::engine::Error;

/// Extensions and trailers longer than this are refused rather than skipped forever.
const MAX_SKIP_BYTES: usize = 64 * 1024;

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

    fn decode_chunked(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data { left } = self.state {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                sink(&input[i..i + n])?;
                i += n;
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            if self.state == State::Done {
                return Ok(i);
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b)?;
        }
        Ok(i)
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
                let v = (b as char).to_digit(16).unwrap_or(0);
                State::Size {
                    size: size * 16 + u64::from(v),
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
            return Err(Error::Protocol(
                "chunk extension or trailer too long".into(),
            ));
        }
        Ok(())
    }
}

/// The error for a byte of chunk framing that does not fit; only built on the error path.
#[cold]
fn bad_byte(what: &str, b: u8) -> Error {
    Error::Protocol(format!("bad chunked body: {what} (byte {b:#04x})"))
}
