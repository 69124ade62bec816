//! The fast paths against their reference copies on the recorded streams of `tests/data`: split
//! at every offset (deep inside long runs of one byte, at every 97th), at random places from
//! fixed seeds, corrupted at random places, and, for the small routines, on generated inputs.

use super::diff::{self, End, Op, Rng, Stream};
use crate::engine::chunked::Framing;
use crate::engine::http::parse_head;
use crate::message::Position;

/// Every recorded answer whose body is chunked: (name, whole response).
const CHUNKED: &[(&str, &[u8])] = &[
    ("events", include_bytes!("../../tests/data/events.http")),
    (
        "inspect-plain",
        include_bytes!("../../tests/data/inspect-plain.http"),
    ),
    (
        "inspect-running",
        include_bytes!("../../tests/data/inspect-running.http"),
    ),
    (
        "logs-plain",
        include_bytes!("../../tests/data/logs-plain.http"),
    ),
    (
        "logs-small",
        include_bytes!("../../tests/data/logs-small.http"),
    ),
    (
        "logs-smalltty",
        include_bytes!("../../tests/data/logs-smalltty.http"),
    ),
    (
        "logs-tty-16k",
        include_bytes!("../../tests/data/logs-tty-16k.http"),
    ),
    ("logs-tty", include_bytes!("../../tests/data/logs-tty.http")),
    (
        "podman-burst-since",
        include_bytes!("../../tests/data/podman-burst-since.http"),
    ),
    (
        "podman-burst",
        include_bytes!("../../tests/data/podman-burst.http"),
    ),
    (
        "podman-events",
        include_bytes!("../../tests/data/podman-events.http"),
    ),
    (
        "podman-split-compat",
        include_bytes!("../../tests/data/podman-split-compat.http"),
    ),
    (
        "podman-split-since",
        include_bytes!("../../tests/data/podman-split-since.http"),
    ),
    (
        "podman-split",
        include_bytes!("../../tests/data/podman-split.http"),
    ),
    (
        "podman-tty-compat",
        include_bytes!("../../tests/data/podman-tty-compat.http"),
    ),
    (
        "podman-tty",
        include_bytes!("../../tests/data/podman-tty.http"),
    ),
];

/// The recorded log streams and the decoder the agent reads each with (framed, tty).
const LOGS: &[(&str, bool, bool)] = &[
    ("logs-plain", false, false),
    ("logs-small", false, false),
    ("logs-smalltty", false, true),
    ("logs-tty-16k", false, true),
    ("logs-tty", false, true),
    ("podman-burst-since", true, false),
    ("podman-burst", true, false),
    ("podman-split-compat", false, false),
    ("podman-split-since", true, false),
    ("podman-split", true, false),
    ("podman-tty-compat", false, true),
    ("podman-tty", true, true),
];

/// Every decoder kind: (framed, tty).
const KINDS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// A recorded answer, head and all.
fn response(name: &str) -> &'static [u8] {
    CHUNKED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
        .unwrap()
}

/// The chunked body of a recorded answer, framing and all.
fn raw_body(name: &str) -> &'static [u8] {
    let resp = response(name);
    let (head, used) = parse_head(resp).unwrap().unwrap();
    assert_eq!(head.framing, Framing::Chunked, "{name}");
    &resp[used..]
}

/// The de-chunked body of a recorded answer.
fn log_body(name: &str) -> Vec<u8> {
    let (body, done) = crate::engine::chunked::recorded_body(response(name));
    assert!(done, "{name}");
    body
}

/// The offsets to split `b` at: all of them, except deep inside runs of one byte (the long
/// lines), where only every 997th is taken; the decoders' state is the same from one byte of
/// such a run to the next.
fn cut_points(b: &[u8]) -> Vec<usize> {
    let in_run = |i: usize| {
        let lo = i.saturating_sub(48);
        let hi = (i + 48).min(b.len());
        let run = &b[lo..hi];
        hi - lo == 96 && run.iter().all(|&c| c == run[0])
    };
    (0..=b.len())
        .filter(|&i| !in_run(i) || i % 997 == 0)
        .collect()
}

