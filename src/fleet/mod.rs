//! The fleet over MQTT (docs/CONTRACT.md §10): what lets a broker be enough to reach an agent
//! behind NAT. [`query`] answers log queries sent over MQTT on a connection of its own, from
//! the ring and the files ([`search`]), with requests and answers as values in [`request`].
//! The retained status's health is the MQTT backend's (`backend/mqtt`), given by housekeeping.

pub mod query;
pub mod request;
pub mod search;
