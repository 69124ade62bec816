//! The MQTT backend (SPEC §3–§5).
