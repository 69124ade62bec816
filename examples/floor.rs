//! The floor of `make bench`'s instructions phase: reads one container's whole log from the
//! engine (no follow, timestamps, stdout and stderr, as the agent asks for them) and only
//! decodes it, with the agent's own socket reader and parsers (HTTP head, chunked body, frames),
//! counting lines and making no messages. Its instructions per line, under callgrind, are what
//! any reader of the engine's stream pays; the agent's are measured against them.
//!
//!   DOCKER_HOST=unix:///path/docker.sock \
//!     cargo run --release --features internals --example floor -- CONTAINER
//!
//! Prints `lines=N bytes=M` (content bytes, without timestamps and line ends) on stdout.

use std::process::ExitCode;
use std::time::Duration;

use container_logd::internals::chunked::BodyDecoder;
use container_logd::internals::frames::Decoder;
use container_logd::internals::transport::{Addr, Conn, Reader};
use container_logd::internals::{http, LineRef};

/// The agent's default `MAX_LINE_BYTES`.
const MAX_LINE_BYTES: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let Some(container) = std::env::args().nth(1) else {
        eprintln!("usage: floor CONTAINER (DOCKER_HOST names the engine)");
        return ExitCode::from(2);
    };
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    match read_all(&host, &container) {
        Ok((lines, bytes)) => {
            println!("lines={lines} bytes={bytes}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the container's log to the end of the stream; returns (lines, content bytes).
fn read_all(host: &str, container: &str) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let addr = Addr::parse(host).map_err(|why| format!("DOCKER_HOST {host:?}: {why}"))?;
    let conn = Conn::connect(&addr, TIMEOUT)?;
    let path = format!("/containers/{container}/logs?follow=0&stdout=1&stderr=1&timestamps=1");
    let mut request = Vec::with_capacity(256);
    http::write_request(&mut request, &path, false);
    let (mut reader, head) = Reader::send(conn, &request, TIMEOUT)?;
    if !head.is_success() {
        return Err(format!("the engine answered {}", head.status).into());
    }
    reader.set_timeout(None)?;
    let mut body = BodyDecoder::new(head.framing);
    let mut frames = Decoder::new(false, MAX_LINE_BYTES);
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut count = |l: LineRef<'_>| {
        lines += 1;
        bytes += l.bytes.len() as u64;
    };
    loop {
        let got = reader.read()?;
        if got.is_empty() {
            body.on_eof()?;
            frames.finish(&mut count);
            break;
        }
        body.decode(got, &mut |b| frames.feed(b, &mut count))?;
        if body.is_done() {
            frames.finish(&mut count);
            break;
        }
    }
    Ok((lines, bytes))
}