fn check(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[test]
fn chunked_matches_the_reference_at_every_split_of_the_recorded_bodies() {
    for (name, _) in CHUNKED {
        let body = raw_body(name);
        for cut in cut_points(body) {
            let (a, b) = body.split_at(cut);
            check(diff::chunked(Framing::Chunked, &[a, b]));
            // The same body cut short there: not done, and an error at the end of the stream.
            check(diff::chunked(Framing::Chunked, &[a]));
        }
    }
}

#[test]
fn chunked_matches_the_reference_on_random_splits_and_every_framing() {
    let mut rng = Rng::new(1);
    for (name, _) in CHUNKED {
        let body = raw_body(name);
        for max_piece in [1, 2, 3, 7, 64, 300, 5000] {
            for _ in 0..4 {
                let pieces = diff::split(body, &mut rng, max_piece);
                check(diff::chunked(Framing::Chunked, &pieces));
                let n = rng.below(body.len() + 10) as u64;
                check(diff::chunked(Framing::Length(n), &pieces));
                check(diff::chunked(Framing::UntilEof, &pieces));
            }
        }
    }
}

/// Recorded bodies with bytes changed, dropped or repeated at random places: the errors
/// (and what came before them) are the same too.
#[test]
fn chunked_matches_the_reference_on_corrupted_bodies() {
    let mut rng = Rng::new(2);
    let alphabet = b"0123456789abcdefABCDEFgx;= \t\r\n\r\n";
    for (name, _) in CHUNKED {
        let body = raw_body(name);
        let body = &body[..body.len().min(4000)];
        for _ in 0..300 {
            let bad = corrupt(body, &mut rng, alphabet);
            let max_piece = 1 + rng.below(200);
            let pieces = diff::split(&bad, &mut rng, max_piece);
            check(diff::chunked(Framing::Chunked, &pieces));
        }
    }
    let mut long_ext = b"1;".to_vec();
    long_ext.resize(70 * 1024, b'x');
    long_ext.extend_from_slice(b"\r\nz\r\n0\r\n");
    long_ext.resize(long_ext.len() + 70 * 1024, b'y');
    for max_piece in [1 << 20, 1000, 7] {
        let pieces = diff::split(&long_ext, &mut rng, max_piece);
        check(diff::chunked(Framing::Chunked, &pieces));
    }
}

/// `body` with one to four bytes changed to bytes of `alphabet`, dropped or repeated.
fn corrupt(body: &[u8], rng: &mut Rng, alphabet: &[u8]) -> Vec<u8> {
    let mut bad = body.to_vec();
    for _ in 0..1 + rng.below(4) {
        if bad.is_empty() {
            break;
        }
        let at = rng.below(bad.len());
        match rng.below(4) {
            0 => {
                bad.remove(at);
            }
            1 => bad.insert(at, bad[at]),
            2 => bad[at] = rng.below(256) as u8,
            _ => bad[at] = alphabet[rng.below(alphabet.len())],
        }
    }
    bad
}

/// Each stream with the decoder it is read with, fed in two pieces, uncapped; capped to a few
/// bytes, also flushed between the pieces or broken after the first. The small streams also
/// with the other decoders, in two pieces.
#[test]
fn frames_match_the_reference_at_every_split_of_the_recorded_streams() {
    for &(name, framed, tty) in LOGS {
        let body = log_body(name);
        let small = body.len() < 10_000;
        for (f, t) in KINDS {
            let own = (f, t) == (framed, tty);
            if !small && !own {
                continue;
            }
            let stream = |max_line_bytes| Stream {
                framed: f,
                tty: t,
                max_line_bytes,
            };
            for cut in cut_points(&body) {
                let (a, b) = body.split_at(cut);
                let whole = [Op::Feed(a), Op::Feed(b)];
                check(diff::frames(stream(1 << 20), &whole, End::Finish));
                if own {
                    let flushed = [Op::Feed(a), Op::FlushPartial, Op::Feed(b)];
                    check(diff::frames(stream(5), &flushed, End::Finish));
                    check(diff::frames(stream(5), &[Op::Feed(a)], End::Cut));
                }
            }
        }
    }
}

/// Random splits with the stream flushed (gone quiet) between some pieces, ended or broken,
/// with every decoder kind and several line caps.
#[test]
fn frames_match_the_reference_on_random_splits() {
    let mut rng = Rng::new(3);
    for &(name, _, _) in LOGS {
        let body = log_body(name);
        for (framed, tty) in KINDS {
            for max_line_bytes in [1 << 20, 16 * 1024, 1000, 100, 1, 0] {
                let stream = Stream {
                    framed,
                    tty,
                    max_line_bytes,
                };
                for max_piece in [1, 5, 40, 1000, 20_000] {
                    let ops = random_ops(&body, &mut rng, max_piece);
                    let end = if rng.below(2) == 0 {
                        End::Finish
                    } else {
                        End::Cut
                    };
                    check(diff::frames(stream, &ops, end));
                }
            }
        }
    }
}

/// `body` cut into pieces of at most `max_piece` bytes, with a flush after about one piece
/// in four.
fn random_ops<'a>(body: &'a [u8], rng: &mut Rng, max_piece: usize) -> Vec<Op<'a>> {
    let mut ops = Vec::new();
    for piece in diff::split(body, rng, max_piece) {
        ops.push(Op::Feed(piece));
        if rng.below(4) == 0 {
            ops.push(Op::FlushPartial);
        }
    }
    ops
}

