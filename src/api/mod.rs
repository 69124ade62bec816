//! The HTTP API of docs/CONTRACT.md §6 on tiny_http: `/api/v1/logs`, `/api/v1/logs/stream`,
//! `/api/v1/containers`, `/api/v1/health`, `/metrics` and the live page at `/`.
//!
//! One thread (`api`) answers requests one after another; every answer is built from memory in
//! well under a millisecond, and a live stream is handed to a thread of its own ([`stream`]).
//! With `API_TOKEN` set, every request but the page needs `Authorization: Bearer <token>` or,
//! for a browser's EventSource, which cannot send headers, `?access_token=<token>`. This module
//! only reads: it never changes the pipeline.

pub mod query;
pub mod stream;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response, Server};

use crate::backend::local::ring::Ring;
use crate::backend::Backend;
use crate::config::Secret;
use crate::message::push_json_str;
use crate::monitor::Shared;
use crate::stats::{write_metrics, Metric, Stats};
use query::{split_url, Filter};
use stream::Streams;

/// The live page, built into the binary so it works offline and needs no build step.
const PAGE: &str = include_str!("page.html");
/// A client that takes no bytes for this long is dropped, so a stuck reader cannot hold a
/// thread (tiny_http has no timeouts of its own).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API reads from.
pub struct Context {
    pub ring: Arc<Ring>,
    pub monitor: Arc<Shared>,
    pub backends: Vec<Arc<dyn Backend>>,
    pub stats: Arc<Stats>,
    pub token: Option<Secret>,
}

pub struct Api {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Api {
    pub fn start(addr: SocketAddr, ctx: Context) -> std::io::Result<Api> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        with_write_timeout(&listener, WRITE_TIMEOUT)?;
        let server = Server::from_listener(listener, None)
            .map_err(|e| std::io::Error::other(format!("cannot listen on {addr}: {e}")))?;
        let server = Arc::new(server);
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let s = server.clone();
        let ctx = Arc::new(ctx);
        let streams = Arc::new(Streams::default());
        let thread = std::thread::Builder::new()
            .name("api".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for req in s.incoming_requests() {
                    handle(&ctx, &streams, req);
                }
            })?;
        Ok(Api {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    pub fn stop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets `SO_SNDTIMEO` on the listening socket; Linux hands it on to every accepted
/// connection, which is the only way to give tiny_http's connections a write timeout.
fn with_write_timeout(listener: &TcpListener, d: Duration) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    // A duplicate of the listening socket, seen as a stream only to set SO_SNDTIMEO on it;
    // dropping it closes the duplicate, not the listener.
    let fd = listener.as_fd().try_clone_to_owned()?;
    std::net::TcpStream::from(fd).set_write_timeout(Some(d))
}

fn header(name: &str, value: &str) -> Header {
    // Both are ASCII literals of ours; from_bytes fails only on non-ASCII.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).unwrap_or_else(|_| unreachable!())
    })
}

fn json(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
}

fn error(status: u16, text: &str) -> Response<std::io::Cursor<Vec<u8>>> {
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
    let url = req.url();
    if url == "/" || url.starts_with("/?") || url.starts_with("/#") {
        return true;
    }
    let by_query = split_url(url).is_ok_and(|(_, pairs)| {
        pairs
            .iter()
            .any(|(k, v)| k == "access_token" && same(v.as_bytes(), token.expose().as_bytes()))
    });
    by_query
        || req.headers().iter().any(|h| {
            h.field.equiv("Authorization")
                && h.value
                    .as_str()
                    .strip_prefix("Bearer ")
                    .is_some_and(|t| same(t.trim().as_bytes(), token.expose().as_bytes()))
        })
}

fn handle(ctx: &Context, streams: &Arc<Streams>, req: Request) {
    let url = req.url().to_string();
    let authorised = authorised(ctx, &req);
    let get = *req.method() == Method::Get || *req.method() == Method::Head;
    if authorised && get {
        if let Ok(("/api/v1/logs/stream", pairs)) = split_url(&url) {
            if let Err(failed) = stream::open(streams, &ctx.ring, req, &pairs) {
                let (e, req) = *failed;
                let _ = req.respond(error(e.status(), &e.to_string()));
            }
            return;
        }
    }
    let resp = if !authorised {
        error(
            401,
            "missing or wrong bearer token (Authorization: Bearer <API_TOKEN>)",
        )
        .with_header(header("WWW-Authenticate", "Bearer"))
    } else if *req.method() != Method::Get && *req.method() != Method::Head {
        error(405, "only GET is supported")
    } else {
        route(ctx, streams, &url)
    };
    let _ = req.respond(resp);
}

fn route(ctx: &Context, streams: &Streams, url: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let (path, pairs) = match split_url(url) {
        Ok(x) => x,
        Err(e) => return error(400, &e.to_string()),
    };
    match path {
        "/" => Response::from_data(PAGE.as_bytes().to_vec())
            .with_header(header("Content-Type", "text/html; charset=utf-8"))
            .with_header(header("Cache-Control", "no-store")),
        "/api/v1/logs" => match Filter::parse(&pairs, &["access_token"]) {
            Ok(f) => logs(ctx, &f),
            Err(e) => error(400, &e.to_string()),
        },
        "/api/v1/containers" => containers(ctx),
        "/api/v1/health" => health(ctx, streams),
        "/metrics" => Response::from_data(metrics(ctx, streams).into_bytes())
            .with_header(header("Content-Type", "text/plain; version=0.0.4")),
        _ => error(404, &format!("no such path: {path}")),
    }
}

fn logs(ctx: &Context, f: &Filter) -> Response<std::io::Cursor<Vec<u8>>> {
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

fn containers(ctx: &Context) -> Response<std::io::Cursor<Vec<u8>>> {
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

fn health(ctx: &Context, streams: &Streams) -> Response<std::io::Cursor<Vec<u8>>> {
    let (ok, mut doc) = health_doc(ctx);
    doc["streams"] = streams.active().into();
    json(if ok { 200 } else { 503 }, doc.to_string())
}

fn metrics(ctx: &Context, streams: &Streams) -> String {
    let mut out = String::with_capacity(4096);
    write_metrics(&mut out, "", &line_metrics(&ctx.stats));
    write_metrics(&mut out, "", &engine_metrics(ctx));
    streams.metrics(&mut out);
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
