//! The file writer: `LOG_DIR/{appId}/{serviceName}.log`, one JSON message per line, rotated to
//! `.1`…`.N` at `LOG_FILE_MAX_BYTES`, created 0640.
//!
//! One thread owns every open file. It writes through buffers and flushes when its queue runs
//! dry, so a burst costs one `write(2)` per file rather than one per line; only then does it
//! report the lines as taken. It never fsyncs per line (an SD card would not last).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rustc_hash::FxHashMap;

use crate::backend::Lane;
use crate::message::{line_position, LogMessage, Origin, Position, SourceKind, RENDER_SLACK};

/// What the writer thread is asked to do.
pub enum Cmd {
    /// Messages, in order.
    WriteMany(Vec<Arc<LogMessage>>),
    /// Close every file; the next line reopens (SIGHUP, after an outside rotation).
    Reopen,
    /// Answer once everything before this command is written and flushed.
    Sync(Sender<()>),
}

/// Counters of the writer, read by health and metrics.
#[derive(Default)]
pub struct FileStats {
    pub written: AtomicU64,
    pub bytes: AtomicU64,
    pub rotations: AtomicU64,
    /// Lines that could not be written (disk full, permissions).
    pub failed: AtomicU64,
    /// The last write failed; cleared by the next success.
    pub failing: AtomicBool,
}

pub struct Settings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub keep: u32,
}

/// More open files than this and the writer closes them all; logs of hundreds of services stay
/// within the process's file limit.
const MAX_OPEN: usize = 64;
/// Write errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// What a file's buffer holds before it is written out (and the most it keeps between writes).
const BUFFER: usize = 32 * 1024;

/// An open log file and the lines not yet written to it. Lines are rendered straight into the
/// buffer: no copy of each line on its way to the file. It is written out as `BufWriter` does
/// (what was written leaves the buffer, the rest stays after an error), and only whole lines.
struct Open {
    file: File,
    buf: Vec<u8>,
    size: u64,
}

impl Open {
    /// A line of `len` bytes fits below `max` (an empty file takes any line).
    fn fits(&self, len: u64, max: u64) -> bool {
        self.size == 0 || self.size + len <= max
    }

    /// Appends a message's line, `len` bytes with its newline.
    fn append(&mut self, msg: &LogMessage, len: u64) -> io::Result<()> {
        if !self.buf.is_empty() && self.buf.len() as u64 + len > BUFFER as u64 {
            self.flush()?;
        }
        msg.write_json_line(&mut self.buf);
        self.size += len;
        if self.buf.len() >= BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffer out.
    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.buf.len() {
                break Ok(());
            }
            match self.file.write(&self.buf[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..written);
        if self.buf.capacity() > 2 * BUFFER && self.buf.len() <= BUFFER {
            // After a line longer than the buffer: give that memory back.
            self.buf.shrink_to(BUFFER + RENDER_SLACK);
        }
        result
    }
}

impl Drop for Open {
    /// One last try for what is buffered, as `BufWriter` makes.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The file last written to, and the origin and kind of its messages. Holding the origin keeps
/// its address from being reused by another container's.
struct Hot {
    origin: Arc<Origin>,
    kind: SourceKind,
    rel: PathBuf,
    file: Open,
}

pub struct Writer {
    settings: Settings,
    /// Keyed by the path relative to `LOG_DIR` as bytes: `Path`'s own hash walks its components.
    files: FxHashMap<OsString, Open>,
    /// Per container, the last position written since the last flush.
    unflushed: FxHashMap<Arc<str>, Position>,
    lane: Lane,
    stats: Arc<FileStats>,
    last_error_log: Option<Instant>,
    /// Per container, the line last found in the files at start. A restart after a crash
    /// resumes from a cursor that may lag the files by a few seconds; lines up to here are
    /// already written and are skipped, so the files hold every line once.
    written_before: HashMap<String, Position>,
    /// The file of the last message, out of `files`: lines come in runs from one container, and
    /// the run's file needs no path built nor looked up for each line. Put back in `files`
    /// before anything else looks there (another file, a rotation, the limit of open files).
    hot: Option<Hot>,
    /// The container of the last line taken and its position, not yet in `unflushed`: lines
    /// come in runs from one container, so the table is updated once per run.
    run: Option<(Arc<Origin>, Position)>,
    /// Lines and bytes written since the counters were last updated (once per command).
    written: (u64, u64),
    /// Whether the last write succeeded: clears `failing` once the command is done.
    last_write_ok: bool,
}

/// Replaces what must not reach a path: separators, `..`, control characters.
pub fn path_part(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "_".into(),
        _ => cleaned,
    }
}

/// The file a message belongs in, relative to `LOG_DIR`.
pub fn relative_path(msg: &LogMessage) -> PathBuf {
    let (dir, file) = match msg.kind {
        SourceKind::Container => (msg.origin.app_id.as_str(), msg.origin.service_name.as_str()),
        SourceKind::System => ("system", "events"),
        SourceKind::Manager => ("manager", "container-logd"),
    };
    PathBuf::from(path_part(dir)).join(format!("{}.log", path_part(file)))
}

impl Writer {
    pub fn new(settings: Settings, lane: Lane, stats: Arc<FileStats>) -> Writer {
        Writer {
            settings,
            files: FxHashMap::default(),
            unflushed: FxHashMap::default(),
            lane,
            written_before: HashMap::new(),
            hot: None,
            run: None,
            written: (0, 0),
            last_write_ok: true,
            stats,
            last_error_log: None,
        }
    }

