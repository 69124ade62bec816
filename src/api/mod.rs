//! The HTTP API of docs/CONTRACT.md §6: `/api/v1/logs`, `/api/v1/logs/stream`,
//! `/api/v1/containers`, `/api/v1/health`, `/metrics` and the live page at `/`.
//!
//! `server.rs` owns the sockets (accept loop, connection cap, handler threads, timeouts) and
//! `http.rs` the bytes of a head; this file answers one request from memory in well under a
//! millisecond, and a live stream ([`stream`]) runs on the handler thread of its connection.
//! With `API_TOKEN` set, every request but the page needs `Authorization: Bearer <token>` or,
//! for a browser's EventSource, which cannot send headers, `?access_token=<token>`. This module
//! only reads: it never changes the pipeline.

pub mod http;
pub mod query;
pub mod server;
pub mod stream;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::local::ring::Ring;
use crate::backend::Backend;
use crate::config::Secret;
use crate::message::push_json_str;
use crate::monitor::Shared;
use crate::stats::{write_metrics, Metric, Stats};
use http::Request;
use query::{split_url, Filter};
use server::{Counters, Limits, Server};
use stream::Streams;

/// The live page, built into the binary so it works offline and needs no build step.
const PAGE: &str = include_str!("page.html");

/// What the API reads from.
pub struct Context {
    pub ring: Arc<Ring>,
    pub monitor: Arc<Shared>,
    pub backends: Vec<Arc<dyn Backend>>,
    pub stats: Arc<Stats>,
    pub token: Option<Secret>,
}

/// What [`handle`] reads: the context, the live streams, the server's counters and limits.
struct Parts {
    ctx: Context,
    streams: Arc<Streams>,
    counters: Arc<Counters>,
    limits: Limits,
}

pub struct Api {
    server: Server,
    pub addr: SocketAddr,
}

impl Api {
    pub fn start(addr: SocketAddr, ctx: Context, limits: Limits) -> std::io::Result<Api> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let counters = Arc::new(Counters::default());
        let api = Arc::new(Parts {
            ctx,
            streams: Arc::new(Streams::default()),
            counters: counters.clone(),
            limits,
        });
        let handler = Box::new(move |req: &Request, out: &mut TcpStream| handle(&api, req, out));
        let server = Server::start(listener, limits, counters, handler)?;
        let addr = server.addr;
        Ok(Api { server, addr })
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// One answer from memory.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// Whether a client may keep a copy; only the metrics may be cached.
    no_store: bool,
    /// A 401's `WWW-Authenticate`.
    challenge: bool,
}

fn json(status: u16, body: String) -> Answer {
    Answer {
        status,
        content_type: "application/json",
        body: body.into_bytes(),
        no_store: true,
        challenge: false,
    }
}

fn error(status: u16, text: &str) -> Answer {
    let mut body = String::from("{\"error\":");
    push_json_str(&mut body, text);
    body.push('}');
    json(status, body)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorised(ctx: &Context, req: &Request) -> bool {
    let Some(token) = &ctx.token else {
        return true;
    };
    // The page holds no data, and a browser cannot send a header when it opens it.
    let url = req.url.as_str();
    if url == "/" || url.starts_with("/?") || url.starts_with("/#") {
        return true;
    }
    let by_query = split_url(url).is_ok_and(|(_, pairs)| {
        pairs
            .iter()
            .any(|(k, v)| k == "access_token" && same(v.as_bytes(), token.expose().as_bytes()))
    });
    by_query
        || req.header("Authorization").is_some_and(|h| {
            h.strip_prefix("Bearer ")
                .is_some_and(|t| same(t.trim().as_bytes(), token.expose().as_bytes()))
        })
}

/// Answers one request on `out`; returns whether the connection may serve another.
fn handle(api: &Parts, req: &Request, out: &mut TcpStream) -> bool {
    let ctx = &api.ctx;
    let authorised = authorised(ctx, req);
    let get = req.method == "GET" || req.method == "HEAD";
    let answer = if !authorised {
        Answer {
            challenge: true,
            ..error(
                401,
                "missing or wrong bearer token (Authorization: Bearer <API_TOKEN>)",
            )
        }
    } else if !get {
        error(405, "only GET is supported")
    } else if let Ok(("/api/v1/logs/stream", pairs)) = split_url(&req.url) {
        match stream::serve(&api.streams, &ctx.ring, req, &pairs, out) {
            // A stream ends with its connection.
            Ok(()) => return false,
            Err(e) => error(e.status(), &e.to_string()),
        }
    } else {
        route(api, &req.url)
    };
    let keep = req.keep_alive();
    let mut extra = Vec::with_capacity(2);
    if answer.no_store {
        extra.push(("Cache-Control", "no-store"));
    }
    if answer.challenge {
        extra.push(("WWW-Authenticate", "Bearer"));
    }
    let (status, ctype) = (answer.status, answer.content_type);
    server::respond(
        out,
        status,
        ctype,
        &extra,
        &answer.body,
        req.is_head(),
        keep,
    )
    .is_ok()
        && keep
}

fn route(api: &Parts, url: &str) -> Answer {
    let ctx = &api.ctx;
    let (path, pairs) = match split_url(url) {
        Ok(x) => x,
        Err(e) => return error(400, &e.to_string()),
    };
    match path {
        "/" => Answer {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: PAGE.as_bytes().to_vec(),
            no_store: true,
            challenge: false,
        },
        "/api/v1/logs" => match Filter::parse(&pairs, &["access_token"]) {
            Ok(f) => logs(ctx, &f),
            Err(e) => error(400, &e.to_string()),
        },
        "/api/v1/containers" => containers(ctx),
        "/api/v1/health" => health(api),
        "/metrics" => Answer {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: metrics(api).into_bytes(),
            no_store: false,
            challenge: false,
        },
        _ => error(404, &format!("no such path: {path}")),
    }
}

fn logs(ctx: &Context, f: &Filter) -> Answer {
    let found = ctx.ring.query(f.limit, |m| f.matches(m));
    let mut body = String::with_capacity(2 + found.len() * 512);
    body.push('[');
    for (i, m) in found.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        m.write_json(&mut body);
    }
    body.push(']');
    json(200, body)
}

