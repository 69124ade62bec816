//! container-logd: follows the logs of every container, keeps them locally, and pushes them to
//! an MQTT broker in real time. `ARCHITECTURE.md` has the map; each module says what it owns.

pub mod agent;
pub mod agentlog;
pub mod api;
pub mod backend;
pub mod cli;
pub mod config;
pub mod engine;
pub mod message;
pub mod monitor;
pub mod notify;
pub mod stats;
