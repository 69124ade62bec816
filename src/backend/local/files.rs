//! The file writer: `LOG_DIR/{appId}/{serviceName}.log`, one JSON message per line, rotated to
//! `.1`…`.N` at `LOG_FILE_MAX_BYTES`, created 0640.
//!
//! One thread owns every open file. It writes through buffers and flushes when its queue runs
//! dry, so a burst costs one `write(2)` per file rather than one per line; only then does it
//! report the lines as taken. It never fsyncs per line (an SD card would not last).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::backend::Progress;
use crate::message::{LogMessage, Position, SourceKind};

/// What the writer thread is asked to do.
pub enum Cmd {
    Write(Arc<LogMessage>),
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

struct Open {
    out: BufWriter<File>,
    size: u64,
}

pub struct Writer {
    settings: Settings,
    files: HashMap<PathBuf, Open>,
    /// Per container, the last position written since the last flush.
    unflushed: HashMap<Arc<str>, Position>,
    progress: Arc<Progress>,
    index: usize,
    stats: Arc<FileStats>,
    last_error_log: Option<Instant>,
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
    pub fn new(
        settings: Settings,
        progress: Arc<Progress>,
        index: usize,
        stats: Arc<FileStats>,
    ) -> Writer {
        Writer {
            settings,
            files: HashMap::new(),
            unflushed: HashMap::new(),
            progress,
            index,
            stats,
            last_error_log: None,
        }
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
        match cmd {
            Cmd::Write(msg) => self.write(&msg),
            Cmd::Reopen => {
                self.flush();
                self.files.clear();
            }
            Cmd::Sync(done) => {
                self.flush();
                let _ = done.send(());
            }
        }
    }

    fn write(&mut self, msg: &LogMessage) {
        let rel = relative_path(msg);
        let len = msg.json.len() as u64 + 1;
        let result = self.write_line(&rel, msg.json.as_bytes(), len);
        match result {
            Ok(()) => {
                self.stats.written.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(len, Ordering::Relaxed);
                self.stats.failing.store(false, Ordering::Relaxed);
            }
            Err(e) => self.failed(&rel, e),
        }
        // A line we could not write is still reported taken: it lives on in the ring and in
        // MQTT, and holding the cursor back would only duplicate it everywhere else later.
        if let Some(pos) = msg.position {
            let entry = self
                .unflushed
                .entry(msg.origin.container_id.clone())
                .or_default();
            if pos > *entry {
                *entry = pos;
            }
        }
    }

    fn write_line(&mut self, rel: &Path, json: &[u8], len: u64) -> io::Result<()> {
        let needs_rotation = self
            .files
            .get(rel)
            .is_some_and(|f| f.size > 0 && f.size + len > self.settings.max_bytes);
        if needs_rotation {
            self.rotate(rel)?;
        }
        if !self.files.contains_key(rel) {
            if self.files.len() >= MAX_OPEN {
                self.flush();
                self.files.clear();
            }
            let open = self.open(rel)?;
            self.files.insert(rel.to_path_buf(), open);
            // A file reopened at its limit rotates before the first new line.
            if self
                .files
                .get(rel)
                .is_some_and(|f| f.size > 0 && f.size + len > self.settings.max_bytes)
            {
                self.rotate(rel)?;
                let open = self.open(rel)?;
                self.files.insert(rel.to_path_buf(), open);
            }
        }
        let Some(f) = self.files.get_mut(rel) else {
            return Err(io::Error::other("file vanished from the table"));
        };
        f.out.write_all(json)?;
        f.out.write_all(b"\n")?;
        f.size += len;
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
            out: BufWriter::with_capacity(32 * 1024, file),
            size,
        })
    }

    /// `x.log` → `x.log.1` → … → `x.log.N`; the oldest beyond `keep` is removed.
    fn rotate(&mut self, rel: &Path) -> io::Result<()> {
        if let Some(mut f) = self.files.remove(rel) {
            f.out.flush()?;
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
        for (rel, f) in self.files.iter_mut() {
            if let Err(e) = f.out.flush() {
                failed.push((rel.clone(), e));
            }
        }
        for (rel, e) in failed {
            // The buffer's content is lost with the file handle; start the file afresh.
            self.files.remove(&rel);
            self.failed(&rel, e);
        }
        for (container, pos) in self.unflushed.drain() {
            self.progress.taken(self.index, &container, pos);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{line_id, Draft, LabelValue, Level, Origin};

    fn msg(app: &str, service: &str, text: &str, ts: i64) -> Arc<LogMessage> {
        let origin = Arc::new(Origin {
            container_id: Arc::from("c0ffee"),
            name: service.into(),
            app_id: LabelValue::from_label(app),
            service_name: service.into(),
            service_id: None,
            host: Arc::from("h"),
        });
        let pos = Position { ts_ns: ts, seen: 1 };
        Arc::new(LogMessage::new(Draft {
            text: text.into(),
            ts_ns: ts,
            level: Level::Info,
            kind: SourceKind::Container,
            is_stderr: false,
            truncated: false,
            position: Some(pos),
            id: line_id(&origin, pos),
            origin,
        }))
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

    #[test]
    fn writes_rotates_and_reports_progress() {
        let dir = tempdir("rot");
        let progress = Arc::new(Progress::new(1));
        let stats = Arc::new(FileStats::default());
        let (tx, rx) = crossbeam_channel::bounded(16);
        let w = Writer::new(
            Settings {
                dir: dir.clone(),
                max_bytes: 4096,
                keep: 2,
            },
            progress.clone(),
            0,
            stats.clone(),
        );
        let t = std::thread::spawn(move || w.run(rx));
        for i in 0..100 {
            tx.send(Cmd::Write(msg(
                "1001",
                "web",
                &format!("line {i:04} {}", "x".repeat(100)),
                i + 1,
            )))
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
}
