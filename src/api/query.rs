//! The filters of `/api/v1/logs` (docs/CONTRACT.md §6), parsed from a query string. Pure: a bad parameter is
//! an error naming it, never a guess.

use crate::message::{Level, LogMessage};

/// The largest `limit` honoured.
pub const MAX_LIMIT: usize = 100_000;
/// `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub app_id: Option<String>,
    pub service: Option<String>,
    pub level: Option<Level>,
    /// ms since the epoch, inclusive.
    pub since_ms: Option<i64>,
    /// ms since the epoch, inclusive.
    pub until_ms: Option<i64>,
    pub limit: usize,
    pub q: Option<String>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            app_id: None,
            service: None,
            level: None,
            since_ms: None,
            until_ms: None,
            limit: DEFAULT_LIMIT,
            q: None,
        }
    }
}

/// A parameter we cannot use: its name and why.
#[derive(Debug, PartialEq, Eq)]
pub struct BadParam {
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for BadParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad parameter '{}': {}", self.name, self.reason)
    }
}

fn bad(name: &str, reason: &str) -> BadParam {
    BadParam {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Decodes `%XX` and `+` of a query component.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Decoded `(name, value)` pairs of a query string.
pub type Pairs = Vec<(String, String)>;

/// Splits a URL into its path and decoded query pairs.
pub fn split_url(url: &str) -> Result<(&str, Pairs), BadParam> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = percent_decode(k).ok_or_else(|| bad(k, "not valid percent-encoding"))?;
        let v = percent_decode(v).ok_or_else(|| bad(&k, "not valid percent-encoding"))?;
        pairs.push((k, v));
    }
    Ok((path, pairs))
}

/// Milliseconds since the epoch, or an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    crate::engine::timestamp::parse_rfc3339_ns(s.as_bytes())
        .ok()
        .map(|ns| ns.div_euclid(1_000_000))
}

impl Filter {
    /// Builds a filter from query pairs; `extra` names further parameters the caller accepts.
    pub fn parse(pairs: &[(String, String)], extra: &[&str]) -> Result<Filter, BadParam> {
        let mut f = Filter::default();
        for (k, v) in pairs {
            let non_empty = || (!v.is_empty()).then(|| v.clone());
            match k.as_str() {
                "appId" => f.app_id = non_empty(),
                "service" => f.service = non_empty(),
                "q" => f.q = non_empty(),
                "level" => {
                    f.level = Some(
                        Level::parse_name(v)
                            .ok_or_else(|| bad(k, "one of error, warn, info, debug"))?,
                    )
                }
                "since" => {
                    f.since_ms = Some(
                        parse_time(v)
                            .ok_or_else(|| bad(k, "ms since the epoch or an RFC 3339 time"))?,
                    )
                }
                "until" => {
                    f.until_ms = Some(
                        parse_time(v)
                            .ok_or_else(|| bad(k, "ms since the epoch or an RFC 3339 time"))?,
                    )
                }
                "limit" => {
                    f.limit = match v.parse::<usize>() {
                        Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                        _ => return Err(bad(k, &format!("a whole number from 1 to {MAX_LIMIT}"))),
                    }
                }
                other if extra.contains(&other) => {}
                other => return Err(bad(other, "unknown parameter")),
            }
        }
        if let (Some(s), Some(u)) = (f.since_ms, f.until_ms) {
            if s > u {
                return Err(bad("until", "earlier than since"));
            }
        }
        Ok(f)
    }

    pub fn matches(&self, m: &LogMessage) -> bool {
        if let Some(a) = &self.app_id {
            if m.origin.app_id.as_str() != a {
                return false;
            }
        }
        if let Some(s) = &self.service {
            if &m.origin.service_name != s {
                return false;
            }
        }
        if let Some(l) = self.level {
            if !m.level.at_least(l) {
                return false;
            }
        }
        let ms = m.timestamp_ms();
        if self.since_ms.is_some_and(|s| ms < s) || self.until_ms.is_some_and(|u| ms > u) {
            return false;
        }
        if let Some(q) = &self.q {
            if !m.text().contains(q.as_str()) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Filter, BadParam> {
        let (_, pairs) = split_url(url)?;
        Filter::parse(&pairs, &[])
    }

    #[test]
    fn filters_parse() {
        let f =
            parse("/api/v1/logs?appId=1001&service=web&level=warn&limit=5&q=a%20b+c").expect("ok");
        assert_eq!(f.app_id.as_deref(), Some("1001"));
        assert_eq!(f.service.as_deref(), Some("web"));
        assert_eq!(f.level, Some(Level::Warn));
        assert_eq!(f.limit, 5);
        assert_eq!(f.q.as_deref(), Some("a b c"));
        let t = parse("/x?since=2023-10-01T21:20:00Z&until=1696195300000").expect("ok");
        assert_eq!(t.since_ms, Some(1_696_195_200_000));
        assert_eq!(t.until_ms, Some(1_696_195_300_000));
    }

    #[test]
    fn bad_params_are_named() {
        let name = |u: &str| parse(u).expect_err("bad").name;
        assert_eq!(name("/x?level=loud"), "level");
        assert_eq!(name("/x?limit=0"), "limit");
        assert_eq!(name("/x?limit=abc"), "limit");
        assert_eq!(name("/x?since=yesterday"), "since");
        assert_eq!(name("/x?colour=red"), "colour");
        assert_eq!(name("/x?since=2000&until=1000"), "until");
        assert_eq!(name("/x?q=%zz"), "q");
    }
}
