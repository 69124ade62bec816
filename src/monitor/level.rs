//! Reads a line's level from its text (docs/CONTRACT.md §4): a JSON line's `level`/`severity`/`lvl` field,
//! logfmt `level=`, a leading `ERROR`, `[warn]`, `W/`, `E0412`-style glog prefix is not guessed,
//! a syslog `<N>` prefix. Looks only at the start of the line (and JSON fields), so a word deep
//! in a message never changes its level. Allocation-free.

use crate::message::{floor_char_boundary, Level};

/// The level the line names, if it names one.
#[cfg(test)]
pub fn detect(line: &str) -> Option<Level> {
    detect_in(line.as_bytes(), true)
}

/// [`detect`] for a line's bytes, known to hold no `=` when `may_have_equals` is false (the log
/// decoder found none): it cannot be logfmt, so no search for `level=` is made. The bytes need
/// not be UTF-8: the answer is the one for the line with invalid sequences replaced (U+FFFD, as
/// `String::from_utf8_lossy` does), found without checking or copying the line. Only ASCII
/// decides a level, and only the logfmt search reads a stretch of fixed length, which is
/// checked (or replaced) alone.
pub fn detect_in(line: &[u8], may_have_equals: bool) -> Option<Level> {
    // Most lines start with a printable ASCII byte, which is no white space.
    let t = match line.first() {
        Some(&b) if b > b' ' && b.is_ascii() => line,
        _ => trim_start(line),
    };
    if t.first() == Some(&b'{') {
        if let Some(l) = json_level(t) {
            return Some(l);
        }
    }
    if let Some(l) = syslog_prefix(t) {
        return Some(l);
    }
    if may_have_equals {
        if let Some(l) = logfmt_level(t) {
            return Some(l);
        }
    }
    leading_word(t)
}

fn json_level(t: &[u8]) -> Option<Level> {
    for key in [
        &b"\"level\""[..],
        b"\"severity\"",
        b"\"lvl\"",
        b"\"loglevel\"",
    ] {
        if let Some(i) = memchr::memmem::find(t, key) {
            let rest = trim_start(trim_start(&t[i + key.len()..]).strip_prefix(b":")?);
            if let Some(s) = rest.strip_prefix(b"\"") {
                let end = memchr::memchr(b'"', s)?;
                return name(&s[..end]);
            }
            // Numeric levels as bunyan/pino write them: 10 trace … 60 fatal.
            let digits = &rest[..rest
                .iter()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(rest.len())];
            if let Some(n) = number(digits) {
                return Some(match n {
                    50.. => Level::Error,
                    40..=49 => Level::Warn,
                    30..=39 => Level::Info,
                    _ => Level::Debug,
                });
            }
        }
    }
    None
}

fn syslog_prefix(b: &[u8]) -> Option<Level> {
    if b.len() >= 3 && b[0] == b'<' && b[1].is_ascii_digit() {
        // The number ends within five bytes; a byte of a character there is no digit.
        let close = memchr::memchr(b'>', &b[..b.len().min(5)])?;
        let n = number(&b[1..close])?;
        return Some(match n % 8 {
            0..=3 => Level::Error,
            4 => Level::Warn,
            5 | 6 => Level::Info,
            _ => Level::Debug,
        });
    }
    None
}

/// The bytes of a line the logfmt search reads: its first fields.
const LOGFMT_WINDOW: usize = 160;

fn logfmt_level(t: &[u8]) -> Option<Level> {
    let window = &t[..t.len().min(LOGFMT_WINDOW)];
    match std::str::from_utf8(window) {
        Ok(head) => logfmt_in(head),
        // A character cut by the window's end, in a longer line: the window ends before it,
        // whether the line completes it or not (then it is one U+FFFD, cut the same way).
        Err(e) if e.error_len().is_none() && t.len() > window.len() => {
            logfmt_in(std::str::from_utf8(&window[..e.valid_up_to()]).ok()?)
        }
        // Invalid bytes: the window of the replaced text, which each replacement makes longer.
        // A character starting in the window ends within four bytes after it, so those bytes
        // decide the replaced text up to the window's end.
        Err(_) => {
            let text = String::from_utf8_lossy(&t[..t.len().min(LOGFMT_WINDOW + 4)]);
            logfmt_in(&text[..floor_char_boundary(&text, LOGFMT_WINDOW)])
        }
    }
}

