//! Runs a fast routine and its reference copy on the same input and says how they differ: the
//! one comparison that the unit tests (`tests.rs`) and the fuzz targets (`fuzz/`) share. Each
//! check returns `Err` with a short description of the first difference.
//!
//! What counts as the same: for the chunked decoder, per `decode` call the body bytes given to
//! the sink and the result (bytes used or the error's text), then `is_done` and `on_eof`; for
//! the log stream decoder, every line in order with the calls that emitted it, and the errors'
//! text; for the others, the value or the error's text.

use super::timestamp as old_timestamp;
use super::{chunked as old_chunked, frames as old_frames, message as old_message};
use crate::engine::{chunked, frames, timestamp, Error, LogLine};
use crate::message::{self, LabelValue, Origin, Position};
use std::fmt::Debug;
use std::sync::Arc;

/// A small deterministic generator (xorshift64*), for splits and inputs that repeat from a
/// seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Zero is the one state xorshift never leaves.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

/// Cuts `input` into pieces of 1 to `max_piece` bytes (at least 1), at places `rng` picks.
pub fn split<'a>(input: &'a [u8], rng: &mut Rng, max_piece: usize) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = 1 + rng.below(max_piece.max(1)).min(rest.len() - 1);
        let (piece, tail) = rest.split_at(n);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// What a chunked decoder did with a sequence of pieces.
#[derive(Debug, PartialEq, Eq)]
struct ChunkedTrace {
    /// Per `decode` call: the body bytes given to the sink, and what the call returned.
    calls: Vec<(Vec<u8>, Result<usize, String>)>,
    done: bool,
    eof: Result<(), String>,
}

/// The chunked decoder and its reference copy, given `pieces` one `decode` call each (until
/// one fails, as a stream ends there).
pub fn chunked(framing: chunked::Framing, pieces: &[&[u8]]) -> Result<(), String> {
    let new = chunked_trace(chunked::BodyDecoder::new(framing), pieces);
    let old = chunked_trace(old_chunked::BodyDecoder::new(framing), pieces);
    let what = || format!("chunked {framing:?}");
    same_seq(what, &new.calls, &old.calls)?;
    same(what, &(new.done, new.eof), &(old.done, old.eof))
}

type Sink<'a> = dyn FnMut(&[u8]) -> Result<(), Error> + 'a;

/// What the two chunked decoders have in common.
trait Body {
    fn decode(&mut self, input: &[u8], sink: &mut Sink) -> Result<usize, Error>;
    fn is_done(&self) -> bool;
    fn on_eof(&self) -> Result<(), Error>;
}

impl Body for chunked::BodyDecoder {
    fn decode(&mut self, input: &[u8], sink: &mut Sink) -> Result<usize, Error> {
        chunked::BodyDecoder::decode(self, input, sink)
    }
    fn is_done(&self) -> bool {
        chunked::BodyDecoder::is_done(self)
    }
    fn on_eof(&self) -> Result<(), Error> {
        chunked::BodyDecoder::on_eof(self)
    }
}

impl Body for old_chunked::BodyDecoder {
    fn decode(&mut self, input: &[u8], sink: &mut Sink) -> Result<usize, Error> {
        old_chunked::BodyDecoder::decode(self, input, sink)
    }
    fn is_done(&self) -> bool {
        old_chunked::BodyDecoder::is_done(self)
    }
    fn on_eof(&self) -> Result<(), Error> {
        old_chunked::BodyDecoder::on_eof(self)
    }
}

fn chunked_trace(mut decoder: impl Body, pieces: &[&[u8]]) -> ChunkedTrace {
    let mut calls = Vec::new();
    for piece in pieces {
        let mut out = Vec::new();
        let r = decoder.decode(piece, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        });
        let failed = r.is_err();
        calls.push((out, r.map_err(|e| e.to_string())));
        if failed {
            break;
        }
    }
    ChunkedTrace {
        calls,
        done: decoder.is_done(),
        eof: decoder.on_eof().map_err(|e| e.to_string()),
    }
}

/// One call made to a log stream decoder.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    Feed(&'a [u8]),
    FlushPartial,
}

/// How a log stream ends: its body ended ([`frames::Decoder::finish`]) or it broke
/// ([`frames::Decoder::cut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Finish,
    Cut,
}

/// Which log stream decoder: the Docker API's (`framed` false: raw when `tty`) or Podman's
/// (`framed` true: always multiplexed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub framed: bool,
    pub tty: bool,
    pub max_line_bytes: usize,
}

/// What a log stream decoder did: each line, and after each call what it returned.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Line(LogLine),
    Returned(Result<(), String>),
}

