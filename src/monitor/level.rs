//! Reads a line's level from its text (docs/CONTRACT.md §4): a JSON line's `level`/`severity`/`lvl` field,
//! logfmt `level=`, a leading `ERROR`, `[warn]`, `W/`, `E0412`-style glog prefix is not guessed,
//! a syslog `<N>` prefix. Looks only at the start of the line (and JSON fields), so a word deep
//! in a message never changes its level. Allocation-free.

use crate::message::Level;

/// The level the line names, if it names one.
#[cfg(test)]
pub fn detect(line: &str) -> Option<Level> {
    detect_in(line, true)
}

/// [`detect`] for a line known to hold no `=` when `may_have_equals` is false (the log
/// decoder found none): it cannot be logfmt, so no search for `level=` is made.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_levels() {
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
        ];
        for (line, want) in cases {
            assert_eq!(detect(line), *want, "{line:?}");
            // What the log decoder's hint allows: a line without `=` is read the same without
            // the logfmt search.
            if !line.contains('=') {
                assert_eq!(detect_in(line, false), *want, "{line:?}");
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
}
