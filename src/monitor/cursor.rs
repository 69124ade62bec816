//! Resume cursors (docs/CONTRACT.md §7): `STATE_DIR/cursors.json`, per container the engine timestamp (ns)
//! of the last line every backend has taken and how many lines at that timestamp were seen.
//!
//! Written atomically (temp file, fsync, rename) and only when something changed, at most every
//! few seconds and at shutdown, to spare an SD card. A cursor never moves backwards.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::message::Position;

#[derive(Serialize, Deserialize, Default)]
struct File {
    version: u32,
    /// When this file was last written (ns since the epoch).
    #[serde(rename = "savedAt")]
    saved_at: i64,
    /// Set by a clean stop.
    #[serde(rename = "stoppedAt", default)]
    stopped_at: Option<i64>,
    containers: HashMap<String, Entry>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct Entry {
    ts: i64,
    seen: u32,
}

pub struct CursorStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Keyed by the id the backends' lanes hold, which is the reader's (one allocation).
    cursors: HashMap<Arc<str>, Position>,
    dirty: bool,
    last_alive: Option<i64>,
}

/// When the cursors are written: at most every `every`, and soon after a container got its
/// first position, so that an agent killed young does not start over (or, for a container
/// without a cursor, from "now") on its next start. Firsts coming together are written
/// together, at most every `soon`. A round that saw the same activity as the round before
/// (nothing read, nothing come or gone, the engine as it was) makes the schedule quiet: the
/// next round is `quiet` later, and the caller has the next line told as a first
/// ([`SaveSchedule::first_taken`]), so an idle agent wakes rarely and a line after a quiet
/// spell is saved as soon as a first.
pub struct SaveSchedule {
    every: Duration,
    soon: Duration,
    quiet: Duration,
    last: Instant,
    first_pending: bool,
    /// The activity the last round saw, and whether it was the round before's.
    seen: Option<Activity>,
    is_quiet: bool,
}

/// What a round compares with the last: lines read, containers followed, engine up.
pub type Activity = (u64, usize, bool);

impl SaveSchedule {
    pub fn new(every: Duration, soon: Duration, quiet: Duration, now: Instant) -> SaveSchedule {
        SaveSchedule {
            every,
            soon,
            quiet,
            last: now,
            first_pending: false,
            seen: None,
            is_quiet: false,
        }
    }

    /// A round saw `activity`; true when it is the last round's (the schedule is quiet now).
    pub fn saw(&mut self, activity: Activity) -> bool {
        self.is_quiet = self.seen == Some(activity);
        self.seen = Some(activity);
        self.is_quiet
    }

    /// A container was taken for the first time.
    pub fn first_taken(&mut self) {
        self.first_pending = true;
    }

    /// How long until [`SaveSchedule::due`] may say yes.
    pub fn wait(&self, now: Instant) -> Duration {
        let after = if self.first_pending {
            self.soon
        } else if self.is_quiet {
            self.quiet
        } else {
            self.every
        };
        after.saturating_sub(now.saturating_duration_since(self.last))
    }

