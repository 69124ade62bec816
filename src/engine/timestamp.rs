//! The engine's timestamps: parsing RFC 3339 (Go's `RFC3339Nano`, as the engine writes it in
//! front of every log entry and in `State.StartedAt`) into nanoseconds since the epoch, and
//! formatting nanoseconds as the `seconds.nanoseconds` form that the `since=` query takes.
//!
//! Pure functions only; nothing here reads a clock. `src/reference/timestamp.rs` keeps the
//! parser as it was before its fast path, which the tests and the fuzz targets check it against.

use super::Error;

/// The longest timestamp we accept: `2006-01-02T15:04:05.999999999+07:00` is 35 bytes.
pub const MAX_TIMESTAMP_LEN: usize = 35;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±hh:mm)` into ns since the epoch.
///
/// The fraction may have 0 to 9 digits because the engine trims trailing zeros. Times outside
/// what an `i64` of nanoseconds can hold (before 1677 or after 2262) are an error, which is how
/// the engine's "never" (`0001-01-01T00:00:00Z`) comes out.
///
/// The fixed-place fields are read eight bytes at a time ([`digit_word`]) and the engine's own
/// nine-digit fraction has a path of its own; [`Parser`] is the same for a run of timestamps.
pub fn parse_rfc3339_ns(s: &[u8]) -> Result<i64, Error> {
    let (minute, rest) = split(s).ok_or_else(|| bad_timestamp(s))?;
    minute_secs(minute)
        .and_then(|secs| after_minute(secs, rest))
        .ok_or_else(|| bad_timestamp(s))
}

/// Parses timestamps one after another as [`parse_rfc3339_ns`] does, remembering the minute
/// (`YYYY-MM-DDTHH:MM`) of the last one: the entries of a log stream mostly share it, so most
/// timestamps cost only their seconds, fraction and zone.
#[derive(Debug, Default)]
pub struct Parser {
    /// The last minute parsed, and its seconds since the epoch; `None` before the first.
    minute: Option<([u8; 16], i64)>,
}

impl Parser {
    /// The time of `s` in ns since the epoch, or `None` where [`parse_rfc3339_ns`] gives an
    /// error (the decoder that calls it only needs to know that it is not a timestamp).
    #[inline]
    pub fn parse(&mut self, s: &[u8]) -> Option<i64> {
        let (minute, rest) = split(s)?;
        let secs = match self.minute {
            Some((known, secs)) if known == *minute => secs,
            _ => {
                let secs = minute_secs(minute)?;
                self.minute = Some((*minute, secs));
                secs
            }
        };
        after_minute(secs, rest)
    }
}

#[cold]
fn bad_timestamp(s: &[u8]) -> Error {
    Error::Protocol(format!("bad timestamp {:?}", String::from_utf8_lossy(s)))
}

/// A timestamp's minute (`YYYY-MM-DDTHH:MM`) and what follows it, if its length can be right.
#[inline]
fn split(s: &[u8]) -> Option<(&[u8; 16], &[u8])> {
    if s.len() < 20 || s.len() > MAX_TIMESTAMP_LEN {
        return None;
    }
    s.split_first_chunk::<16>()
}

/// The time given the seconds since the epoch of its minute, from what follows the minute:
/// `:SS[.fraction](Z|±hh:mm)`.
#[inline]
fn after_minute(minute_secs: i64, rest: &[u8]) -> Option<i64> {
    if let Ok(docker) = <&[u8; 14]>::try_from(rest) {
        if let Some(secs_ns) = docker_seconds(docker) {
            return (minute_secs + secs_ns.0)
                .checked_mul(1_000_000_000)?
                .checked_add(secs_ns.1);
        }
    }
    after_minute_any(minute_secs, rest)
}

/// [`after_minute`] for every form but Docker's own.
fn after_minute_any(minute_secs: i64, rest: &[u8]) -> Option<i64> {
    let [b':', s1, s2, rest @ ..] = rest else {
        return None;
    };
    let (s1, s2) = (s1.wrapping_sub(b'0'), s2.wrapping_sub(b'0'));
    if s1 > 5 || s2 > 9 {
        return None;
    }
    let secs = minute_secs + i64::from(s1 * 10 + s2);
    let (nanos, zone) = fraction_ns(rest)?;
    let offset_secs = utc_offset_secs(zone)?;
    (secs - offset_secs)
        .checked_mul(1_000_000_000)?
        .checked_add(nanos)
}

/// The seconds and nanoseconds of Docker's own form, `:SS.nnnnnnnnnZ`; `None` for anything
/// else, which the general path reads (or refuses).
#[inline]
fn docker_seconds(rest: &[u8; 14]) -> Option<(i64, i64)> {
    if rest[13] != b'Z' {
        return None;
    }
    // `:SS.nnnn` and the last eight digits `nnnnnnnn` (one digit in both).
    let head = digit_word(word(rest, 0), &SECONDS)?;
    let sec = pair(head, 1);
    let first = (head >> 32) & 0xff;
    let rest_eight = eight_digits(word(rest, 5))?;
    (sec <= 59).then(|| (i64::from(sec), (first * 100_000_000 + rest_eight) as i64))
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM` (taken as UTC), or None if `s` is not exactly
/// that, with a date that exists.
#[inline]
fn minute_secs(s: &[u8; 16]) -> Option<i64> {
    let ymd = digit_word(word(s, 0), &DATE)?;
    let dhm = digit_word(word(s, 8), &DAY_TIME)?;
    let year = i64::from(pair(ymd, 0)) * 100 + i64::from(pair(ymd, 2));
    let month = i64::from(pair(ymd, 5));
    let day = i64::from(pair(dhm, 0));
    let hour = i64::from(pair(dhm, 3));
    let min = i64::from(pair(dhm, 6));
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60)
}

