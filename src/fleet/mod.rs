//! The fleet over MQTT (docs/CONTRACT.md §10): what lets a broker be enough to reach an agent
//! behind NAT. [`link`] is the fleet's own broker connection and thread; on it [`query`]
//! answers log queries (requests and answers as values in [`request`], lines found by
//! [`search`] in the ring and the files) and [`discovery`] publishes Home Assistant's discovery
//! configs and states. The retained status's health is the MQTT backend's (`backend/mqtt`),
//! given by housekeeping.

pub mod discovery;
pub mod link;
pub mod query;
pub mod request;
pub mod search;
