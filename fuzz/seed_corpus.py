#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets, fuzz/corpus/<target>/, from the recorded engine
answers of tests/data (and a few inputs written here for what no recording holds: API requests,
ids). Run it again after a recording changes; `make fuzz` never writes into fuzz/corpus.

Inputs of the stream targets (chunked, frames, events) start with four bytes of settings (see
fuzz/src/lib.rs): flags, knob, split, seed. Bodies are cut at CAP bytes so the corpus stays
small; the long-line recordings keep their first 16 KiB fragment whole.
"""
import pathlib
import re
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CORPUS = ROOT / "fuzz" / "corpus"
CAP = 20_000
TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")

# The log streams and the decoder the agent reads each with: frames' flag bits
# (1: Podman's framed decoder, 2: TTY).
LOGS = {
    "logs-plain": 0,
    "logs-small": 0,
    "logs-smalltty": 2,
    "logs-tty-16k": 2,
    "logs-tty": 2,
    "podman-burst-since": 1,
    "podman-burst": 1,
    "podman-split-compat": 0,
    "podman-split-since": 1,
    "podman-split": 1,
    "podman-tty-compat": 2,
    "podman-tty": 3,
}


def split_response(raw):
    """The head (with its blank line) and the body of a recorded answer."""
    end = raw.index(b"\r\n\r\n") + 4
    return raw[:end], raw[end:]


def dechunk(body):
    """The data of a chunked body (up to its last chunk, or as far as it goes)."""
    out = bytearray()
    while body:
        line, _, body = body.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2:]
    return bytes(out)


def settings(flags=0, knob=0, split=0, seed=0):
    return bytes([flags, knob, split, seed])


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    responses = {p.stem: p.read_bytes() for p in sorted(DATA.glob("*.http"))}
    timestamps = []
    for name, raw in responses.items():
        head, body = split_response(raw)
        write("engine_http", name, raw[: len(head) + 64])
        if b"transfer-encoding: chunked" not in head.lower():
            continue
        # Chunked framing (flags 2), whole and cut in pieces of up to 9 bytes.
        write("chunked", name, settings(flags=2) + body[:CAP])
        if len(body) < 1000:
            write("chunked", name + "-cut", settings(flags=2, split=3, seed=7) + body)
        data = dechunk(body)
        if name in LOGS:
            write("frames", name, settings(flags=LOGS[name]) + data[:CAP])
            timestamps += TIMESTAMP.findall(data)
        if "events" in name:
            write("events", name, settings() + data[:CAP])
            write("events", name + "-cut", settings(split=5, seed=3) + data[:4000])
    # Other framings, caps, flushes and ends of the log decoder on the small streams.
    small = dechunk(split_response(responses["logs-small"])[1])
    write("chunked", "length", settings(flags=1, knob=9) + small)
    write("chunked", "eof", settings(flags=0, split=2) + small)
    write("frames", "small-capped-bytewise", settings(knob=4, split=255) + small)
    podman = dechunk(split_response(responses["podman-split"])[1])
    write("frames", "podman-flushed-cut", settings(flags=1 | 4 | (2 << 3), split=4) + podman)
    # Timestamps: as the engines write them, and the forms the parser must refuse or scale.
    run = sorted(set(timestamps))
    write("timestamps", "recorded-run", b"\n".join(run[:400]))
    for i, t in enumerate([
        b"2026-11-25T02:10:05.620164341Z",
        b"2026-11-25T02:10:05.62Z",
        b"2026-11-29T21:00:17Z",
        b"2026-11-24T20:40:05.5-05:30",
        b"0001-01-01T00:00:00Z",
        b"2262-04-11T23:47:16.854775807Z",
    ]):
        write("timestamps", f"form-{i}", t)
    # Texts for the JSON escaping: recorded lines and the bytes that must be escaped.
    plain = dechunk(split_response(responses["logs-plain"])[1])
    write("json_escape", "recorded", plain[:400])
    write("json_escape", "controls", bytes(range(0, 0x20)) + b"\"\\\x7f caf\xc3\xa9 \xff")
    # Ids: timestamp (i64 LE), count (u32 LE), id length, id bytes (hex of them).
    cid = bytes.fromhex("3f2a9c1b7d0e55aa3f2a9c1b7d0e55aa")
    for i, (ts, seen) in enumerate([(1_795_572_605_620_164_341, 1), (0, 0), (-1, 7), (2**63 - 1, 2**32 - 1)]):
        write("ids", f"id-{i}", struct.pack("<qIB", ts, seen, 12) + cid)
    # API requests and query strings.
    for i, req in enumerate([
        b"GET /api/v1/logs?limit=5&level=warn HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\nHEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
        b"GET /api/v1/logs?follow=1 HTTP/1.1\nHost: x\nContent-Length: 3\n\nabc",
    ]):
        write("api_http", f"req-{i}", req)
    for i, url in enumerate([
        b"/api/v1/logs?appId=1001&service=web&level=error&since=2026-11-25T02:10:05Z&until=1795572605621&limit=10&q=a+b%20c",
        b"/api/v1/logs?since=5&until=4",
        b"/api/v1/logs?limit=0&x=%zz&follow",
    ]):
        write("api_query", f"url-{i}", url)
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"{CORPUS.relative_to(ROOT)}: {sum(1 for f in CORPUS.rglob('*') if f.is_file())} files, {total} bytes")


if __name__ == "__main__":
    main()
