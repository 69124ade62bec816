//! The id and JSON string routines of `message` as they were before its rewrite: kept to check
//! the new ones against. `line_id` takes the origin's short id (`Origin::short_id`) instead of
//! the origin, so that this copy does not depend on how `Origin` is built.

use crate::message::Position;
use std::fmt::Write as _;

/// The id of a container line: the same engine line always gets the same id.
pub fn line_id(short_id: &str, pos: Position) -> String {
    format!("{}-{}-{}", short_id, pos.ts_ns, pos.seen.saturating_sub(1))
}

/// `n` in decimal, written into the end of `buf` (20 bytes hold any i64).
pub fn decimal(n: i64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}