    /// Reads the tail of every log file under the directory to learn, per container, the last
    /// line already written (see `written_before`).
    pub fn scan_existing(&mut self) {
        let mut found: HashMap<String, Position> = HashMap::new();
        for path in log_files(&self.settings.dir) {
            for (container, pos) in tail_positions(&path, TAIL_SCAN_BYTES) {
                let e = found.entry(container).or_default();
                if pos > *e {
                    *e = pos;
                }
            }
        }
        self.written_before = found;
    }

    /// The thread's body: until the channel closes, write, and flush whenever it runs dry.
    pub fn run(mut self, rx: Receiver<Cmd>) {
        while let Ok(cmd) = rx.recv() {
            self.handle(cmd);
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            self.flush();
        }
        self.flush();
    }

    fn handle(&mut self, cmd: Cmd) {
        self.handle_one(cmd);
        let (lines, bytes) = std::mem::take(&mut self.written);
        if lines > 0 {
            self.stats.written.fetch_add(lines, Ordering::Relaxed);
            self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            if self.last_write_ok && self.stats.failing.load(Ordering::Relaxed) {
                self.stats.failing.store(false, Ordering::Relaxed);
            }
        }
    }

    fn handle_one(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::WriteMany(msgs) => {
                for m in &msgs {
                    self.write(m);
                }
            }
            Cmd::Reopen => {
                self.flush();
                self.hot = None;
                self.files.clear();
            }
            Cmd::Sync(done) => {
                self.flush();
                let _ = done.send(());
            }
        }
    }

    /// True when this line is already in the files (written before a crash).
    fn already_written(&mut self, msg: &LogMessage) -> bool {
        if self.written_before.is_empty() || msg.kind != SourceKind::Container {
            return false;
        }
        let id: &str = &msg.origin.container_id;
        let Some(&last) = self.written_before.get(id) else {
            return false;
        };
        match line_position(msg.id()) {
            Some(p) if p <= last => true,
            _ => {
                // Past the last written line: nothing more to skip for this container.
                self.written_before.remove(id);
                false
            }
        }
    }

    fn write(&mut self, msg: &LogMessage) {
        if self.already_written(msg) {
            self.taken(msg);
            return;
        }
        let len = msg.json_len() as u64 + 1;
        let max = self.settings.max_bytes;
        let result = match &mut self.hot {
            Some(h)
                if Arc::ptr_eq(&h.origin, &msg.origin)
                    && h.kind == msg.kind
                    && h.file.fits(len, max) =>
            {
                h.file.append(msg, len).map_err(|e| (h.rel.clone(), e))
            }
            _ => self.write_cold(msg, len),
        };
        match result {
            Ok(()) => {
                self.written.0 += 1;
                self.written.1 += len;
                self.last_write_ok = true;
            }
            Err((rel, e)) => {
                self.last_write_ok = false;
                self.failed(&rel, e);
            }
        }
        // A line we could not write is still reported taken: it lives on in the ring and in
        // MQTT, and holding the cursor back would only duplicate it everywhere else later.
        self.taken(msg);
    }

