//! The disk spool under `STATE_DIR/spool/`: messages the broker has not acknowledged yet,
//! kept across broker outages and agent restarts, replayed oldest first.
//!
//! The spool is a row of append-only segment files (`{id:016x}.seg`), one record per line:
//! the topic, a tab, the message JSON, a newline (neither a sanitised topic nor our JSON can hold
//! a raw tab or newline). Records are written in chunks, one `write` and one `sync_data` per
//! chunk, so an SD card never sees one write per log line. A torn last line (power cut) is cut off
//! when the spool is opened. Acknowledged offsets live in memory and are saved to `cursor` on a
//! clean stop; after a crash a segment is replayed from its start (duplicates, never a loss).
//!
//! This module never talks to the broker and never decides what is spooled; it must never
//! rewrite a record in place, and it drops whole segments only, oldest first, when over its limit.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first segment id of an empty spool; ids below it are left for segments put in front.
const FIRST_ID: u64 = 1 << 40;

/// One spooled record, read back for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub json: String,
    /// The segment it came from and the offset just after its line, for [`Spool::ack`].
    pub seg: u64,
    pub end: u64,
}

/// Records dropped, by whose they were: container lines (and lifecycle messages), or the
/// agent's own messages (topics under `{base}/manager/`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub lines: u64,
    pub agent: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.lines + self.agent
    }

    pub fn add(&mut self, other: Dropped) {
        self.lines += other.lines;
        self.agent += other.agent;
    }
}

/// What [`Spool::append`] did: the first `written` records are in the spool, the rest are not
/// (`error` says why); `dropped` were pushed out to stay under the limit.
#[derive(Debug, Default)]
pub struct Appended {
    pub written: u64,
    pub dropped: Dropped,
    pub error: Option<io::Error>,
}

#[cfg(test)]
impl Appended {
    /// What was pushed out; panics on a failed write.
    fn expect(self, what: &str) -> u64 {
        if let Some(e) = self.error {
            panic!("{what}: {e}");
        }
        self.dropped.total()
    }
}

#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    /// Bytes of complete records in the file.
    len: u64,
    records: u64,
    read_off: u64,
    read_records: u64,
    acked_off: u64,
    acked_records: u64,
}

/// The spool directory and what is known about its segments.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    seg_size: u64,
    segs: VecDeque<Segment>,
    total: u64,
    /// Topics of the agent's own messages start with this (see [`Dropped`]); empty: none.
    agent_prefix: String,
}

/// Encodes records as the lines of one chunk.
pub fn encode<'a>(records: impl Iterator<Item = (&'a str, &'a str)>) -> (Vec<u8>, u64) {
    let mut buf = Vec::new();
    let mut n = 0;
    for (topic, json) in records {
        buf.extend_from_slice(topic.as_bytes());
        buf.push(b'\t');
        buf.extend_from_slice(json.as_bytes());
        buf.push(b'\n');
        n += 1;
    }
    (buf, n)
}

/// Splits complete lines off `buf`; returns the records (topic, json, end offset relative to
/// the start of `buf`) and the number of bytes used. A line without a tab is skipped.
pub fn decode(buf: &[u8]) -> (Vec<(String, String, usize)>, usize) {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        let end = start + nl + 1;
        if let Some(tab) = line.iter().position(|&b| b == b'\t') {
            let topic = String::from_utf8_lossy(&line[..tab]).into_owned();
            let json = String::from_utf8_lossy(&line[tab + 1..]).into_owned();
            out.push((topic, json, end));
        }
        start = end;
    }
    (out, start)
}

