//! Where a query over MQTT finds its lines: the memory ring first, then, for what the ring no
//! longer holds, the log files of `LOG_DIR` (rotated ones too, `{appId}/{serviceName}.log.N`,
//! whose layout `backend/local/files.rs` owns).
//!
//! The answer is what `/api/v1/logs` would give if the ring were as long as the files: the
//! newest `limit` matching messages, oldest first. Memory is bounded by `limit` and by
//! [`MAX_ANSWER_BYTES`]: files are read a line at a time and only the newest matches are kept.
//! Nothing here holds the ring's lock for longer than one copy of its matching `Arc`s.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::api::query::Filter;
use crate::backend::local::files::path_part;
use crate::backend::local::ring::Ring;
use crate::message::{line_position, Level, LogMessage};

/// The most bytes of messages read from files that one answer holds; the oldest beyond it are
/// left out.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;

/// One line of an answer.
pub enum Item {
    /// A line only the files still hold, as JSON.
    File(String),
    Ring(Arc<LogMessage>),
}

/// The lines of an answer, oldest first.
#[derive(Default)]
pub struct Found {
    pub items: Vec<Item>,
    /// Matching lines of the files left out for [`MAX_ANSWER_BYTES`].
    pub left_out: usize,
}

/// The newest `f.limit` messages that match `f`, from the ring and then from the files under
/// `log_dir` (when files are kept), oldest first.
///
/// The ring's messages keep their order (the order `/api/v1/logs` gives); the files' lines go
/// between them by their keys (the engine's time and index). The ring is read before the
/// files, so the files may also hold lines newer than all the ring gave: they come last.
pub fn search(ring: &Ring, log_dir: Option<&Path>, f: &Filter) -> Found {
    let from_ring = ring.query(f.limit, |m| f.matches(m));
    let need = f.limit - from_ring.len().min(f.limit);
    let Some(dir) = log_dir.filter(|_| need > 0) else {
        return Found {
            items: from_ring.into_iter().map(Item::Ring).collect(),
            left_out: 0,
        };
    };
    let in_ring: HashSet<&str> = from_ring.iter().map(|m| m.id()).collect();
    let mut newest = Newest::new(need);
    for path in candidate_files(dir, f) {
        scan(&path, f, &in_ring, &mut newest);
    }
    drop(in_ring);
    let left_out = newest.left_out;
    let mut files = newest.into_keyed();
    files.sort_by_key(|e| e.0);
    let mut files = files.into_iter().peekable();
    let mut items = Vec::with_capacity(files.len() + from_ring.len());
    for m in from_ring {
        let k = key(m.id(), m.timestamp_ms());
        while let Some((_, line)) = files.next_if(|(fk, _)| *fk < k) {
            items.push(Item::File(line));
        }
        items.push(Item::Ring(m));
    }
    items.extend(files.map(|(_, line)| Item::File(line)));
    let extra = items.len().saturating_sub(f.limit);
    items.drain(..extra);
    Found { items, left_out }
}

/// Where a line sorts: the engine's time and index from its id, else its milliseconds.
fn key(id: &str, ms: i64) -> (i64, u32) {
    match line_position(id) {
        Some(p) => (p.ts_ns, p.seen),
        None => (ms.saturating_mul(1_000_000), 0),
    }
}

/// The files that may hold matching lines: with `appId` and `service` one service's, else all;
/// a file last written before `since` holds nothing newer.
fn candidate_files(dir: &Path, f: &Filter) -> Vec<PathBuf> {
    let apps: Vec<PathBuf> = match &f.app_id {
        Some(app) => vec![dir.join(path_part(app))],
        None => read_dir(dir),
    };
    let stem = f.service.as_ref().map(|s| format!("{}.log", path_part(s)));
    let mut out = Vec::new();
    for app in apps {
        for p in read_dir(&app) {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !is_log_file(name, stem.as_deref()) || written_before(&p, f.since_ms) {
                continue;
            }
            out.push(p);
        }
    }
    out
}

