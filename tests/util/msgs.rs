//! Messages made by hand for the tests that drive a backend directly (`mqtt_backend`,
//! `mqtt_v5`): container lines at known positions, lifecycle and agent messages.

use std::sync::Arc;

use container_logd::message::{
    Draft, Id, LabelValue, Level, LogMessage, Origin, Position, SourceKind,
};

/// The engine time of line 0.
pub const TS0: i64 = 1_700_000_000_000_000_000;
/// The host every message names.
pub const HOST: &str = "pi-test";

pub fn origin(app: &str, service: &str, cid: &str) -> Arc<Origin> {
    Arc::new(Origin::new(
        Arc::from(cid),
        service.into(),
        LabelValue::from_label(app),
        service.into(),
        Some(LabelValue::from_label(app)),
        Arc::from(HOST),
    ))
}

/// The position of line `n`: each line has a time of its own.
pub fn pos(n: i64) -> Position {
    Position {
        ts_ns: TS0 + n,
        seen: 1,
    }
}

/// Container line `n` of `o`; error lines come on stderr.
pub fn line(o: &Arc<Origin>, n: i64, level: Level, text: &str) -> Arc<LogMessage> {
    Arc::new(LogMessage::new(Draft {
        text: text.into(),
        ts_ns: TS0 + n,
        level,
        kind: SourceKind::Container,
        origin: o.clone(),
        is_stderr: level == Level::Error,
        truncated: false,
        position: Some(pos(n)),
        id: Id::Line(pos(n)),
    }))
}

/// A message without a position: a lifecycle event of `web`, or the agent's own.
pub fn event(kind: SourceKind, level: Level, text: &str) -> Arc<LogMessage> {
    let o = match kind {
        SourceKind::Manager => Arc::new(Origin::manager(Arc::from(HOST))),
        _ => origin("1001", "web", "c-web"),
    };
    Arc::new(LogMessage::new(Draft {
        text: text.into(),
        ts_ns: TS0,
        level,
        kind,
        origin: o,
        is_stderr: false,
        truncated: false,
        position: None,
        id: Id::Given(format!("ev-{TS0}-{text}")),
    }))
}