#[test]
fn frames_match_the_reference_on_corrupted_streams() {
    let mut rng = Rng::new(4);
    let alphabet = b"\x00\x01\x02\x03\x00\x00\n\r\r\n  2026-11-25T02:10:05.5Z+:x";
    for &(name, _, _) in LOGS {
        let body = log_body(name);
        let body = &body[..body.len().min(3000)];
        for (framed, tty) in KINDS {
            for _ in 0..100 {
                let bad = corrupt(body, &mut rng, alphabet);
                let stream = Stream {
                    framed,
                    tty,
                    max_line_bytes: [1 << 20, 100, 3][rng.below(3)],
                };
                let max_piece = 1 + rng.below(300);
                let ops = random_ops(&bad, &mut rng, max_piece);
                check(diff::frames(stream, &ops, End::Finish));
            }
        }
    }
}

/// Lines around the sizes where the engine cuts entries (16 KiB, on a TTY with its `\r`),
/// framed as both engines frame them.
#[test]
fn frames_match_the_reference_around_16k() {
    let t = b"2026-11-25T02:10:05.5Z ";
    let mut rng = Rng::new(5);
    for len in [
        16 * 1024 - 2,
        16 * 1024 - 1,
        16 * 1024,
        16 * 1024 + 1,
        40_000,
    ] {
        for cr in [false, true] {
            let mut raw = Vec::new();
            let mut framed = Vec::new();
            let mut line = vec![b'c'; len];
            if cr {
                line.push(b'\r');
            }
            line.push(b'\n');
            for part in line.chunks(16 * 1024) {
                raw.extend_from_slice(t);
                raw.extend_from_slice(part);
                let mut payload = t.to_vec();
                payload.extend_from_slice(part);
                framed.extend_from_slice(&[1, 0, 0, 0]);
                framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                framed.extend_from_slice(&payload);
            }
            for (body, is_framed) in [(&raw, false), (&framed, true), (&framed, false)] {
                for max_line_bytes in [1 << 20, 16 * 1024, 100] {
                    let stream = Stream {
                        framed: is_framed,
                        tty: cr,
                        max_line_bytes,
                    };
                    for max_piece in [1 << 20, 4096, 333] {
                        let ops = random_ops(body, &mut rng, max_piece);
                        check(diff::frames(stream, &ops, End::Finish));
                        check(diff::frames(stream, &ops, End::Cut));
                    }
                }
            }
        }
    }
}