impl Spool {
    /// Opens (creating) the spool directory, cuts torn tails and applies the saved cursor.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".seg") {
                if let Ok(id) = u64::from_str_radix(hex, 16) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        let cursor = read_cursor(&dir.join("cursor"));
        // The cursor is only valid for the run that wrote it; a crash later must not reuse it.
        let _ = fs::remove_file(dir.join("cursor"));
        let mut segs = VecDeque::new();
        let mut total = 0;
        for id in ids {
            let path = seg_path(dir, id);
            let (len, records) = scan(&path)?;
            if len == 0 {
                let _ = fs::remove_file(&path);
                continue;
            }
            let (acked_off, acked_records) = cursor
                .iter()
                .find(|c| c.0 == id)
                .map(|c| (c.1.min(len), c.2.min(records)))
                .unwrap_or((0, 0));
            if acked_off >= len {
                let _ = fs::remove_file(&path);
                continue;
            }
            total += len;
            segs.push_back(Segment {
                id,
                len,
                records,
                read_off: acked_off,
                read_records: acked_records,
                acked_off,
                acked_records,
            });
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            seg_size: (max_bytes / 8).clamp(16 << 10, 8 << 20),
            segs,
            total,
            agent_prefix: String::new(),
        })
    }

    /// Tells the agent's own messages (topics starting with `prefix`) from container lines
    /// when records are dropped.
    pub fn set_agent_prefix(&mut self, prefix: String) {
        self.agent_prefix = prefix;
    }

    /// Counts `topic` as one dropped record of its kind.
    pub fn count(&self, dropped: &mut Dropped, topic: &str) {
        if !self.agent_prefix.is_empty() && topic.starts_with(&self.agent_prefix) {
            dropped.agent += 1;
        } else {
            dropped.lines += 1;
        }
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Records not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.segs.iter().map(|s| s.records - s.acked_records).sum()
    }

    /// True when some record has not been read out for sending yet.
    pub fn has_unread(&self) -> bool {
        self.segs.iter().any(|s| s.read_off < s.len)
    }

    /// True when some record has not been acknowledged yet.
    pub fn has_unacked(&self) -> bool {
        !self.segs.is_empty()
    }

    /// Appends records after everything spooled, one write per segment touched. A failed write
    /// (a full disk) stops there: what was written before it stays, the rest is not written.
    pub fn append<'a>(&mut self, records: impl Iterator<Item = (&'a str, &'a str)>) -> Appended {
        let mut out = Appended::default();
        let mut buf = Vec::new();
        let mut n = 0;
        for (topic, json) in records {
            let room = match self.segs.back() {
                Some(s) => self.seg_size.saturating_sub(s.len),
                None => 0,
            };
            let line_len = (topic.len() + json.len() + 2) as u64;
            if n > 0 && buf.len() as u64 + line_len > room {
                if !self.append_chunk(&buf, n, &mut out) {
                    return out;
                }
                buf.clear();
                n = 0;
            }
            if n == 0 && line_len > room {
                self.roll();
            }
            buf.extend_from_slice(topic.as_bytes());
            buf.push(b'\t');
            buf.extend_from_slice(json.as_bytes());
            buf.push(b'\n');
            n += 1;
        }
        if n > 0 {
            self.append_chunk(&buf, n, &mut out);
        }
        out
    }

    /// Writes one chunk of `n` records at the end; false (and `out.error` set) when it failed.
    fn append_chunk(&mut self, buf: &[u8], n: u64, out: &mut Appended) -> bool {
        match self.write_tail(buf, n) {
            Ok(dropped) => {
                out.written += n;
                out.dropped.add(dropped);
                true
            }
            Err(e) => {
                out.error = Some(e);
                false
            }
        }
    }

    /// Starts a new last segment (its file is made by the first write).
    fn roll(&mut self) {
        let id = self.segs.back().map(|s| s.id + 1).unwrap_or(FIRST_ID);
        self.segs.push_back(Segment {
            id,
            len: 0,
            records: 0,
            read_off: 0,
            read_records: 0,
            acked_off: 0,
            acked_records: 0,
        });
    }

    fn write_tail(&mut self, buf: &[u8], n: u64) -> io::Result<Dropped> {
        if self.segs.is_empty() {
            self.roll();
        }
        let Some(last) = self.segs.back_mut() else {
            return Ok(Dropped::default());
        };
        let path = seg_path(&self.dir, last.id);
        if let Err(e) = write_at_end(&path, last.len, buf) {
            if last.len == 0 {
                self.segs.pop_back();
            }
            return Err(e);
        }
        last.len += buf.len() as u64;
        last.records += n;
        self.total += buf.len() as u64;
        Ok(self.enforce_limit())
    }

    /// Puts records in front of everything spooled (messages that were older than the spool
    /// but still in memory), all or none; returns what was dropped to stay under the limit.
    pub fn prepend<'a>(
        &mut self,
        records: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> io::Result<Dropped> {
        let (buf, n) = encode(records);
        if n == 0 {
            return Ok(Dropped::default());
        }
        let id = self.segs.front().map(|s| s.id - 1).unwrap_or(FIRST_ID);
        let path = seg_path(&self.dir, id);
        write_at_end(&path, 0, &buf)?;
        self.segs.push_front(Segment {
            id,
            len: buf.len() as u64,
            records: n,
            read_off: 0,
            read_records: 0,
            acked_off: 0,
            acked_records: 0,
        });
        self.total += buf.len() as u64;
        Ok(self.enforce_limit())
    }

    fn enforce_limit(&mut self) -> Dropped {
        let mut dropped = Dropped::default();
        while self.total > self.max_bytes && self.segs.len() > 1 {
            if let Some(s) = self.segs.pop_front() {
                dropped.add(self.unacked_of(&s));
                self.total -= s.len;
                let _ = fs::remove_file(seg_path(&self.dir, s.id));
            }
        }
        dropped
    }

    /// The records of a segment not acknowledged yet, by kind (all lines if unreadable).
    fn unacked_of(&self, s: &Segment) -> Dropped {
        let mut d = Dropped::default();
        let unacked = s.records - s.acked_records;
        let Ok(bytes) = fs::read(seg_path(&self.dir, s.id)) else {
            d.lines = unacked;
            return d;
        };
        let start = (s.acked_off as usize).min(bytes.len());
        let (recs, _) = decode(&bytes[start..]);
        for (topic, _, _) in &recs {
            self.count(&mut d, topic);
        }
        d.lines += unacked.saturating_sub(recs.len() as u64);
        d
    }

    /// Reads up to about `max_bytes` (at least one record) of unread records, oldest first.
    pub fn read(&mut self, max_records: usize, max_bytes: usize) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut budget = max_bytes;
        for seg in self.segs.iter_mut() {
            if out.len() >= max_records || budget == 0 {
                break;
            }
            if seg.read_off < seg.len {
                budget = read_segment(&self.dir, seg, max_records, budget, &mut out)?;
            }
        }
        Ok(out)
    }

    /// The broker acknowledged the record of `seg` ending at `end`; acks come in spool order.
    /// Fully acknowledged segments are deleted.
    pub fn ack(&mut self, seg: u64, end: u64) {
        if let Some(s) = self.segs.iter_mut().find(|s| s.id == seg) {
            if end > s.acked_off {
                s.acked_off = end;
                s.acked_records += 1;
            }
        }
        while let Some(front) = self.segs.front() {
            if front.acked_off < front.len {
                break;
            }
            self.total -= front.len;
            let _ = fs::remove_file(seg_path(&self.dir, front.id));
            self.segs.pop_front();
        }
    }

    /// Forgets what was read but not acknowledged, so it is read again (after a disconnect).
    pub fn rewind(&mut self) {
        for s in self.segs.iter_mut() {
            s.read_off = s.acked_off;
            s.read_records = s.acked_records;
        }
    }

    /// Saves the acknowledged offsets, so a clean restart does not send them again.
    pub fn save_cursor(&self) -> io::Result<()> {
        let mut text = String::new();
        for s in self.segs.iter().filter(|s| s.acked_off > 0) {
            text.push_str(&format!("{:x} {} {}\n", s.id, s.acked_off, s.acked_records));
        }
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.dir.join("cursor"))
    }
}

