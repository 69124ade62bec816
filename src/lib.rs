//! container-logd: follows the logs of every container, keeps them locally, and pushes them to
//! an MQTT broker in real time. `ARCHITECTURE.md` has the map; each module says what it owns.

pub mod agent;
pub mod agentlog;
mod api;
pub mod backend;
pub mod cli;
pub mod config;
mod engine;
mod fleet;
pub mod message;
mod monitor;
mod notify;
#[cfg(any(test, feature = "internals"))]
mod reference;
mod stats;

/// Parsers and renderers for the fuzz targets, the bench's floor reader and its line reader: not
/// an API, only with the `internals` feature.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::engine::{
        chunked, events, frames, http, timestamp, Engine, Error, Event, LineRef, LogLine,
        LogStream, Next, Since, StreamKind,
    };

    /// The reading core of a container's log, for the bench's line reader
    /// (`examples/lines.rs`).
    pub mod lines {
        pub use crate::monitor::lines::{LineCore, Out, Settings};
    }

    /// The API's request head parser and query parser.
    pub mod api {
        pub use crate::api::{http, query};
    }

    /// The pre-speed-up copies the fast paths are checked against (`src/reference/`).
    pub mod reference {
        pub use crate::reference::{chunked, diff, frames, message, timestamp};
    }

    /// The socket and its buffered reader, as the agent's log readers use them.
    pub mod transport {
        pub use crate::engine::transport::{Addr, Conn, Reader, BUF_BYTES};
    }
}