/// The eight bytes of `s` from `at`, as a little-endian word (byte `at` lowest).
#[inline]
fn word<const N: usize>(s: &[u8; N], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(w)
}

/// What eight bytes must look like: `0` for any ASCII digit, any other byte for itself; as
/// the masks [`digit_word`] tests with, made at compile time.
struct Shape {
    /// The shape itself, a little-endian word.
    bytes: u64,
    /// Per byte: 0xf0 where a digit goes (its high nibble must be that of `0`), 0xff elsewhere.
    high: u64,
    /// Per byte: 6 where a digit goes, 0 elsewhere.
    six: u64,
}

impl Shape {
    const fn new(shape: &[u8; 8]) -> Shape {
        let mut high = [0xffu8; 8];
        let mut six = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            if shape[i] == b'0' {
                high[i] = 0xf0;
                six[i] = 6;
            }
            i += 1;
        }
        Shape {
            bytes: u64::from_le_bytes(*shape),
            high: u64::from_le_bytes(high),
            six: u64::from_le_bytes(six),
        }
    }
}

const DATE: Shape = Shape::new(b"0000-00-");
const DAY_TIME: Shape = Shape::new(b"00T00:00");
const DIGITS: Shape = Shape::new(b"00000000");
const SECONDS: Shape = Shape::new(b":00.0000");

/// Checks eight bytes against a [`Shape`] and gives the word with each digit's value in its
/// byte and 0 in the others. No byte carries into the next: after the first test every byte
/// is at most 15.
#[inline]
fn digit_word(w: u64, shape: &Shape) -> Option<u64> {
    let x = w ^ shape.bytes;
    // A digit byte is now 0..=15 and must be at most 9: adding 6 must leave its high nibble 0.
    (x & shape.high == 0 && (x + shape.six) & shape.high == 0).then_some(x)
}

/// The two-digit number in bytes `at` and `at + 1` of a [`digit_word`].
#[inline]
fn pair(x: u64, at: u32) -> u32 {
    let hi = (x >> (8 * at)) as u32 & 0xff;
    let lo = (x >> (8 * (at + 1))) as u32 & 0xff;
    hi * 10 + lo
}

