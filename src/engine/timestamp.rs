//! The engine's timestamps: parsing RFC 3339 (Go's `RFC3339Nano`, as the engine writes it in
//! front of every log entry and in `State.StartedAt`) into nanoseconds since the epoch, and
//! formatting nanoseconds as the `seconds.nanoseconds` form that the `since=` query takes.
//!
//! Pure functions only; nothing here reads a clock.

use super::Error;

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
