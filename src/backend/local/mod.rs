//! The local backend: every message goes into the memory ring at
//! once and, with `LOG_FILE_PERSISTENCE`, through a bounded channel to the file-writer thread.
//!
//! A full channel blocks the caller, which is a container reader: the engine keeps the log
//! until we catch up. Nothing is dropped here.

pub mod files;
pub mod ring;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::backend::{Backend, Lane, Summary};
use crate::message::LogMessage;
use files::{Cmd, FileStats, Settings, Writer};
use ring::Ring;

/// Commands waiting for the file writer. A command carries up to a reader's batch of 64
/// messages, so at most 1024 messages wait: enough for bursts, small enough for a Pi.
const QUEUE: usize = 16;

pub struct LocalBackend {
    ring: Arc<Ring>,
    tx: Mutex<Option<Sender<Cmd>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<FileStats>,
    lane: Lane,
    persist: bool,
}

impl LocalBackend {
    /// Starts the file writer (when `files` is given) and returns the backend.
    pub fn start(
        memory: usize,
        files: Option<Settings>,
        lane: Lane,
    ) -> std::io::Result<Arc<LocalBackend>> {
        let stats = Arc::new(FileStats::default());
        let (tx, writer) = match files {
            Some(settings) => {
                std::fs::create_dir_all(&settings.dir)?;
                let (tx, rx) = crossbeam_channel::bounded(QUEUE);
                let mut w = Writer::new(settings, lane.clone(), stats.clone());
                w.scan_existing();
                let handle = std::thread::Builder::new()
                    .name("file-writer".into())
                    .stack_size(256 * 1024)
                    .spawn(move || w.run(rx))?;
                (Some(tx), Some(handle))
            }
            None => (None, None),
        };
        Ok(Arc::new(LocalBackend {
            ring: Arc::new(Ring::new(memory)),
            persist: tx.is_some(),
            tx: Mutex::new(tx),
            writer: Mutex::new(writer),
            stats,
            lane,
        }))
    }

    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    fn sender(&self) -> Option<Sender<Cmd>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Closes every log file so the next line reopens it (SIGHUP).
    pub fn reopen(&self) {
        if let Some(tx) = self.sender() {
            let _ = tx.send(Cmd::Reopen);
        }
    }

    /// Waits until everything handed over so far is written and flushed; false on timeout.
    /// The watchdog uses it to see that the writer still moves.
    pub fn sync(&self, timeout: Duration) -> bool {
        let Some(tx) = self.sender() else {
            return true;
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if tx.send_timeout(Cmd::Sync(done_tx), timeout).is_err() {
            return false;
        }
        done_rx.recv_timeout(timeout).is_ok()
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn log(&self, msg: &Arc<LogMessage>) {
        self.log_many(std::slice::from_ref(msg));
    }

    fn log_many(&self, msgs: &[Arc<LogMessage>]) {
        self.ring.push_many(msgs);
        match self.sender() {
            Some(tx) => {
                if tx.send(Cmd::WriteMany(msgs.to_vec())).is_err() {
                    self.stats
                        .failed
                        .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                }
            }
            None => {
                for m in msgs {
                    if let Some(pos) = m.position() {
                        self.lane.taken(&m.origin.container_id, pos);
                    }
                }
            }
        }
    }

    fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            ok: !self.stats.failing.load(Ordering::Relaxed),
            dropped: self.stats.failed.load(Ordering::Relaxed),
            spool_bytes: 0,
        }
    }

    fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "memory": self.ring.held(),
            "files": self.persist,
            "written": self.stats.written.load(Ordering::Relaxed),
            "writeErrors": self.stats.failed.load(Ordering::Relaxed),
            "failing": self.stats.failing.load(Ordering::Relaxed),
        })
    }

    fn metrics(&self, out: &mut String) {
        let s = &self.stats;
        let rows = [
            (
                "container_logd_local_memory_messages",
                "gauge",
                "Messages held in the memory ring.",
                self.ring.held() as u64,
            ),
            (
                "container_logd_local_written_total",
                "counter",
                "Lines written to log files.",
                s.written.load(Ordering::Relaxed),
            ),
            (
                "container_logd_local_written_bytes_total",
                "counter",
                "Bytes written to log files.",
                s.bytes.load(Ordering::Relaxed),
            ),
            (
                "container_logd_local_rotations_total",
                "counter",
                "Log file rotations.",
                s.rotations.load(Ordering::Relaxed),
            ),
            (
                "container_logd_local_dropped_total",
                "counter",
                "Lines that could not be written to a file.",
                s.failed.load(Ordering::Relaxed),
            ),
        ];
        crate::stats::write_metrics(out, "", &rows);
    }
}