/// The logfmt search in the first fields of a line, `head`: `ts=… level=warn msg=…`. One pass
/// over the `=` signs (most lines have none), each checked for a key that starts a field.
fn logfmt_in(head: &str) -> Option<Level> {
    for eq in memchr::memchr_iter(b'=', head.as_bytes()) {
        let key = &head[head[..eq].rfind(' ').map_or(0, |s| s + 1)..eq];
        if matches!(key, "level" | "lvl" | "severity") {
            let v = head[eq + 1..].trim_start_matches('"');
            let end = v.find([' ', '"']).unwrap_or(v.len());
            return Level::parse_name(&v[..end]);
        }
    }
    None
}

/// The longest name [`Level::parse_name`] knows: `information`.
const LONGEST_NAME: usize = 11;

fn leading_word(t: &[u8]) -> Option<Level> {
    // Skip a leading timestamp-ish token (digits, `-`, `:`, `.`, `T`, `Z`, `+`) once.
    let mut s = t;
    if let Some(first_end) = token(s, b"-:.TZ+,/").filter(|&end| end >= 6) {
        s = trim_start(&s[first_end..]);
        // `2024-01-01 12:00:00,123 WARN …`: a second time token.
        if let Some(end) = token(s, b":.,") {
            s = trim_start(&s[end..]);
        }
    }
    // Android-style `W/Tag: …`.
    if s.len() >= 2 && s[1] == b'/' && b"EWIDV".contains(&s[0]) {
        return name(&s[..1]);
    }
    let open = s
        .iter()
        .position(|c| !matches!(c, b'[' | b'(' | b'<'))
        .unwrap_or(s.len());
    let s = &s[open..];
    // A word longer than every level name names none: its end is not looked for.
    let scan = &s[..s.len().min(LONGEST_NAME + 1)];
    let end = scan
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(scan.len());
    if end > LONGEST_NAME {
        return None;
    }
    let word = &s[..end];
    let closed = matches!(s.get(end), Some(b']' | b':' | b')'));
    // A single letter only counts with brackets or a colon (`[W]`, `E:`), not as a word.
    if word.len() < 3 {
        if word.len() == 1 && closed {
            return name(word);
        }
        return None;
    }
    let uppercase = word.iter().all(|c| c.is_ascii_uppercase());
    let bracketed = t.len() != s.len() || closed;
    // `Error: …` and `ERROR …` name a level; a sentence starting with "Information" does not.
    if uppercase || bracketed {
        name(word)
    } else {
        None
    }
}

/// The end of the token `s` starts with when it is a digit, then digits and `extra` bytes up to
/// a space or the end of the line; `None` for any other token. Reads no further than that.
fn token(b: &[u8], extra: &[u8]) -> Option<usize> {
    if !b.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let end = b
        .iter()
        .position(|c| !(c.is_ascii_digit() || extra.contains(c)))
        .unwrap_or(b.len());
    matches!(b.get(end), None | Some(b' ')).then_some(end)
}

/// The level a name names ([`Level::parse_name`]); none for bytes that are not UTF-8, which
/// replaced would hold a U+FFFD, no level's letter.
fn name(b: &[u8]) -> Option<Level> {
    Level::parse_name(std::str::from_utf8(b).ok()?)
}

/// The number ASCII digits write, as `str::parse` reads it.
fn number(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `b` without the white space it starts with, as `str::trim_start` takes it from the text:
/// an invalid sequence, which would be a U+FFFD, ends it.
fn trim_start(mut b: &[u8]) -> &[u8] {
    loop {
        let width = match b.first() {
            Some(&c) if c.is_ascii() => 1,
            Some(0xc0..=0xdf) => 2,
            Some(0xe0..=0xef) => 3,
            Some(0xf0..=0xf7) => 4,
            _ => return b,
        };
        let first = b
            .get(..width)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.chars().next());
        match first {
            Some(c) if c.is_whitespace() => b = &b[width..],
            _ => return b,
        }
    }
}

