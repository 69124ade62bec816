//! What the fuzz targets share: how a fuzz input becomes a decoder's settings and the pieces
//! it is fed in. The first four bytes of an input are settings, the rest is the stream, so that
//! the seed corpus (`seed-corpus.py`) is the recorded streams of `tests/data` behind four bytes.

use container_logd::internals::reference::diff::{self, Rng};

/// A fuzz input: four bytes of settings, then the stream.
pub struct Input<'a> {
    /// Bits the target reads as it likes (which decoder, how the stream ends, …).
    pub flags: u8,
    /// A number the target reads as it likes (a line cap, a length, …).
    pub knob: u8,
    /// How the stream is cut into pieces: whole (0), a byte at a time (255), or else pieces of
    /// 1 to `split²` bytes at places `seed` picks.
    split: u8,
    seed: u8,
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Option<Input<'a>> {
        let (&[flags, knob, split, seed], body) = data.split_first_chunk::<4>()?;
        Some(Input {
            flags,
            knob,
            split,
            seed,
            body,
        })
    }

    /// The stream cut into the pieces the settings say.
    pub fn pieces(&self) -> Vec<&'a [u8]> {
        match self.split {
            0 => vec![self.body],
            255 => self.body.chunks(1).collect(),
            n => {
                let max_piece = usize::from(n) * usize::from(n);
                diff::split(self.body, &mut self.rng(), max_piece)
            }
        }
    }

    /// A generator for further choices, from the settings.
    pub fn rng(&self) -> Rng {
        Rng::new(u64::from_le_bytes([
            self.flags, self.knob, self.split, self.seed, 0, 0, 0, 1,
        ]))
    }
}

/// A line cap from a byte: the edges that matter (none, 0, 1, the engine's 16 KiB) and others.
pub fn line_cap(knob: u8) -> usize {
    match knob {
        0 => 1 << 20,
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 5,
        5 => 100,
        6 => 16 * 1024 - 1,
        7 => 16 * 1024,
        8 => 16 * 1024 + 1,
        k => usize::from(k) * 64,
    }
}

/// Panics with the difference a check found: what the fuzzer records as a crash.
pub fn check(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}
