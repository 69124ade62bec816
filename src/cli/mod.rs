//! The user-facing subcommands besides `run`: `check` (is this host set up right?) and `logs`
//! (read a running agent's logs over its API, like `docker logs`, or over MQTT through its
//! broker: `fleet`).
//!
//! Each returns the process exit code (0 ok, 1 failure, 2 bad usage or configuration) and
//! prints for a person. Nothing here runs inside the agent or changes its state: `check` only
//! probes, `logs` only reads.

pub mod check;
mod fleet;
pub mod logs;

/// Exit code: all is well.
pub const OK: u8 = 0;
/// Exit code: a check failed, or the agent could not be reached.
pub const FAILED: u8 = 1;
/// Exit code: bad usage or a bad configuration variable.
pub const USAGE: u8 = 2;