/// The detection on text that [`detect_in`] replaced: kept to check that the two agree on every
/// line, the bytes' detection on the line with its invalid sequences replaced.
#[cfg(test)]
mod text {
    use crate::message::Level;

    pub fn detect_in(line: &str, may_have_equals: bool) -> Option<Level> {
        // Most lines start with a printable ASCII byte, which is no white space.
        let t = match line.as_bytes().first() {
            Some(&b) if b > b' ' && b.is_ascii() => line,
            _ => line.trim_start(),
        };
        if t.starts_with('{') {
            if let Some(l) = json_level(t) {
                return Some(l);
            }
        }
        if let Some(l) = syslog_prefix(t) {
            return Some(l);
        }
        if may_have_equals {
            if let Some(l) = logfmt_level(t) {
                return Some(l);
            }
        }
        leading_word(t)
    }

    fn json_level(t: &str) -> Option<Level> {
        for key in ["\"level\"", "\"severity\"", "\"lvl\"", "\"loglevel\""] {
            if let Some(i) = t.find(key) {
                let rest = t[i + key.len()..]
                    .trim_start()
                    .strip_prefix(':')?
                    .trim_start();
                if let Some(s) = rest.strip_prefix('"') {
                    let end = s.find('"')?;
                    return Level::parse_name(&s[..end]);
                }
                // Numeric levels as bunyan/pino write them: 10 trace … 60 fatal.
                let digits: &str = &rest[..rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len())];
                if let Ok(n) = digits.parse::<u32>() {
                    return Some(match n {
                        50.. => Level::Error,
                        40..=49 => Level::Warn,
                        30..=39 => Level::Info,
                        _ => Level::Debug,
                    });
                }
            }
        }
        None
    }

    fn syslog_prefix(t: &str) -> Option<Level> {
        let b = t.as_bytes();
        if b.len() >= 3 && b[0] == b'<' && b[1].is_ascii_digit() {
            // Bytes, not text: the fifth byte may be inside a character.
            let close = memchr::memchr(b'>', &b[..b.len().min(5)])?;
            let n: u32 = t[1..close].parse().ok()?;
            return Some(match n % 8 {
                0..=3 => Level::Error,
                4 => Level::Warn,
                5 | 6 => Level::Info,
                _ => Level::Debug,
            });
        }
        None
    }

    fn logfmt_level(t: &str) -> Option<Level> {
        // Only within the first few fields: `ts=… level=warn msg=…`. One pass over the `=` signs
        // (most lines have none), each checked for a key that starts a field.
        let head = &t[..floor_char_boundary(t, 160)];
        for eq in memchr::memchr_iter(b'=', head.as_bytes()) {
            let key = &head[head[..eq].rfind(' ').map_or(0, |s| s + 1)..eq];
            if matches!(key, "level" | "lvl" | "severity") {
                let v = head[eq + 1..].trim_start_matches('"');
                let end = v.find([' ', '"']).unwrap_or(v.len());
                return Level::parse_name(&v[..end]);
            }
        }
        None
    }

    fn leading_word(t: &str) -> Option<Level> {
        // Skip a leading timestamp-ish token (digits, `-`, `:`, `.`, `T`, `Z`, `+`) once.
        let mut s = t;
        if let Some(first_end) = token(s, b"-:.TZ+,/").filter(|&end| end >= 6) {
            s = s[first_end..].trim_start();
            // `2024-01-01 12:00:00,123 WARN …`: a second time token.
            if let Some(end) = token(s, b":.,") {
                s = s[end..].trim_start();
            }
        }
        // Android-style `W/Tag: …`.
        let b = s.as_bytes();
        if b.len() >= 2 && b[1] == b'/' && b"EWIDV".contains(&b[0]) {
            return Level::parse_name(&s[..1]);
        }
        // The bytes looked at are ASCII, so every index here is a char boundary.
        let open = b
            .iter()
            .position(|c| !matches!(c, b'[' | b'(' | b'<'))
            .unwrap_or(b.len());
        let s = &s[open..];
        let end = s
            .bytes()
            .position(|c| !c.is_ascii_alphabetic())
            .unwrap_or(s.len());
        let word = &s[..end];
        let closed = matches!(s.as_bytes().get(end), Some(b']' | b':' | b')'));
        // A single letter only counts with brackets or a colon (`[W]`, `E:`), not as a word.
        if word.len() < 3 {
            if word.len() == 1 && closed {
                return Level::parse_name(word);
            }
            return None;
        }
        let uppercase = word.bytes().all(|c| c.is_ascii_uppercase());
        let bracketed = t.len() != s.len() || closed;
        // `Error: …` and `ERROR …` name a level; a sentence starting with "Information" does not.
        if uppercase || bracketed {
            Level::parse_name(word)
        } else {
            None
        }
    }

    /// The end of the token `s` starts with when it is a digit, then digits and `extra` bytes up to
    /// a space or the end of the line; `None` for any other token. Reads no further than that.
    fn token(s: &str, extra: &[u8]) -> Option<usize> {
        let b = s.as_bytes();
        if !b.first().is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let end = b
            .iter()
            .position(|c| !(c.is_ascii_digit() || extra.contains(c)))
            .unwrap_or(b.len());
        matches!(b.get(end), None | Some(b' ')).then_some(end)
    }

    fn floor_char_boundary(s: &str, mut i: usize) -> usize {
        if i >= s.len() {
            return s.len();
        }
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_levels() {
        let long = "x".repeat(300);
        let cases: &[(&str, Option<Level>)] = &[
            (r#"{"level":"warn","msg":"x"}"#, Some(Level::Warn)),
            (r#"{"msg":"x","severity": "ERROR"}"#, Some(Level::Error)),
            (r#"{"lvl":"debug"}"#, Some(Level::Debug)),
            (r#"{"level":50,"msg":"pino"}"#, Some(Level::Error)),
            ("ts=2024 level=warn msg=hi", Some(Level::Warn)),
            ("level=error msg=\"x\"", Some(Level::Error)),
            ("ERROR something broke", Some(Level::Error)),
            ("[warn] disk almost full", Some(Level::Warn)),
            ("[WARNING] x", Some(Level::Warn)),
            ("W/ActivityManager: slow", Some(Level::Warn)),
            ("<3>kernel says", Some(Level::Error)),
            ("<14>user info", Some(Level::Info)),
            ("2024-01-01T12:00:00Z INFO started", Some(Level::Info)),
            ("2024-01-01 12:00:00,123 WARN x", Some(Level::Warn)),
            ("Error: cannot open", Some(Level::Error)),
            ("DEBUG: x", Some(Level::Debug)),
            ("E: x", Some(Level::Error)),
            ("Information is power", None),
            ("Server started on port 8080", None),
            ("the error was ignored", None),
            ("", None),
            ("<", None),
            ("{", None),
            ("é level=warn", Some(Level::Warn)),
            ("a=b lvl=info", Some(Level::Info)),
            ("msg=a=b severity=error", Some(Level::Error)),
            ("ts=1 app.level=warn msg=x", None),
            ("msg=\"level=warn\" x", None),
            (" \u{a0}WARN x", Some(Level::Warn)),
            ("\u{b}ERROR x", Some(Level::Error)),
            ("[[WARN]] x", Some(Level::Warn)),
            ("2024-01-01T12:00:00Z", None),
            ("2024-01-01T12:00:00Z  12:00:01 ERROR x", Some(Level::Error)),
            ("2024-01-01T12:00:00Zé ERROR x", None),
            ("12345 ERROR x", None),
            ("123456 error x", Some(Level::Error)),
            ("123456 Error: x", Some(Level::Error)),
            ("2024-01-01 12:00x ERROR x", None),
            ("(E) x", Some(Level::Error)),
            ("Eé x", None),
            ("WARNé x", Some(Level::Warn)),
            // The longest name, ending the line or not; a longer word is no name.
            ("INFORMATION", Some(Level::Info)),
            ("[Information] x", Some(Level::Info)),
            ("INFORMATIONS x", None),
            ("WARNINGWARNING: x", None),
            (&long, None),
        ];
        for (line, want) in cases {
            assert_eq!(detect(line), *want, "{line:?}");
            // What the log decoder's hint allows: a line without `=` is read the same without
            // the logfmt search.
            if !line.contains('=') {
                assert_eq!(detect_in(line.as_bytes(), false), *want, "{line:?}");
            }
        }
    }

    #[test]
    fn never_panics_on_odd_text() {
        for s in [
            "<9999999999>",
            "{\"level\":",
            "{\"level\": \"",
            "level=",
            "[",
            "W/",
            "€€€ level=€",
            "<123é>",
            "<12é",
        ] {
            let _ = detect(s);
        }
        let long = "x".repeat(200) + "é" + &"y".repeat(10);
        let _ = detect(&long);
    }

    /// Compares the bytes' detection with the text's on `line` replaced, both hints.
    fn agree(line: &[u8]) {
        let replaced = String::from_utf8_lossy(line);
        for eq in [true, false] {
            assert_eq!(
                detect_in(line, eq),
                text::detect_in(&replaced, eq),
                "{line:?} eq={eq}"
            );
        }
    }

    /// Pieces that decide levels, characters of every width, invalid and cut sequences.
    const PIECES: &[&[u8]] = &[
        b"level=",
        b"lvl=",
        b"severity=",
        b"warn",
        b"ERROR",
        b"info",
        b"Error:",
        b"{",
        b"\"level\"",
        b"\"severity\"",
        b"\"lvl\"",
        b":",
        b"\"",
        b" ",
        b"\t",
        b"\x0b",
        b"<",
        b"<1",
        b"3>",
        b">",
        b"14",
        b"[",
        b"]",
        b"(",
        b"W/",
        b"E",
        b"2024-01-01T12:00:00Z",
        b"12:00:00,123",
        b"=",
        b"x",
        b"msg",
        "é".as_bytes(),
        "€".as_bytes(),
        "😀".as_bytes(),
        "\u{a0}".as_bytes(),
        "\u{3000}".as_bytes(),
        "\u{2028}".as_bytes(),
        b"\xff",
        b"\xfe",
        b"\xc3",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
        b"\xed\xa0\x80",
        b"\x80",
        b"\xc2\x85",
        b"\xe1\x9a",
        b"\xc0\xaf",
    ];

    #[test]
    fn bytes_and_text_agree_on_random_lines() {
        let pieces = PIECES;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..40_000 {
            let mut line = Vec::new();
            // Sometimes padding that puts the pieces around the logfmt window's end.
            if next(3) == 0 {
                let pad = 140 + next(30);
                line.extend(std::iter::repeat_n(b'x', pad));
                line[next(pad)] = b' ';
            }
            for _ in 0..next(12) {
                line.extend_from_slice(pieces[next(pieces.len())]);
            }
            if next(4) == 0 {
                let at = next(line.len() + 1);
                let piece = pieces[next(pieces.len())];
                line.splice(at..at, piece.iter().copied());
            }
            agree(&line);
        }
    }

    #[test]
    fn bytes_and_text_agree_at_edges() {
        // A value running into a cut or invalid sequence, at the line's end or not.
        for end in [
            &b""[..],
            b"\xc3",
            b"\xe2\x82",
            b"\xff",
            b"\xf0\x9f\x98",
            b" x",
        ] {
            for start in [
                &b"level=warn"[..],
                b"{\"level\":\"warn",
                b"<4",
                b"WARN",
                b"[W",
            ] {
                agree(&[start, end].concat());
                agree(&[start, end, b"]", end].concat());
            }
        }
        // The window's end in and after characters, valid and not, with a level after it.
        for pad in 125..166 {
            for mid in ["é", "€", "😀", "\u{fffd}"] {
                for bad in [&b""[..], b"\xff", b"\xe2\x82", b"\xf0\x9f"] {
                    let mut line = b"ts=1 ".to_vec();
                    line.extend(std::iter::repeat_n(b'a', pad - 5));
                    line.extend_from_slice(bad);
                    line.extend_from_slice(mid.as_bytes());
                    line.extend_from_slice(b" level=warn lvl=\xff");
                    agree(&line);
                    agree(&line[..line.len() - 16]);
                    line.truncate(pad + 1);
                    agree(&line);
                }
            }
        }
    }
}