/// Reads unread records of one segment into `out` while `max_records` and `budget` allow;
/// returns what is left of the budget.
fn read_segment(
    dir: &Path,
    seg: &mut Segment,
    max_records: usize,
    mut budget: usize,
    out: &mut Vec<Record>,
) -> io::Result<usize> {
    let mut f = match File::open(seg_path(dir, seg.id)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Removed behind our back: nothing to read there, and no reason to retry.
            seg.read_off = seg.len;
            seg.acked_off = seg.len;
            return Ok(budget);
        }
        Err(e) => return Err(e),
    };
    let avail = (seg.len - seg.read_off) as usize;
    let mut want = budget.min(avail).max(1);
    let recs = loop {
        let mut buf = vec![0u8; want];
        f.seek(SeekFrom::Start(seg.read_off))?;
        f.read_exact(&mut buf)?;
        let (recs, used) = decode(&buf);
        if used == 0 && want < avail {
            // One record longer than the budget: read it whole.
            want = (want * 2).min(avail);
            continue;
        }
        break recs;
    };
    if recs.is_empty() {
        // Only a line without its newline up to `len`: should not happen, skip it.
        seg.read_off = seg.len;
        return Ok(budget);
    }
    let start = seg.read_off;
    for (topic, json, end) in recs {
        if out.len() >= max_records {
            break;
        }
        budget = budget.saturating_sub(topic.len() + json.len() + 2);
        seg.read_records += 1;
        seg.read_off = start + end as u64;
        out.push(Record {
            topic,
            json,
            seg: seg.id,
            end: seg.read_off,
        });
    }
    Ok(budget)
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

fn write_at_end(path: &Path, len: u64, buf: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    // Writing at our own idea of the end drops a torn tail left by a failed earlier write.
    f.set_len(len)?;
    f.seek(SeekFrom::Start(len))?;
    f.write_all(buf)?;
    f.sync_data()
}