    /// Writes a line through the table of open files (another file than the last, or the last
    /// one full); its file becomes the hot one when the line is written.
    fn write_cold(&mut self, msg: &LogMessage, len: u64) -> Result<(), (PathBuf, io::Error)> {
        let rel = match self.hot.take() {
            Some(h) => {
                let same = Arc::ptr_eq(&h.origin, &msg.origin) && h.kind == msg.kind;
                self.files.insert(h.rel.as_os_str().to_owned(), h.file);
                if same {
                    h.rel
                } else {
                    relative_path(msg)
                }
            }
            None => relative_path(msg),
        };
        if let Err(e) = self.make_room(&rel, len) {
            return Err((rel, e));
        }
        let Some(mut file) = self.files.remove(rel.as_os_str()) else {
            return Err((rel, io::Error::other("file vanished from the table")));
        };
        let result = file.append(msg, len);
        self.hot = Some(Hot {
            origin: msg.origin.clone(),
            kind: msg.kind,
            rel: rel.clone(),
            file,
        });
        result.map_err(|e| (rel, e))
    }

    /// Notes a container line as taken; reported to `Progress` at the next flush.
    fn taken(&mut self, msg: &LogMessage) {
        let Some(pos) = msg.position() else {
            return;
        };
        match &mut self.run {
            Some((o, p)) if Arc::ptr_eq(o, &msg.origin) => *p = pos.max(*p),
            _ => {
                self.end_run();
                self.run = Some((msg.origin.clone(), pos));
            }
        }
    }

    fn end_run(&mut self) {
        if let Some((o, pos)) = self.run.take() {
            let entry = self.unflushed.entry(o.container_id.clone()).or_default();
            if pos > *entry {
                *entry = pos;
            }
        }
    }

    /// Makes the file at `rel` open, in the table, with room for a line of `len` bytes
    /// (opened or rotated as needed).
    fn make_room(&mut self, rel: &Path, len: u64) -> io::Result<()> {
        let max = self.settings.max_bytes;
        match self.files.get_mut(rel.as_os_str()) {
            Some(f) if f.fits(len, max) => return Ok(()),
            Some(_) => self.rotate(rel)?,
            None => {}
        }
        if !self.files.contains_key(rel.as_os_str()) {
            if self.files.len() >= MAX_OPEN {
                self.flush();
                self.files.clear();
            }
            let mut open = self.open(rel)?;
            // A file reopened at its limit rotates before the first new line.
            if !open.fits(len, max) {
                drop(open);
                self.rotate(rel)?;
                open = self.open(rel)?;
            }
            self.files.insert(rel.as_os_str().to_owned(), open);
        }
        Ok(())
    }

    fn open(&self, rel: &Path) -> io::Result<Open> {
        let path = self.settings.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(Open {
            file,
            // A line's render reserves a little more than it writes: room for it at the end.
            buf: Vec::with_capacity(BUFFER + RENDER_SLACK),
            size,
        })
    }

    /// `x.log` → `x.log.1` → … → `x.log.N`; the oldest beyond `keep` is removed.
    fn rotate(&mut self, rel: &Path) -> io::Result<()> {
        if let Some(mut f) = self.files.remove(rel.as_os_str()) {
            f.flush()?;
        }
        let base = self.settings.dir.join(rel);
        let numbered = |n: u32| {
            let mut s = base.clone().into_os_string();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        };
        let keep = self.settings.keep;
        if keep == 0 {
            fs::remove_file(&base)?;
        } else {
            let _ = fs::remove_file(numbered(keep));
            for n in (1..keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    fs::rename(&from, numbered(n + 1))?;
                }
            }
            fs::rename(&base, numbered(1))?;
        }
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&mut self) {
        let mut failed: Vec<(PathBuf, io::Error)> = Vec::new();
        if let Some(Err(e)) = self.hot.as_mut().map(|h| h.file.flush()) {
            if let Some(h) = self.hot.take() {
                failed.push((h.rel, e));
            }
        }
        for (rel, f) in self.files.iter_mut() {
            if let Err(e) = f.flush() {
                failed.push((PathBuf::from(rel), e));
            }
        }
        for (rel, e) in failed {
            // The buffer's content is lost with the file handle; start the file afresh.
            self.files.remove(rel.as_os_str());
            self.failed(&rel, e);
        }
        self.end_run();
        for (container, pos) in self.unflushed.drain() {
            self.lane.taken(&container, pos);
        }
    }

    fn failed(&mut self, rel: &Path, e: io::Error) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.stats.failing.store(true, Ordering::Relaxed);
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY)
        {
            self.last_error_log = Some(now);
            log::error!(
                "cannot write {}: {e} ({} lines not written so far)",
                self.settings.dir.join(rel).display(),
                self.stats.failed.load(Ordering::Relaxed)
            );
        }
    }
}