    /// Whether to write now; if so, the next write is counted from `now`.
    pub fn due(&mut self, now: Instant) -> bool {
        if !self.wait(now).is_zero() {
            return false;
        }
        self.last = now;
        self.first_pending = false;
        true
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl CursorStore {
    /// Loads `dir/cursors.json`; a missing file is an empty store, a damaged one is kept aside
    /// as `cursors.json.bad` and reported.
    pub fn load(dir: &Path) -> io::Result<CursorStore> {
        fs::create_dir_all(dir)?;
        let path = dir.join("cursors.json");
        let file: File = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    log::warn!(
                        "{} is damaged ({e}); starting without resume cursors, kept it as cursors.json.bad",
                        path.display()
                    );
                    let _ = fs::rename(&path, dir.join("cursors.json.bad"));
                    File::default()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(e),
        };
        let last_alive = if file.saved_at > 0 {
            Some(file.stopped_at.unwrap_or(file.saved_at))
        } else {
            None
        };
        Ok(CursorStore {
            path,
            inner: Mutex::new(Inner {
                cursors: file
                    .containers
                    .into_iter()
                    .map(|(k, e)| {
                        (
                            Arc::from(k),
                            Position {
                                ts_ns: e.ts,
                                seen: e.seen,
                            },
                        )
                    })
                    .collect(),
                dirty: false,
                last_alive,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Position> {
        self.lock().cursors.get(id).copied()
    }

    /// When the previous run of the agent was last alive (its clean stop, or its last save).
    pub fn last_alive_ns(&self) -> Option<i64> {
        self.lock().last_alive
    }

    /// Moves cursors forward to the positions every backend has taken.
    pub fn advance(&self, safe: &HashMap<Arc<str>, Position>) {
        let mut inner = self.lock();
        for (id, pos) in safe {
            match inner.cursors.get_mut(&**id) {
                Some(cur) if *cur >= *pos => {}
                Some(cur) => {
                    *cur = *pos;
                    inner.dirty = true;
                }
                None => {
                    inner.cursors.insert(id.clone(), *pos);
                    inner.dirty = true;
                }
            }
        }
    }

    /// Drops the cursor of a container the engine removed.
    pub fn forget(&self, id: &str) {
        let mut inner = self.lock();
        if inner.cursors.remove(id).is_some() {
            inner.dirty = true;
        }
    }

    /// Writes the file if anything changed (always when `stopping`).
    pub fn save(&self, stopping: bool) -> io::Result<()> {
        self.write(stopping, stopping)
    }

    /// Writes the file now, changed or not: at start-up, so that the next run knows this one
    /// was alive from now on even if it is killed before its first cursor is saved (a
    /// container started after this moment is then read from its beginning).
    pub fn save_alive(&self) -> io::Result<()> {
        self.write(false, true)
    }

    fn write(&self, stopping: bool, always: bool) -> io::Result<()> {
        let (file, dirty) = {
            let inner = self.lock();
            let now = now_ns();
            let f = File {
                version: 1,
                saved_at: now,
                stopped_at: stopping.then_some(now),
                containers: inner
                    .cursors
                    .iter()
                    .map(|(k, p)| {
                        (
                            k.to_string(),
                            Entry {
                                ts: p.ts_ns,
                                seen: p.seen,
                            },
                        )
                    })
                    .collect(),
            };
            (f, inner.dirty)
        };
        if !dirty && !always {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let written = write_synced(&tmp, &bytes).and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            // A full disk: leave no partial temp file behind; the old cursors stay valid.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Some(dir) = self.path.parent() {
            // The rename itself must reach the disk, or a power cut brings back the old file.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.lock().dirty = false;
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_never_backwards() {
        let dir = std::env::temp_dir().join(format!("cld-cursor-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = CursorStore::load(&dir).expect("load");
        assert_eq!(s.last_alive_ns(), None);
        let id: Arc<str> = Arc::from("abc");
        let mut safe = HashMap::new();
        safe.insert(id.clone(), Position { ts_ns: 10, seen: 2 });
        s.advance(&safe);
        safe.insert(id.clone(), Position { ts_ns: 9, seen: 5 });
        s.advance(&safe);
        s.save(false).expect("save");
        let again = CursorStore::load(&dir).expect("reload");
        assert_eq!(again.get("abc"), Some(Position { ts_ns: 10, seen: 2 }));
        assert!(again.last_alive_ns().is_some());
        fs::write(dir.join("cursors.json"), b"{not json").expect("write");
        let damaged = CursorStore::load(&dir).expect("damaged is not fatal");
        assert_eq!(damaged.get("abc"), None);
        assert!(dir.join("cursors.json.bad").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn saves_soon_after_a_first_position_then_every_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = SaveSchedule::new(ms(2000), ms(250), ms(10_000), t0);
        assert!(!s.due(t0 + ms(100)), "nothing new yet");
        assert_eq!(s.wait(t0 + ms(100)), ms(1900));
        s.first_taken();
        assert_eq!(
            s.wait(t0 + ms(100)),
            ms(150),
            "firsts coming together are saved together"
        );
        assert!(!s.due(t0 + ms(200)));
        assert!(s.due(t0 + ms(250)), "a young agent saves its first cursor");
        assert!(!s.due(t0 + ms(600)), "then waits the full interval");
        assert!(!s.due(t0 + ms(2200)));
        assert!(s.due(t0 + ms(2250)));
        s.first_taken();
        assert!(s.due(t0 + ms(2500)), "another container's first position");
        assert_eq!(s.wait(t0 + ms(2500)), ms(2000));
    }

    #[test]
    fn rounds_slow_down_while_nothing_moves_and_a_line_ends_the_quiet() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = SaveSchedule::new(ms(2000), ms(250), ms(10_000), t0);
        // (round at ms, the activity it saw, quiet after it, the wait before the next round)
        let rounds = [
            (2_000, (5, 1, true), false, 2_000),
            (4_000, (9, 1, true), false, 2_000),
            (6_000, (9, 1, true), true, 10_000),
            (16_000, (9, 1, true), true, 10_000),
            (26_000, (9, 2, true), false, 2_000),
            (28_000, (9, 2, true), true, 10_000),
            (38_000, (9, 2, false), false, 2_000),
        ];
        for (at, activity, quiet, wait) in rounds {
            let now = t0 + ms(at);
            assert!(s.due(now), "round at {at} ms");
            assert_eq!(s.saw(activity), quiet, "round at {at} ms");
            assert_eq!(s.wait(now), ms(wait), "after the round at {at} ms");
        }
        let now = t0 + ms(40_000);
        assert!(s.due(now));
        assert!(s.saw((9, 2, false)), "quiet again");
        s.first_taken();
        assert_eq!(s.wait(now), ms(250), "a line while quiet is saved soon");
    }

    #[test]
    fn a_failed_save_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("cld-cursor-tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = CursorStore::load(&dir).expect("load");
        let mut safe = HashMap::new();
        safe.insert(Arc::<str>::from("abc"), Position { ts_ns: 1, seen: 1 });
        s.advance(&safe);
        // The rename fails: a directory stands where the file goes.
        fs::create_dir_all(dir.join("cursors.json").join("x")).expect("block the file");
        assert!(s.save(false).is_err());
        assert!(!dir.join("cursors.json.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