fn containers(ctx: &Context) -> Answer {
    let list: Vec<serde_json::Value> = ctx
        .monitor
        .views()
        .into_iter()
        .map(|v| {
            serde_json::json!({
                "id": v.id,
                "name": v.name,
                "appId": v.app_id,
                "serviceName": v.service_name,
                "state": v.state,
                "linesRead": v.lines,
                "lastLineTime": v.last_line_ms,
            })
        })
        .collect();
    json(200, serde_json::Value::Array(list).to_string())
}

/// The health document and whether all is well.
pub fn health_doc(ctx: &Context) -> (bool, serde_json::Value) {
    let s = &ctx.stats;
    let docker_up = s.docker_up.load(Ordering::Relaxed);
    let cursors_failing = s.cursor_save_failing.load(Ordering::Relaxed);
    let mut ok = docker_up && !cursors_failing;
    let mut doc = serde_json::json!({
        "docker": {
            "connected": docker_up,
            "host": ctx.monitor.cfg.docker_host,
            "apiVersion": s.api_version.lock().map(|v| v.clone()).unwrap_or_default(),
            "containers": ctx.monitor.views().len(),
            "errors": Stats::get(&s.engine_errors),
            "reconnects": Stats::get(&s.engine_reconnects),
        },
        "mqtt": null,
        "spoolBytes": 0,
        "dropped": 0,
        "linesRead": Stats::get(&s.lines_read),
        "invalidUtf8": Stats::get(&s.invalid_utf8),
        "truncated": Stats::get(&s.truncated),
        "suppressed": Stats::get(&s.suppressed),
        "gaps": Stats::get(&s.gaps),
        "cursors": {
            "saveFailing": cursors_failing,
            "saveErrors": Stats::get(&s.cursor_save_errors),
        },
        "managerDropped": crate::agentlog::FORWARD_DROPPED.load(Ordering::Relaxed),
        "uptimeSeconds": s.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let mut dropped = 0u64;
    let mut spool = 0u64;
    for b in &ctx.backends {
        let sum = b.summary();
        ok &= sum.ok;
        dropped += sum.dropped;
        spool += sum.spool_bytes;
        doc[b.name()] = b.health();
    }
    doc["dropped"] = dropped.into();
    doc["spoolBytes"] = spool.into();
    doc["status"] = if ok { "ok" } else { "degraded" }.into();
    (ok, doc)
}

fn health(api: &Parts) -> Answer {
    let (ok, mut doc) = health_doc(&api.ctx);
    doc["streams"] = api.streams.active().into();
    doc["api"] = api.counters.health(api.limits.max_connections);
    json(if ok { 200 } else { 503 }, doc.to_string())
}

fn metrics(api: &Parts) -> String {
    let ctx = &api.ctx;
    let mut out = String::with_capacity(4096);
    write_metrics(&mut out, "", &line_metrics(&ctx.stats));
    write_metrics(&mut out, "", &engine_metrics(ctx));
    api.streams.metrics(&mut out);
    api.counters.metrics(&mut out);
    for b in &ctx.backends {
        b.metrics(&mut out);
    }
    out
}

/// What the readers did with the lines they read.
fn line_metrics(s: &Stats) -> [Metric<'static>; 7] {
    [
        (
            "container_logd_lines_read_total",
            "counter",
            "Container log lines read from the engine.",
            Stats::get(&s.lines_read),
        ),
        (
            "container_logd_bytes_read_total",
            "counter",
            "Bytes of container log lines read.",
            Stats::get(&s.bytes_read),
        ),
        (
            "container_logd_invalid_utf8_total",
            "counter",
            "Lines in which invalid UTF-8 was replaced.",
            Stats::get(&s.invalid_utf8),
        ),
        (
            "container_logd_truncated_total",
            "counter",
            "Lines cut at MAX_LINE_BYTES.",
            Stats::get(&s.truncated),
        ),
        (
            "container_logd_suppressed_total",
            "counter",
            "Lines dropped by the rate limit.",
            Stats::get(&s.suppressed),
        ),
        (
            "container_logd_gaps_total",
            "counter",
            "Resumes that found lines rotated away by the engine.",
            Stats::get(&s.gaps),
        ),
        (
            "container_logd_cursor_save_errors_total",
            "counter",
            "Saves of the resume cursors that failed.",
            Stats::get(&s.cursor_save_errors),
        ),
    ]
}

/// The engine link and the containers followed over it, and the agent's uptime.
fn engine_metrics(ctx: &Context) -> [Metric<'static>; 5] {
    let s = &ctx.stats;
    [
        (
            "container_logd_engine_errors_total",
            "counter",
            "Broken engine streams and in-band engine errors.",
            Stats::get(&s.engine_errors),
        ),
        (
            "container_logd_engine_reconnects_total",
            "counter",
            "Reconnects to the engine.",
            Stats::get(&s.engine_reconnects),
        ),
        (
            "container_logd_engine_up",
            "gauge",
            "1 when the engine answers.",
            u64::from(s.docker_up.load(Ordering::Relaxed)),
        ),
        (
            "container_logd_containers",
            "gauge",
            "Containers followed.",
            ctx.monitor.views().len() as u64,
        ),
        (
            "container_logd_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            s.started.elapsed().as_secs(),
        ),
    ]
}
