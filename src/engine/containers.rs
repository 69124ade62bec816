//! Decoding the container JSON the engine returns: `/containers/json` (the list, of which we
//! keep the ids) and `/containers/{id}/json` (inspect, into [`ContainerInfo`]).
//!
//! Pure: a body in, values out. Only the fields we use are read, so newer engines that add
//! fields decode the same.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::timestamp::parse_rfc3339_ns;
use super::{ContainerInfo, Error};

#[derive(Deserialize)]
struct ListEntry {
    #[serde(rename = "Id")]
    id: String,
}

#[derive(Deserialize)]
struct Inspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config")]
    config: Option<InspectConfig>,
    #[serde(rename = "State")]
    state: Option<InspectState>,
}

#[derive(Deserialize)]
struct InspectConfig {
    #[serde(rename = "Tty", default)]
    tty: bool,
    /// The engine sends `null` for a container without labels.
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct InspectState {
    #[serde(rename = "Running", default)]
    running: bool,
    #[serde(rename = "Restarting", default)]
    restarting: bool,
    #[serde(rename = "StartedAt", default)]
    started_at: String,
}

/// The ids in a `/containers/json` answer.
pub fn parse_list(body: &[u8]) -> Result<Vec<String>, Error> {
    let entries: Vec<ListEntry> = serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("bad container list: {e}")))?;
    Ok(entries.into_iter().map(|e| e.id).collect())
}

/// A `/containers/{id}/json` answer.
pub fn parse_inspect(body: &[u8]) -> Result<ContainerInfo, Error> {
    let raw: Inspect = serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("bad container inspect: {e}")))?;
    let (tty, labels) = match raw.config {
        Some(c) => (c.tty, c.labels.unwrap_or_default()),
        None => (false, BTreeMap::new()),
    };
    let (running, restarting, started_at_ns) = match raw.state {
        // A container that never started has the zero time, which does not parse: 0 it is.
        Some(s) => (
            s.running,
            s.restarting,
            parse_rfc3339_ns(s.started_at.as_bytes()).unwrap_or(0),
        ),
        None => (false, false, 0),
    };
    Ok(ContainerInfo {
        id: raw.id,
        name: raw.name.trim_start_matches('/').to_string(),
        tty,
        labels,
        running,
        restarting,
        started_at_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::chunked::{BodyDecoder, Framing};
    use crate::engine::http::parse_head;

    const RUNNING: &[u8] = include_bytes!("../../tests/data/inspect-running.http");
    const EXITED: &[u8] = include_bytes!("../../tests/data/inspect-plain.http");
    const LIST: &[u8] = include_bytes!("../../tests/data/list.http");

    fn body(resp: &[u8]) -> Vec<u8> {
        let (head, used) = parse_head(resp).unwrap().unwrap();
        let mut d = BodyDecoder::new(head.framing);
        let mut out = Vec::new();
        d.decode(&resp[used..], &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert!(d.is_done() || head.framing == Framing::UntilEof);
        out
    }

    #[test]
    fn parses_a_running_tty_container() {
        let info = parse_inspect(&body(RUNNING)).unwrap();
        assert_eq!(
            info.id,
            "6ce3d601eea12a194829319ffae0ea9de308ffd67db5dcf9e80acad14ed915a6"
        );
        assert_eq!(info.name, "eng-cap-lbl");
        assert!(info.tty);
        assert!(info.running);
        assert_eq!(info.labels["app"], "web");
        assert_eq!(info.labels["com.example.team"], "ops");
        assert_eq!(
            info.started_at_ns,
            parse_rfc3339_ns(b"2026-11-25T02:20:40.12823242Z").unwrap()
        );
    }

    #[test]
    fn parses_an_exited_container() {
        let info = parse_inspect(&body(EXITED)).unwrap();
        assert_eq!(info.name, "eng-cap-plain");
        assert!(!info.tty);
        assert!(!info.running);
        assert!(info.labels.is_empty());
        assert!(info.started_at_ns > 0);
    }

    #[test]
    fn tolerates_nulls_and_missing_parts() {
        let info = parse_inspect(
            br#"{"Id":"abc","Name":"/x","Config":{"Tty":false,"Labels":null},"State":{"Running":false,"StartedAt":"0001-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert!(info.labels.is_empty());
        assert_eq!(info.started_at_ns, 0);
        assert!(!info.restarting);
        // Between two runs of a restart policy the engine says both.
        let info = parse_inspect(
            br#"{"Id":"abc","State":{"Running":true,"Restarting":true,"StartedAt":"2026-11-25T02:20:40Z"}}"#,
        )
        .unwrap();
        assert!(info.running && info.restarting);
        let info = parse_inspect(br#"{"Id":"abc"}"#).unwrap();
        assert_eq!(info.name, "");
        assert!(parse_inspect(b"{}").is_err());
        assert!(parse_inspect(b"[").is_err());
        assert!(parse_inspect(br#"{"Id":"a","Config":{"Labels":{"k":1}}}"#).is_err());
    }

    #[test]
    fn parses_the_list() {
        assert_eq!(
            parse_list(&body(LIST)).unwrap(),
            ["6e68aeaf408d01b5ca01dce6b593deec49aa4cefb3faf41c730bf456c6388be9"]
        );
        assert!(parse_list(b"[]").unwrap().is_empty());
        assert!(parse_list(b"{}").is_err());
        assert!(parse_list(b"").is_err());
    }
}
