#!/usr/bin/env python3
"""Loads the live page of container-logd in headless Chromium, waits, prints the DOM and
saves a screenshot. Used by tests/ui.rs.

`--dump-dom` cannot do this: it dumps at the load event, before any stream event arrives, and
`--virtual-time-budget` never ends while an EventSource is open. So this talks to Chromium
over the DevTools protocol on a pipe (`--remote-debugging-pipe`: fd 3 in, fd 4 out, messages
ended by NUL), which needs nothing but the standard library. It never reaches beyond the URL
it is given.

usage: page.py URL WAIT_MS SCREENSHOT.png [TEXT]

With TEXT, it reads the page every 100 ms until TEXT is in it (at most WAIT_MS), so a slow
machine gets more time and a fast one less; without, it waits WAIT_MS.
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

url, wait_ms, shot = sys.argv[1], int(sys.argv[2]), sys.argv[3]
want = sys.argv[4] if len(sys.argv) > 4 else None
chrome = os.environ.get("CHROMIUM", "/usr/bin/chromium")
profile = tempfile.mkdtemp(prefix="cld-chromium-")
to_chrome_r, to_chrome_w = os.pipe()
from_chrome_r, from_chrome_w = os.pipe()


def child_fds():
    # Chromium reads commands on fd 3 and writes answers on fd 4.
    # Duplicates first, so that neither pipe end is overwritten by the other and the copies
    # at 3 and 4 lose close-on-exec.
    a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
    os.dup2(a, 3)
    os.dup2(b, 4)


proc = subprocess.Popen(
    [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
     "--disable-background-networking", "--disable-component-update", "--disable-sync",
     "--user-data-dir=" + profile, "--window-size=1200,800", "--remote-debugging-pipe",
     "about:blank"],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    preexec_fn=child_fds, pass_fds=(3, 4))
os.close(to_chrome_r)
os.close(from_chrome_w)
buf = b""
next_id = 0


def call(method, params=None, session=None):
    global buf, next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    os.write(to_chrome_w, json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buf:
            chunk = os.read(from_chrome_r, 1 << 20)
            if not chunk:
                raise SystemExit("chromium closed the pipe")
            buf += chunk
        raw, buf = buf.split(b"\0", 1)
        answer = json.loads(raw)
        if answer.get("id") == next_id:
            if "error" in answer:
                raise SystemExit(method + ": " + json.dumps(answer["error"]))
            return answer["result"]


try:
    target = call("Target.createTarget", {"url": url})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    call("Emulation.setDeviceMetricsOverride",
         {"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": False}, session)
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        # Before the document exists the answer has no value yet.
        html = call("Runtime.evaluate",
                    {"expression": "document.documentElement.outerHTML", "returnByValue": True},
                    session)["result"].get("value") or ""
        if want is None:
            if time.monotonic() >= deadline:
                break
        elif want in html or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    png = call("Page.captureScreenshot", {"format": "png"}, session)["data"]
    os.makedirs(os.path.dirname(os.path.abspath(shot)), exist_ok=True)
    with open(shot, "wb") as f:
        f.write(base64.b64decode(png))
    sys.stdout.write(html)
    try:
        call("Browser.close")
    except SystemExit:
        pass
finally:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
    subprocess.run(["rm", "-rf", profile])