/// How much of each file's end is read at start to find the last lines written.
const TAIL_SCAN_BYTES: u64 = 256 * 1024;

/// Every `*.log` file one or two levels below `dir` (`{appId}/{serviceName}.log`).
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(apps) = fs::read_dir(dir) else {
        return out;
    };
    for app in apps.flatten() {
        let Ok(files) = fs::read_dir(app.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "log") {
                out.push(p);
            }
        }
    }
    out
}

/// The `(containerId, position)` of the lines in the last `max` bytes of a file.
fn tail_positions(path: &Path, max: u64) -> Vec<(String, Position)> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.take(max).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split('\n');
    if start > 0 {
        lines.next(); // The first piece may be the end of a line cut by the seek.
    }
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
        #[serde(rename = "containerId", borrow)]
        container_id: std::borrow::Cow<'a, str>,
    }
    lines
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter_map(|l| Some((l.container_id.into_owned(), line_position(&l.id)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Progress;
    use crate::message::{LabelValue, Origin};

    fn origin(app: &str, service: &str) -> Arc<Origin> {
        Arc::new(Origin::new(
            Arc::from("c0ffee"),
            service.into(),
            LabelValue::from_label(app),
            service.into(),
            None,
            Arc::from("h"),
        ))
    }

    fn msg(app: &str, service: &str, text: &str, ts: i64) -> Arc<LogMessage> {
        line(&origin(app, service), text, ts)
    }

    fn line(origin: &Arc<Origin>, text: &str, ts: i64) -> Arc<LogMessage> {
        crate::message::test_line(origin, text, ts)
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cld-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn paths_cannot_escape() {
        assert_eq!(path_part("../etc"), ".._etc");
        assert_eq!(path_part(".."), "_");
        assert_eq!(path_part("a/b"), "a_b");
        let m = msg("1001", "web", "x", 1);
        assert_eq!(relative_path(&m), PathBuf::from("1001/web.log"));
    }

    /// A file found at its limit when (re)opened rotates before the first new line; one with
    /// room is appended to.
    #[test]
    fn a_file_reopened_at_its_limit_rotates_first() {
        let dir = tempdir("reopen");
        // Every line has the same length; a file holds two and a half of them.
        let line_len = msg("1001", "web", "line 1", 1).json().len() as u64 + 1;
        let run = |n: i64| {
            let (tx, rx) = crossbeam_channel::bounded(16);
            let w = Writer::new(
                Settings {
                    dir: dir.clone(),
                    max_bytes: line_len * 5 / 2,
                    keep: 2,
                },
                Progress::new().lane(),
                Arc::new(FileStats::default()),
            );
            let t = std::thread::spawn(move || w.run(rx));
            tx.send(Cmd::WriteMany(vec![msg(
                "1001",
                "web",
                &format!("line {n}"),
                n,
            )]))
            .expect("send");
            drop(tx);
            t.join().expect("writer");
        };
        let lines = |p: &str| -> Vec<String> {
            fs::read_to_string(dir.join(p))
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("json")["message"]
                        .to_string()
                })
                .collect()
        };
        run(1);
        run(2);
        assert_eq!(
            lines("1001/web.log"),
            ["\"line 1\"", "\"line 2\""],
            "room left: appended"
        );
        run(3);
        assert_eq!(
            lines("1001/web.log.1"),
            ["\"line 1\"", "\"line 2\""],
            "the full file moved aside"
        );
        assert_eq!(
            lines("1001/web.log"),
            ["\"line 3\""],
            "the new line starts a new file"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn writes_rotates_and_reports_progress() {
        let dir = tempdir("rot");
        let progress = Progress::new();
        let stats = Arc::new(FileStats::default());
        let (tx, rx) = crossbeam_channel::bounded(16);
        let w = Writer::new(
            Settings {
                dir: dir.clone(),
                max_bytes: 4096,
                keep: 2,
            },
            progress.lane(),
            stats.clone(),
        );
        let t = std::thread::spawn(move || w.run(rx));
        for i in 0..100 {
            tx.send(Cmd::WriteMany(vec![msg(
                "1001",
                "web",
                &format!("line {i:04} {}", "x".repeat(100)),
                i + 1,
            )]))
            .expect("send");
        }
        drop(tx);
        t.join().expect("writer");
        let read = |p: &str| fs::read_to_string(dir.join(p)).unwrap_or_default();
        let (cur, one, two) = (
            read("1001/web.log"),
            read("1001/web.log.1"),
            read("1001/web.log.2"),
        );
        assert!(!cur.is_empty() && !one.is_empty() && !two.is_empty());
        assert!(
            !dir.join("1001/web.log.3").exists(),
            "keeps only 2 old files"
        );
        assert!(cur.len() <= 4096 && one.len() <= 4096);
        // The newest lines survive, in order, each a whole JSON object.
        let all: Vec<String> = [two, one, cur].concat().lines().map(String::from).collect();
        let last: serde_json::Value =
            serde_json::from_str(all.last().expect("lines")).expect("json");
        assert!(last["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("line 0099"));
        assert!(stats.rotations.load(Ordering::Relaxed) > 0);
        let mode = fs::metadata(dir.join("1001/web.log")).expect("meta");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o640);
        let safe = progress.safe();
        assert_eq!(
            safe.get("c0ffee"),
            Some(&Position {
                ts_ns: 100,
                seen: 1
            })
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// The messages of a log file and its rotated ones (up to `.keep`), oldest first.
    fn messages(dir: &Path, file: &str, keep: u32) -> Vec<String> {
        let mut text = String::new();
        for k in (1..=keep).rev() {
            text += &fs::read_to_string(dir.join(format!("{file}.{k}"))).unwrap_or_default();
        }
        text += &fs::read_to_string(dir.join(file)).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    /// Lines longer than the writer's buffer go out whole and in their place.
    #[test]
    fn a_line_longer_than_the_buffer_is_written_in_its_place() {
        let dir = tempdir("long");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let w = Writer::new(
            Settings {
                dir: dir.clone(),
                max_bytes: 1 << 20,
                keep: 1,
            },
            Progress::new().lane(),
            Arc::new(FileStats::default()),
        );
        let t = std::thread::spawn(move || w.run(rx));
        let o = origin("1001", "web");
        let texts: Vec<String> = (0..40)
            .map(|i| "y".repeat(if i % 7 == 3 { 3 * BUFFER } else { 100 + i }))
            .collect();
        let msgs: Vec<_> = (0..40).map(|i| line(&o, &texts[i], i as i64 + 1)).collect();
        tx.send(Cmd::WriteMany(msgs.clone())).expect("send");
        drop(tx);
        t.join().expect("writer");
        let want: String = msgs.iter().map(|m| m.json() + "\n").collect();
        let got = fs::read_to_string(dir.join("1001/web.log")).expect("file");
        assert!(got == want, "every line whole, in order");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Lines of two services taking turns, in runs and one by one, across rotations and a
    /// reopen: each file holds its service's lines, in order.
    #[test]
    fn services_taking_turns_keep_their_files_through_rotations_and_reopens() {
        let dir = tempdir("turns");
        let (tx, rx) = crossbeam_channel::bounded(64);
        let w = Writer::new(
            Settings {
                dir: dir.clone(),
                max_bytes: 2048,
                keep: 100,
            },
            Progress::new().lane(),
            Arc::new(FileStats::default()),
        );
        let t = std::thread::spawn(move || w.run(rx));
        let origins: HashMap<&str, Arc<Origin>> = ["web", "db"]
            .into_iter()
            .map(|s| (s, origin("1001", s)))
            .collect();
        let mut want: HashMap<&str, Vec<String>> = HashMap::new();
        let mut n = 0;
        for round in 0..30 {
            let mut cmd = Vec::new();
            for k in 0..(round % 4 + 1) * 3 {
                n += 1;
                let service = if (k / (round % 3 + 1)) % 2 == 0 {
                    "web"
                } else {
                    "db"
                };
                let text = format!("{service} {n:04} {}", "x".repeat(60));
                cmd.push(line(&origins[service], &text, n));
                want.entry(service).or_default().push(text);
            }
            tx.send(Cmd::WriteMany(cmd)).expect("send");
            if round == 17 {
                tx.send(Cmd::Reopen).expect("send");
            }
        }
        drop(tx);
        t.join().expect("writer");
        for service in ["web", "db"] {
            let got = messages(&dir, &format!("1001/{service}.log"), 100);
            assert_eq!(got, want[service], "{service}");
            assert!(
                dir.join(format!("1001/{service}.log.2")).exists(),
                "rotated"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_already_in_the_files_are_not_written_again() {
        let dir = tempdir("dedup");
        let run = |from: i64, to: i64| {
            let progress = Progress::new();
            let (tx, rx) = crossbeam_channel::bounded(16);
            let mut w = Writer::new(
                Settings {
                    dir: dir.clone(),
                    max_bytes: 1 << 20,
                    keep: 1,
                },
                progress.lane(),
                Arc::new(FileStats::default()),
            );
            w.scan_existing();
            let t = std::thread::spawn(move || w.run(rx));
            for i in from..=to {
                tx.send(Cmd::WriteMany(vec![msg(
                    "1001",
                    "web",
                    &format!("n{i}"),
                    i,
                )]))
                .expect("send");
            }
            drop(tx);
            t.join().expect("writer");
        };
        run(1, 50);
        // A restart resumes from a lagging cursor and reads 40..=50 again.
        run(40, 80);
        let text = fs::read_to_string(dir.join("1001/web.log")).expect("file");
        let got: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let want: Vec<String> = (1..=80).map(|i| format!("n{i}")).collect();
        assert_eq!(got, want);
        let _ = fs::remove_dir_all(&dir);
    }
}

/// A run of lines shaped like `make bench`'s (one container, 100-byte lines, handed over 64 at a
/// time) through the writer. It is also the harness for measuring the writer's cost per line:
/// `CLD_COST_LINES=30000` and callgrind with `--toggle-collect='*cost_tests*drive*'` count the
/// writer's work alone.
#[cfg(test)]
mod cost_tests {
    use super::*;
    use crate::backend::Progress;

    /// What the writer thread does with the lines: a command of 64, then a flush (its queue
    /// ran dry).
    #[inline(never)]
    fn drive(w: &mut Writer, msgs: &[Arc<LogMessage>]) {
        for chunk in msgs.chunks(64) {
            w.handle(Cmd::WriteMany(chunk.to_vec()));
            w.flush();
        }
    }

    #[test]
    fn a_run_of_lines_is_written_whole_and_reported() {
        let n = crate::message::cost_lines();
        let dir = std::env::temp_dir().join(format!("cld-files-cost-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let progress = Progress::new();
        let stats = Arc::new(FileStats::default());
        let mut w = Writer::new(
            Settings {
                dir: dir.clone(),
                max_bytes: 10 << 20,
                keep: 3,
            },
            progress.lane(),
            stats.clone(),
        );
        let msgs = crate::message::bench_lines(n);
        drive(&mut w, &msgs);
        drop(w);
        let mut want = Vec::new();
        for m in &msgs {
            want.extend_from_slice(m.json().as_bytes());
            want.push(b'\n');
        }
        let mut got = Vec::new();
        for name in ["bench-lines.log.1", "bench-lines.log"] {
            got.extend(fs::read(dir.join("bench-lines").join(name)).unwrap_or_default());
        }
        let _ = fs::remove_dir_all(&dir);
        assert!(got == want, "the files hold every line once, in order");
        assert_eq!(stats.written.load(Ordering::Relaxed), n as u64);
        let last = msgs.last().and_then(|m| m.position());
        assert_eq!(
            progress.safe().get("0123456789abcdef".repeat(4).as_str()),
            last.as_ref()
        );
    }
}