/// Every timestamp in the recorded streams, those of the parser's own tests, each of them
/// with every byte changed to one of the bytes that matter, cut at every length, and random
/// ones with fields in and out of range.
#[test]
fn timestamps_match_the_reference() {
    let mut samples: Vec<Vec<u8>> = [
        "1970-01-01T00:00:00Z",
        "2026-11-25T02:10:05.620164341Z",
        "2026-11-25T02:10:05.62Z",
        "2026-11-25T02:10:05.000000001Z",
        "2026-11-25T03:10:05.5+01:00",
        "2026-11-24T20:40:05.5-05:30",
        "2000-02-29T00:00:00Z",
        "1969-12-31T23:59:59.5Z",
        "2023-02-29T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "1677-09-21T00:12:43.145224192Z",
        "1677-09-21T00:12:43.145224191Z",
        "2262-04-11T23:47:16.854775807Z",
        "2262-04-11T23:47:16.854775808Z",
        "9999-12-31T23:59:59.999999999Z",
        "2026-11-25T02:10:05.1234567890Z",
        "2026-11-25T02:10:05.123456789+23:59",
        "2026-11-25T02:10:05.123456789-23:59",
        "1998-01-17T09:26:07.959463-02:34",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for &(name, _, _) in LOGS {
        let body = log_body(name);
        let mut at = 0;
        while let Some(i) = body[at..].windows(2).position(|w| w == b"Z ") {
            let end = at + i + 1;
            // Docker's have nine fraction digits, Podman's none; the bytes before are others'.
            samples.push(body[end.saturating_sub(30)..end].to_vec());
            samples.push(body[end.saturating_sub(20)..end].to_vec());
            at = end;
        }
    }
    let bytes = b"0123456789-:T.Z+ z\xff\x00/";
    for s in samples.clone() {
        for end in 0..=s.len() + 1 {
            let mut t = s.clone();
            t.truncate(end);
            if end > s.len() {
                t.push(b'0');
            }
            check(diff::timestamp(&t));
        }
        for i in 0..s.len() {
            for &b in bytes {
                let mut t = s.clone();
                t[i] = b;
                check(diff::timestamp(&t));
            }
        }
    }
    let mut rng = Rng::new(6);
    for _ in 0..200_000 {
        check(diff::timestamp(&random_timestamp(&mut rng)));
    }
}

/// Runs of timestamps through one [`crate::engine::timestamp::Parser`]: each the one before
/// with a byte changed, so that most share its minute and some differ from it by one byte.
#[test]
fn timestamp_runs_match_the_reference() {
    let mut rng = Rng::new(9);
    let bytes = b"0123456789-:T.Z+ ";
    for _ in 0..2000 {
        let mut t = random_timestamp(&mut rng);
        let mut run = Vec::new();
        for _ in 0..20 {
            run.push(t.clone());
            if t.is_empty() {
                break;
            }
            let at = if rng.below(2) == 0 {
                16 + rng.below(t.len().saturating_sub(16).max(1))
            } else {
                rng.below(t.len())
            };
            if let Some(b) = t.get_mut(at) {
                *b = bytes[rng.below(bytes.len())];
            }
        }
        let run: Vec<&[u8]> = run.iter().map(|t| t.as_slice()).collect();
        check(diff::timestamp_run(&run));
    }
}

/// A timestamp-shaped string whose fields are often valid and sometimes not.
fn random_timestamp(rng: &mut Rng) -> Vec<u8> {
    let mut t = Vec::new();
    field(&mut t, rng, 4, 10_000);
    t.push(b'-');
    field(&mut t, rng, 2, 13);
    t.push(b'-');
    field(&mut t, rng, 2, 32);
    t.push(b'T');
    field(&mut t, rng, 2, 25);
    t.push(b':');
    field(&mut t, rng, 2, 61);
    t.push(b':');
    field(&mut t, rng, 2, 61);
    let frac = rng.below(12);
    if frac > 0 {
        t.push(b'.');
        field(&mut t, rng, frac - 1, 1_000_000_000);
    }
    match rng.below(4) {
        0 => {
            t.push(if rng.below(2) == 0 { b'+' } else { b'-' });
            field(&mut t, rng, 2, 25);
            t.push(b':');
            field(&mut t, rng, 2, 61);
        }
        1 if rng.below(10) == 0 => {}
        _ => t.push(b'Z'),
    }
    if rng.below(20) == 0 {
        let at = rng.below(t.len());
        t[at] = b"0123456789-:T.Z+"[rng.below(16)];
    }
    t
}

/// Appends `digits` decimal digits of a number below `valid`, or (one time in eight) of any.
fn field(t: &mut Vec<u8>, rng: &mut Rng, digits: usize, valid: u64) {
    let v = if rng.below(8) == 0 {
        rng.next_u64()
    } else {
        rng.next_u64() % valid
    };
    let v = v % 10u64.pow(digits as u32);
    t.extend(format!("{v:0digits$}").into_bytes());
}

#[test]
fn json_strings_match_the_reference() {
    let mut samples = vec![String::new()];
    for c in 0..=0x80u32 {
        samples.push(char::from_u32(c).unwrap().to_string());
    }
    for &(name, _, _) in LOGS {
        let body = log_body(name);
        for line in body.split(|&b| b == b'\n').take(200) {
            samples.push(String::from_utf8_lossy(line).into_owned());
        }
    }
    let mut rng = Rng::new(7);
    let alphabet = "aé\"\\\n\r\t\u{0}\u{1f}\u{7f}\u{80}€😀 x";
    let chars: Vec<char> = alphabet.chars().collect();
    for _ in 0..5000 {
        let len = rng.below(40);
        samples.push((0..len).map(|_| chars[rng.below(chars.len())]).collect());
    }
    for s in &samples {
        check(diff::json_str("", s));
        check(diff::json_str("{\"k\":", s));
    }
}

#[test]
fn line_ids_match_the_reference() {
    let mut rng = Rng::new(8);
    let hex = "0123456789abcdef";
    let ids = ["", "3f2a9c1b7d0e", "3f2a9c1b7d0e55aa", &hex.repeat(4)];
    let edges = [
        0,
        1,
        9,
        10,
        99,
        1_795_572_605_620_164_341,
        i64::MAX,
        -1,
        i64::MIN,
    ];
    for id in ids {
        for ts_ns in edges {
            for seen in [0, 1, 2, 10, u32::MAX] {
                check(diff::line_id(id, Position { ts_ns, seen }));
            }
        }
        for _ in 0..2000 {
            let ts_ns = (rng.next_u64() >> rng.below(64)) as i64;
            let seen = (rng.next_u64() >> rng.below(64)) as u32;
            check(diff::line_id(id, Position { ts_ns, seen }));
        }
    }
    for n in edges {
        check(diff::decimal(n));
    }
    for _ in 0..2000 {
        check(diff::decimal((rng.next_u64() >> rng.below(64)) as i64));
    }
}
