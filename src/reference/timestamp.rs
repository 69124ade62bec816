//! The RFC 3339 timestamp parser as it was before its fast path (one digit at a time through a
//! bounds-checked helper). Kept verbatim (the formatters excepted) to check
//! `engine::timestamp::parse_rfc3339_ns` against.

use crate::engine::Error;

/// The longest timestamp we accept: `2006-01-02T15:04:05.999999999+07:00` is 35 bytes.
pub const MAX_TIMESTAMP_LEN: usize = 35;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±hh:mm)` into ns since the epoch.
///
/// The fraction may have 0 to 9 digits because the engine trims trailing zeros. Times outside
/// what an `i64` of nanoseconds can hold (before 1677 or after 2262) are an error, which is how
/// the engine's "never" (`0001-01-01T00:00:00Z`) comes out.
pub fn parse_rfc3339_ns(s: &[u8]) -> Result<i64, Error> {
    let bad = || Error::Protocol(format!("bad timestamp {:?}", String::from_utf8_lossy(s)));
    if s.len() < 20 || s.len() > MAX_TIMESTAMP_LEN {
        return Err(bad());
    }
    let secs = date_time_secs(&s[..19]).ok_or_else(bad)?;
    let (nanos, zone) = fraction_ns(&s[19..]).ok_or_else(bad)?;
    let offset_secs = utc_offset_secs(zone).ok_or_else(bad)?;
    (secs - offset_secs)
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(nanos))
        .ok_or_else(bad)
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS` (taken as UTC), or None if `s` is not
/// exactly that, with a date that exists.
#[inline]
fn date_time_secs(s: &[u8]) -> Option<i64> {
    if s.len() != 19 {
        return None;
    }
    let year = digits(s, 0, 4)?;
    let month = digits(s, 5, 2)?;
    let day = digits(s, 8, 2)?;
    let hour = digits(s, 11, 2)?;
    let min = digits(s, 14, 2)?;
    let sec = digits(s, 17, 2)?;
    if s[4] != b'-' || s[7] != b'-' || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Reads the optional `.fraction` at the start of `s` (1 to 9 digits after the dot): its value
/// in ns and the rest of `s`. Without a dot the fraction is 0 and `s` is all rest.
#[inline]
fn fraction_ns(s: &[u8]) -> Option<(i64, &[u8])> {
    let Some(after_dot) = s.strip_prefix(b".") else {
        return Some((0, s));
    };
    let len = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 9 {
        return None;
    }
    let value = digits(after_dot, 0, len)?;
    // The engine trims trailing zeros: scale what is there up to nanoseconds.
    Some((value * 10i64.pow(9 - len as u32), &after_dot[len..]))
}

/// The zone that ends a timestamp, `Z` or `±hh:mm`, as seconds east of UTC; None for anything
/// else (including trailing bytes).
#[inline]
fn utc_offset_secs(zone: &[u8]) -> Option<i64> {
    match zone {
        b"Z" => Some(0),
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hours = digits(zone, 1, 2)?;
            let mins = digits(zone, 4, 2)?;
            if hours > 23 || mins > 59 {
                return None;
            }
            let off = hours * 3600 + mins * 60;
            Some(if *sign == b'-' { -off } else { off })
        }
        _ => None,
    }
}

/// Reads `len` ASCII digits at `at`, or None if any is not a digit.
fn digits(s: &[u8], at: usize, len: usize) -> Option<i64> {
    let part = s.get(at..at + len)?;
    let mut v = 0i64;
    for &b in part {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(b - b'0');
    }
    Some(v)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm), so no
/// table and no loop over years is needed.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