/// The value of eight ASCII digits, first digit most significant, or None if one is not a
/// digit (three multiplications instead of eight).
#[inline]
fn eight_digits(w: u64) -> Option<u64> {
    let x = digit_word(w, &DIGITS)?;
    // Pairs in 16-bit lanes, then groups of four in 32-bit lanes, then all eight: each step
    // multiplies the more significant (lower) lane into the upper one, which is kept.
    let x = (x * 10 + (x >> 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x.wrapping_mul(1 + (100 << 16)) >> 16) & 0x0000_ffff_0000_ffff;
    Some(x.wrapping_mul(1 + (10_000 << 32)) >> 32)
}

/// Reads the optional `.fraction` at the start of `s` (1 to 9 digits after the dot): its value
/// in ns and the rest of `s`. Without a dot the fraction is 0 and `s` is all rest.
#[inline]
fn fraction_ns(s: &[u8]) -> Option<(i64, &[u8])> {
    let Some(after_dot) = s.strip_prefix(b".") else {
        return Some((0, s));
    };
    // The engine's own form: all nine digits.
    if let Some((nine, rest)) = after_dot.split_first_chunk::<9>() {
        let ninth = nine[8].wrapping_sub(b'0');
        if ninth < 10 && !rest.first().is_some_and(u8::is_ascii_digit) {
            if let Some(first) = eight_digits(word(nine, 0)) {
                return Some((first as i64 * 10 + i64::from(ninth), rest));
            }
        }
    }
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

/// Formats ns since the epoch as `seconds.nnnnnnnnn` for the `since=` query. Times before the
/// epoch come out as `0.000000000`, since the engine has nothing older anyway.
pub fn format_since(ns: i64) -> String {
    let ns = ns.max(0);
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// Formats ns since the epoch as RFC 3339 in UTC with all nine fraction digits,
/// `2026-11-29T19:06:17.000000000Z` (Podman's `since=` takes it to the nanosecond; its
/// `seconds.fraction` form goes through a float). Times before the epoch come out as the epoch.
pub fn format_rfc3339_ns(ns: i64) -> String {
    let ns = ns.max(0);
    let secs = ns / 1_000_000_000;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ns % 1_000_000_000
    )
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

/// The proleptic Gregorian date of a day since 1970-01-01: the inverse of
/// [`days_from_civil`] (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<i64, Error> {
        parse_rfc3339_ns(s.as_bytes())
    }

    #[test]
    fn parses_the_engines_nano_form() {
        assert_eq!(p("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            p("2026-11-25T02:10:05.620164341Z").unwrap(),
            1_795_572_605_620_164_341
        );
        // Trailing zeros are trimmed by the engine: .62 means 620 ms.
        assert_eq!(
            p("2026-11-25T02:10:05.62Z").unwrap(),
            1_795_572_605_620_000_000
        );
        assert_eq!(
            p("2026-11-25T02:10:05Z").unwrap(),
            1_795_572_605_000_000_000
        );
        assert_eq!(
            p("2026-11-25T02:10:05.000000001Z").unwrap(),
            1_795_572_605_000_000_001
        );
    }

    #[test]
    fn applies_offsets() {
        let z = p("2026-11-25T02:10:05.5Z").unwrap();
        assert_eq!(p("2026-11-25T03:10:05.5+01:00").unwrap(), z);
        assert_eq!(p("2026-11-24T20:40:05.5-05:30").unwrap(), z);
    }

    #[test]
    fn knows_the_calendar() {
        assert_eq!(p("2000-02-29T00:00:00Z").unwrap(), 951_782_400_000_000_000);
        assert_eq!(
            p("2024-03-01T00:00:00Z").unwrap(),
            1_709_251_200_000_000_000
        );
        assert_eq!(p("1969-12-31T23:59:59.5Z").unwrap(), -500_000_000);
        assert!(p("2023-02-29T00:00:00Z").is_err());
        assert!(p("1900-02-29T00:00:00Z").is_err());
        assert!(p("2023-04-31T00:00:00Z").is_err());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for s in [
            "",
            "Z",
            "2026-11-25",
            "2026-11-25T02:10:05",
            "2026-11-25T02:10:05.Z",
            "2026-11-25T02:10:05.1234567890Z",
            "2026-11-25 02:10:05Z",
            "2026-13-25T02:10:05Z",
            "2026-00-25T02:10:05Z",
            "2026-11-00T02:10:05Z",
            "2026-11-25T24:10:05Z",
            "2026-11-25T02:60:05Z",
            "2026-11-25T02:10:60Z",
            "2026-11-25T02:10:05z",
            "2026-11-25T02:10:05+0100",
            "2026-11-25T02:10:05+01:60",
            "2026-11-25T02:10:05.5Zx",
            "2026-1a-25T02:10:05Z",
            "+026-11-25T02:10:05Z",
            "2026-11-25T02:10:05.1234+01:00:00",
            "hello world, this is not a time",
        ] {
            assert!(p(s).is_err(), "{s:?} should not parse");
        }
        // The engine's zero time does not fit in i64 nanoseconds.
        assert!(p("0001-01-01T00:00:00Z").is_err());
        assert!(p("9999-12-31T23:59:59.999999999Z").is_err());
    }

    #[test]
    fn never_panics_on_any_prefix_of_a_timestamp() {
        let full = b"2026-11-25T02:10:05.620164341+01:00";
        for end in 0..=full.len() {
            let _ = parse_rfc3339_ns(&full[..end]);
        }
        for b in 0..=255u8 {
            let mut s = full.to_vec();
            for i in 0..s.len() {
                let old = s[i];
                s[i] = b;
                let _ = parse_rfc3339_ns(&s);
                s[i] = old;
            }
        }
    }

    #[test]
    fn formats_rfc3339_for_podman() {
        assert_eq!(format_rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_rfc3339_ns(-5), "1970-01-01T00:00:00.000000000Z");
        let t = p("2026-11-29T19:06:17Z").unwrap();
        assert_eq!(format_rfc3339_ns(t - 1), "2026-11-29T19:06:16.999999999Z");
        for s in [
            "2000-02-29T23:59:59.000000001Z",
            "2024-12-31T00:00:00.500000000Z",
            "2100-03-01T12:34:56.123456789Z",
            "1999-12-31T23:59:59.999999999Z",
        ] {
            assert_eq!(format_rfc3339_ns(p(s).unwrap()), s);
        }
        // Every day from 1970 to 2200 comes back as itself.
        for day in 0..(230 * 366) {
            let ns = day * 86_400 * 1_000_000_000 + 3_723_000_000_007;
            assert_eq!(p(&format_rfc3339_ns(ns)).unwrap(), ns);
        }
    }

    #[test]
    fn formats_since() {
        assert_eq!(
            format_since(1_795_572_605_620_164_341),
            "1795572605.620164341"
        );
        assert_eq!(format_since(5), "0.000000005");
        assert_eq!(format_since(0), "0.000000000");
        assert_eq!(format_since(-7), "0.000000000");
        let ns = p("2026-11-25T02:10:05.62Z").unwrap();
        assert_eq!(format_since(ns), "1795572605.620000000");
    }
}
