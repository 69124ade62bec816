//! The pre-speed-up code, kept to check the fast paths against: the chunked body decoder, the
//! log stream decoder and the RFC 3339 parser of `engine`, and the id and JSON string routines
//! of `message`, as they were before they were rewritten for speed. The unit tests and the
//! differential fuzz targets (`fuzz/`) run each new routine and its old copy on the same input
//! and require the same output, the same errors and the same state. Compiled only for tests and
//! with the `internals` feature; nothing in the agent calls it.

pub mod chunked;
pub mod diff;
pub mod frames;
pub mod message;
pub mod timestamp;

#[cfg(test)]
mod tests;