/// `x.log` or `x.log.N` (of `stem`, when given).
fn is_log_file(name: &str, stem: Option<&str>) -> bool {
    let Some(at) = name.find(".log") else {
        return false;
    };
    let rest = &name[at + 4..];
    let rotated = rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    rotated && stem.is_none_or(|s| name[..at + 4] == *s)
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Whether `path` was last written before `since_ms` (so holds nothing at or after it).
fn written_before(path: &Path, since_ms: Option<i64>) -> bool {
    let Some(since) = since_ms else {
        return false;
    };
    let modified = fs::metadata(path).and_then(|m| m.modified()).ok();
    let ms = modified
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    ms.is_some_and(|ms| ms < since)
}

/// Whether a message's JSON (a file line, a published message) passes `f`, its id and its
/// `timestamp`.
pub fn json_matches(json: &str, f: &Filter) -> Option<(bool, String, i64)> {
    let line = serde_json::from_str::<Line>(json).ok()?;
    Some((line.matches(f), line.id, line.timestamp))
}

/// The fields of a file line a filter looks at.
#[derive(Deserialize)]
struct Line {
    id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    timestamp: i64,
    #[serde(default)]
    level: String,
    #[serde(rename = "appId", default)]
    app_id: serde_json::Value,
    #[serde(rename = "serviceName", default)]
    service_name: String,
}

impl Line {
    /// [`Filter::matches`], on a line of a file.
    fn matches(&self, f: &Filter) -> bool {
        if let Some(a) = &f.app_id {
            let app = match &self.app_id {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            if &app != a {
                return false;
            }
        }
        if f.service.as_ref().is_some_and(|s| *s != self.service_name) {
            return false;
        }
        if let Some(floor) = f.level {
            if !Level::parse_name(&self.level).is_some_and(|l| l.at_least(floor)) {
                return false;
            }
        }
        let ms = self.timestamp;
        if f.since_ms.is_some_and(|s| ms < s) || f.until_ms.is_some_and(|u| ms > u) {
            return false;
        }
        f.q.as_ref()
            .is_none_or(|q| self.message.contains(q.as_str()))
    }

    fn key(&self) -> (i64, u32) {
        key(&self.id, self.timestamp)
    }
}

/// Adds the matching lines of `path` that the ring does not hold.
fn scan(path: &Path, f: &Filter, in_ring: &HashSet<&str>, newest: &mut Newest) {
    let Ok(file) = File::open(path) else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut text = String::new();
    loop {
        text.clear();
        match reader.read_line(&mut text) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let json = text.trim_end();
        let Ok(line) = serde_json::from_str::<Line>(json) else {
            continue;
        };
        if line.matches(f) && !in_ring.contains(line.id.as_str()) {
            newest.add(line.key(), json);
        }
    }
}

/// The newest `cap` lines added (and no more than [`MAX_ANSWER_BYTES`]), by key.
struct Newest {
    cap: usize,
    heap: BinaryHeap<Reverse<((i64, u32), String)>>,
    bytes: usize,
    left_out: usize,
}

impl Newest {
    fn new(cap: usize) -> Newest {
        Newest {
            cap,
            heap: BinaryHeap::new(),
            bytes: 0,
            left_out: 0,
        }
    }

    fn add(&mut self, key: (i64, u32), json: &str) {
        if self.heap.len() == self.cap && self.heap.peek().is_some_and(|Reverse(o)| o.0 >= key) {
            return;
        }
        self.bytes += json.len();
        self.heap.push(Reverse((key, json.to_string())));
        if self.heap.len() > self.cap {
            self.pop();
        }
        while self.bytes > MAX_ANSWER_BYTES {
            self.pop();
            self.left_out += 1;
        }
    }

    fn pop(&mut self) {
        if let Some(Reverse((_, s))) = self.heap.pop() {
            self.bytes -= s.len();
        }
    }

    /// With their keys, in no particular order.
    fn into_keyed(self) -> Vec<((i64, u32), String)> {
        self.heap.into_iter().map(|r| r.0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_names() {
        assert!(is_log_file("web.log", None));
        assert!(is_log_file("web.log.1", None));
        assert!(is_log_file("web.log.12", Some("web.log")));
        assert!(!is_log_file("web.log.tmp", None));
        assert!(!is_log_file("web.log.", None));
        assert!(!is_log_file("api.log", Some("web.log")));
        assert!(!is_log_file("notes.txt", None));
    }

    #[test]
    fn the_newest_are_kept_oldest_first() {
        let mut n = Newest::new(3);
        for (i, k) in [5, 1, 9, 3, 7].iter().enumerate() {
            n.add((*k, 0), &format!("{k}-{i}"));
        }
        let mut kept = n.into_keyed();
        kept.sort();
        let kept: Vec<&str> = kept.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(kept, ["5-0", "7-4", "9-2"]);
    }

    fn msg(text: &str, ts_ns: i64) -> Arc<LogMessage> {
        use crate::message::{LabelValue, Origin};
        let origin = Arc::new(Origin::new(
            Arc::from("c0ffee"),
            "web".into(),
            LabelValue::from_label("1001"),
            "web".into(),
            None,
            Arc::from("h"),
        ));
        crate::message::test_line(&origin, text, ts_ns)
    }

    fn texts(found: &Found) -> Vec<String> {
        found
            .items
            .iter()
            .map(|i| match i {
                Item::Ring(m) => m.text().into_owned(),
                Item::File(json) => serde_json::from_str::<Line>(json).expect("line").message,
            })
            .collect()
    }

    /// The file writer appends to the files after the ring was read: a line newer than the
    /// ring's newest comes after them, and an evicted one before.
    #[test]
    fn the_answer_is_in_line_order_when_the_files_are_ahead_of_the_ring() {
        let dir = std::env::temp_dir().join(format!("cld-search-{}", std::process::id()));
        let all: Vec<Arc<LogMessage>> = (1..=5).map(|i| msg(&i.to_string(), i * 1000)).collect();
        fs::create_dir_all(dir.join("1001")).expect("dir");
        let file: String = all.iter().map(|m| m.json() + "\n").collect();
        fs::write(dir.join("1001/web.log"), file).expect("file");
        let ring = Ring::new(100);
        ring.push_many(&all[1..4]);
        let limit = |n: &str| Filter::parse(&[("limit".into(), n.into())], &[]).expect("filter");
        let found = search(&ring, Some(&dir), &limit("100"));
        assert_eq!(texts(&found), ["1", "2", "3", "4", "5"]);
        let found = search(&ring, Some(&dir), &limit("4"));
        assert_eq!(texts(&found), ["2", "3", "4", "5"]);
        let found = search(&ring, Some(&dir), &limit("3"));
        assert_eq!(texts(&found), ["2", "3", "4"], "the ring alone answers");
        // The ring's order stands where it differs from the keys' (an event timed late).
        let ring = Ring::new(100);
        ring.push_many(&[msg("started", 2500)]);
        ring.push_many(&all[1..4]);
        let found = search(&ring, Some(&dir), &limit("100"));
        assert_eq!(texts(&found), ["1", "started", "2", "3", "4", "5"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_lines_match_like_messages() {
        let line: Line = serde_json::from_str(
            r#"{"id":"c-1000-0","message":"disk full","timestamp":1,"level":"error","appId":1001,"serviceName":"web"}"#,
        )
        .expect("line");
        let f = |pairs: &[(&str, &str)]| {
            let p: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Filter::parse(&p, &[]).expect("filter")
        };
        assert!(line.matches(&f(&[("appId", "1001"), ("service", "web")])));
        assert!(line.matches(&f(&[("level", "warn"), ("q", "disk")])));
        assert!(!line.matches(&f(&[("appId", "1002")])));
        assert!(!line.matches(&f(&[("since", "2")])));
        assert!(!line.matches(&f(&[("q", "cpu")])));
        assert_eq!(line.key(), (1000, 1));
    }
}