/// The log stream decoder and its reference copy, given the same calls (feeding stops at the
/// first error, as a stream ends there), then `end` unless a feed failed.
pub fn frames(stream: Stream, ops: &[Op], end: End) -> Result<(), String> {
    let Stream {
        framed,
        tty,
        max_line_bytes,
    } = stream;
    let mut new = if framed {
        frames::Decoder::framed(tty, max_line_bytes)
    } else {
        frames::Decoder::new(tty, max_line_bytes)
    };
    let mut old = if framed {
        old_frames::Decoder::framed(tty, max_line_bytes)
    } else {
        old_frames::Decoder::new(tty, max_line_bytes)
    };
    let mut new_events = Vec::new();
    let mut old_events = Vec::new();
    for op in ops {
        let (n, o) = match op {
            Op::Feed(b) => (
                new.feed(b, &mut |l| new_events.push(Event::Line(l.into()))),
                old.feed(b, &mut |l| old_events.push(Event::Line(l))),
            ),
            Op::FlushPartial => {
                new.flush_partial(&mut |l| new_events.push(Event::Line(l.into())));
                old.flush_partial(&mut |l| old_events.push(Event::Line(l)));
                (Ok(()), Ok(()))
            }
        };
        let failed = n.is_err() || o.is_err();
        new_events.push(Event::Returned(n.map_err(|e| e.to_string())));
        old_events.push(Event::Returned(o.map_err(|e| e.to_string())));
        if failed {
            return same_seq(|| format!("frames {stream:?}"), &new_events, &old_events);
        }
    }
    match end {
        End::Finish => {
            new.finish(&mut |l| new_events.push(Event::Line(l.into())));
            old.finish(&mut |l| old_events.push(Event::Line(l)));
        }
        End::Cut => {
            new.cut(&mut |l| new_events.push(Event::Line(l.into())));
            old.cut(&mut |l| old_events.push(Event::Line(l)));
        }
    }
    same_seq(
        || format!("frames {stream:?} {end:?}"),
        &new_events,
        &old_events,
    )
}

/// `parse_rfc3339_ns` and its reference copy.
pub fn timestamp(s: &[u8]) -> Result<(), String> {
    let new = timestamp::parse_rfc3339_ns(s).map_err(|e| e.to_string());
    let old = old_timestamp::parse_rfc3339_ns(s).map_err(|e| e.to_string());
    same(
        || format!("timestamp {:?}", String::from_utf8_lossy(s)),
        &new,
        &old,
    )
}

/// A [`timestamp::Parser`] given `seq` in order (it remembers the last minute) and the
/// reference parser given each (which of them are errors: the parser gives no text).
pub fn timestamp_run(seq: &[&[u8]]) -> Result<(), String> {
    let mut parser = timestamp::Parser::default();
    for s in seq {
        let new = parser.parse(s);
        let old = old_timestamp::parse_rfc3339_ns(s).ok();
        same(
            || format!("Parser, timestamp {:?}", String::from_utf8_lossy(s)),
            &new,
            &old,
        )?;
    }
    Ok(())
}

/// `message::push_json_str` (and `push_json_bytes`, which writes messages) and its reference
/// copy, appending to the same text; and the literal reads back as `s`.
pub fn json_str(before: &str, s: &str) -> Result<(), String> {
    let mut new = before.to_string();
    message::push_json_str(&mut new, s);
    let mut old = before.to_string();
    old_message::push_json_str(&mut old, s);
    same(|| format!("push_json_str {s:?}"), &new, &old)?;
    let mut bytes = before.as_bytes().to_vec();
    message::push_json_bytes(&mut bytes, s);
    same(
        || format!("push_json_bytes {s:?}"),
        &bytes,
        &old.as_bytes().to_vec(),
    )?;
    let literal = new.get(before.len()..).unwrap_or_default();
    match serde_json::from_str::<String>(literal) {
        Ok(back) if back == s => Ok(()),
        other => Err(format!("{literal:?} reads back as {other:?}, not {s:?}")),
    }
}

/// `message::line_id` and its reference copy for a container id (64 hex digits as the engine
/// gives them, or fewer); and `line_position` reads the position back where it can (an engine
/// position: not before 1970, at least one line seen).
pub fn line_id(container_id: &str, pos: Position) -> Result<(), String> {
    let origin = Origin::new(
        Arc::from(container_id),
        "name".into(),
        LabelValue::from_label("1"),
        "service".into(),
        None,
        Arc::from("host"),
    );
    let new = message::line_id(&origin, pos);
    let old = old_message::line_id(origin.short_id(), pos);
    same(|| format!("line_id {container_id:?} {pos:?}"), &new, &old)?;
    let back = message::line_position(&new);
    if pos.ts_ns >= 0 && pos.seen >= 1 && back != Some(pos) {
        return Err(format!("line_position({new:?}) is {back:?}, not {pos:?}"));
    }
    Ok(())
}

/// The reference `decimal` writes what `Display` writes.
pub fn decimal(n: i64) -> Result<(), String> {
    let mut buf = [0u8; 20];
    let old = old_message::decimal(n, &mut buf).to_string();
    same(|| format!("decimal {n}"), &n.to_string(), &old)
}

/// `Ok` if `new == old`, else the first item that differs.
fn same_seq<T: PartialEq + Debug>(
    what: impl Fn() -> String,
    new: &[T],
    old: &[T],
) -> Result<(), String> {
    match new.iter().zip(old).position(|(n, o)| n != o) {
        Some(i) => same(|| format!("{}, item {i}", what()), &new[i], &old[i]),
        None if new.len() != old.len() => Err(format!(
            "{}: the fast path made {} items, the reference {}",
            what(),
            new.len(),
            old.len()
        )),
        None => Ok(()),
    }
}

/// `Ok` if `new == old`, else what differs (long values cut short).
fn same<T: PartialEq + Debug>(what: impl Fn() -> String, new: &T, old: &T) -> Result<(), String> {
    if new == old {
        return Ok(());
    }
    let show = |v: &T| {
        let s = format!("{v:?}");
        if s.len() > 2000 {
            let mut end = 2000;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}… ({} bytes)", &s[..end], s.len())
        } else {
            s
        }
    };
    Err(format!(
        "{}: the fast path differs from the reference\n new: {}\n old: {}",
        what(),
        show(new),
        show(old)
    ))
}
