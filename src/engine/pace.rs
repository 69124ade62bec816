//! When a log stream reads next: at once, or after a short wait that lets a busy stream's lines
//! gather so that one read takes them together.
//!
//! The engine writes a followed container's lines one by one. A reader that reads again the
//! moment it has handed over its lines gets a few lines per read when the container is busy,
//! and every read wakes it, and wakes the file writer and the MQTT publisher it hands them to:
//! at 100,000 lines a second, about a context switch per line, which cost the whole machine more
//! than the lines themselves (and the engine more too: it wakes a reader that sleeps in its read
//! for each line it writes). A read that found its bytes waiting (it did not block) tells that
//! the stream is busy; the reader then waits [`LINGER`] before its next read, so a read takes
//! what a millisecond of the stream brings. A read that filled the buffer is followed at once:
//! more is waiting, and a wait would only slow a backlog. A quiet stream, whose reads block
//! until a line comes, never waits: its lines go on the moment they are read.
//!
//! Pure: the stream measures its reads and carries out the wait.

use std::time::Duration;

/// A read that returned within this time found its bytes waiting: the stream is busy. A read
/// that blocks for a line the engine has still to write takes longer (a wake-up and a context
/// switch, tens of microseconds at least on a Pi), and a read of waiting bytes far less.
pub const BUSY_READ: Duration = Duration::from_micros(200);
/// How long a busy stream waits before its next read: what it adds at most to a line's way to
/// the broker and the files, and at 100,000 lines a second about 100 lines per read.
pub const LINGER: Duration = Duration::from_millis(1);

/// A read as the stream saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// From the call to its return.
    pub took: Duration,
    /// It filled the read buffer.
    pub filled: bool,
}

/// How long to wait before the read that follows `read` ([`Duration::ZERO`]: read at once).
pub fn wait_after(read: Read) -> Duration {
    if read.took < BUSY_READ && !read.filled {
        LINGER
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_busy_stream_waits_before_its_next_read_and_a_quiet_or_full_one_does_not() {
        // (how long the read took, did it fill the buffer, the wait before the next read)
        let table = [
            // Its bytes were waiting, the buffer had room: the stream is busy.
            (us(5), false, LINGER),
            (us(199), false, LINGER),
            // It blocked until the engine wrote: a quiet stream, or one that caught up.
            (us(200), false, Duration::ZERO),
            (Duration::from_secs(3), false, Duration::ZERO),
            // It filled the buffer: more is waiting now (a backlog), read at once.
            (us(5), true, Duration::ZERO),
            (us(900), true, Duration::ZERO),
        ];
        for (took, filled, want) in table {
            assert_eq!(
                wait_after(Read { took, filled }),
                want,
                "{took:?} filled={filled}"
            );
        }
    }
}