/// Length of the complete lines of a segment and how many there are; cuts a torn tail.
fn scan(path: &Path) -> io::Result<(u64, u64)> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut buf = vec![0u8; 256 << 10];
    let (mut pos, mut last_nl, mut records) = (0u64, 0u64, 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            if b == b'\n' {
                records += 1;
                last_nl = pos + i as u64 + 1;
            }
        }
        pos += n as u64;
    }
    if last_nl < pos {
        f.set_len(last_nl)?;
    }
    Ok((last_nl, records))
}

fn read_cursor(path: &Path) -> Vec<(u64, u64, u64)> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let id = u64::from_str_radix(it.next()?, 16).ok()?;
            let off = it.next()?.parse().ok()?;
            let recs = it.next()?.parse().ok()?;
            Some((id, off, recs))
        })
        .collect()
}

#[cfg(test)]
/// A spool whose second segment cannot be written (its file is `/dev/full`), as a full
/// disk would refuse it.
pub(crate) fn full_after_one_segment(name: &str) -> (Spool, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mqtt-spool-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut s = Spool::open(&dir, 1 << 17).expect("open");
    std::os::unix::fs::symlink("/dev/full", seg_path(&dir, FIRST_ID + 1)).expect("symlink");
    s.set_agent_prefix("b/manager/".into());
    (s, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mqtt-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn segment_format_is_topic_tab_json_newline() {
        let (buf, n) = encode([("a/b", "{\"x\":1}"), ("c", "{}")].into_iter());
        assert_eq!(n, 2);
        assert_eq!(buf, b"a/b\t{\"x\":1}\nc\t{}\n");
        let (recs, used) = decode(b"a/b\t{\"x\":1}\nc\t{}\ntorn\t{");
        assert_eq!(used, 17);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1], ("c".into(), "{}".into(), 17));
    }

    #[test]
    fn append_read_ack_and_reopen() {
        let dir = tempdir("basic");
        let mut s = Spool::open(&dir, 1 << 20).expect("open");
        s.append([("t", "1"), ("t", "2")].into_iter())
            .expect("append");
        s.append([("t", "3")].into_iter()).expect("append");
        let r = s.read(10, 1 << 20).expect("read");
        assert_eq!(
            r.iter().map(|r| r.json.as_str()).collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        s.ack(r[0].seg, r[0].end);
        s.rewind();
        let r = s.read(10, 1 << 20).expect("read");
        assert_eq!(
            r.iter().map(|r| r.json.as_str()).collect::<Vec<_>>(),
            ["2", "3"]
        );
        s.save_cursor().expect("cursor");
        drop(s);
        // A torn tail from a crash is cut when the spool is opened again.
        let seg = fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .expect("segment");
        let mut f = OpenOptions::new()
            .append(true)
            .open(seg.path())
            .expect("seg");
        f.write_all(b"t\t{\"torn").expect("write");
        let mut s = Spool::open(&dir, 1 << 20).expect("reopen");
        s.prepend([("t", "0")].into_iter()).expect("prepend");
        let r = s.read(10, 1 << 20).expect("read");
        assert_eq!(
            r.iter().map(|r| r.json.as_str()).collect::<Vec<_>>(),
            ["0", "2", "3"]
        );
        for rec in &r {
            s.ack(rec.seg, rec.end);
        }
        assert_eq!(s.bytes(), 0);
        assert!(!s.has_unacked());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn limit_drops_oldest_segments() {
        let dir = tempdir("limit");
        let mut s = Spool::open(&dir, 200 << 10).expect("open");
        let json = "x".repeat(1000);
        let mut dropped = 0;
        for i in 0..400 {
            let t = format!("t{i}");
            dropped += s
                .append([(t.as_str(), json.as_str())].into_iter())
                .expect("append");
        }
        assert!(s.bytes() <= 200 << 10);
        assert!(dropped > 0);
        assert_eq!(dropped + s.pending(), 400);
        let r = s.read(1, 1 << 20).expect("read");
        assert_eq!(r[0].topic, format!("t{dropped}"), "the oldest went first");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_keeps_what_was_written_before_it() {
        let (mut s, dir) = full_after_one_segment("full");
        let json = "x".repeat(1000);
        let out = s.append((0..30).map(|_| ("b/1/web/info", json.as_str())));
        assert!(out.written > 0 && out.written < 30, "{out:?}");
        assert!(out.error.is_some());
        assert_eq!(s.pending(), out.written, "what was written stays");
        let r = s.read(100, 1 << 20).expect("read");
        assert_eq!(r.len() as u64, out.written);
        let mut d = Dropped::default();
        s.count(&mut d, "b/manager/warn");
        s.count(&mut d, "b/1/manager/warn");
        assert_eq!(
            d,
            Dropped { lines: 1, agent: 1 },
            "only the base's manager level"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
