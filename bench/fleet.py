#!/usr/bin/python3
"""Measures the fleet over MQTT (docs/CONTRACT.md §10) with the release binary, the private
engine of tests/env.sh and a private mosquitto: the latency of a query for 1 000 lines answered
from the memory ring and from the log files, and the agent's memory (VmHWM) under a burst of
1 000 queries while a container logs 1 000 lines a second. Prints figures; asserts nothing.

    tests/env.sh up && cargo build --release && /usr/bin/python3 bench/fleet.py

Needs Debian's python3-paho-mqtt (installed for /usr/bin/python3).
"""
import json, os, socket, statistics, subprocess, sys, tempfile, threading, time
import paho.mqtt.client as mqtt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/container-logd")
ENGINE = subprocess.run([os.path.join(ROOT, "tests/env.sh"), "host"], capture_output=True,
                        text=True).stdout.strip()
HOST = open("/proc/sys/kernel/hostname").read().strip()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def docker(*args):
    return subprocess.run(["docker", *args], env={**os.environ, "DOCKER_HOST": ENGINE},
                          capture_output=True, text=True)


def hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Asker:
    """One MQTT client that sends queries and times their last parts."""

    def __init__(self, port):
        self.done = {}
        self.lines = {}
        self.cond = threading.Condition()
        self.c = mqtt.Client(client_id=f"bench-{os.getpid()}")
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("bench/replies/#", 0)
        self.c.loop_start()
        time.sleep(0.3)

    def on_message(self, _c, _u, m):
        v = json.loads(m.payload)
        with self.cond:
            cid = v["correlationId"]
            self.lines[cid] = self.lines.get(cid, 0) + len(v.get("logs", []))
            if v.get("last") or "error" in v:
                self.done[cid] = time.monotonic()
                self.cond.notify_all()

    def ask(self, cid, query):
        q = dict(query, replyTo=f"bench/replies/{cid}", correlationId=cid)
        t0 = time.monotonic()
        self.c.publish(f"container-manager/query/{HOST}", json.dumps(q), qos=0)
        with self.cond:
            self.cond.wait_for(lambda: cid in self.done, timeout=30)
        return self.done.get(cid, float("nan")) - t0, self.lines.get(cid, 0)


def agent(d, port, extra):
    env = {"DOCKER_HOST": ENGINE, "LOG_DIR": f"{d}/logs", "STATE_DIR": f"{d}/state",
           "API_LISTEN": "off", "MQTT_BROKER": f"mqtt://127.0.0.1:{port}", "MQTT_QUERY": "true",
           "CONTAINERS_INCLUDE": "bench-fleet-*", "LOG_LEVEL": "warn", **extra}
    return subprocess.Popen([BIN], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def latency(port, label, extra):
    with tempfile.TemporaryDirectory() as d:
        a = agent(d, port, extra)
        docker("rm", "-f", "bench-fleet-web")
        docker("run", "-d", "--network", "none", "--name", "bench-fleet-web", "-l",
               "io.balena.app-id=1001", "-l", "io.balena.service-name=web", "cld-busybox", "sh",
               "-c", "i=1; while [ $i -le 1000 ]; do echo \"line $i " + "x" * 90 +
               "\"; i=$((i+1)); done; sleep 600")
        time.sleep(4)
        asker = Asker(port)
        times = []
        for i in range(21):
            t, n = asker.ask(f"{label}-{i}", {"service": "web", "limit": 1000})
            if n != 1000:
                print(f"{label}: answer {i} had {n} lines", file=sys.stderr)
            times.append(t * 1000)
        print(f"query of 1000 lines from the {label}: median {statistics.median(times[1:]):.1f} ms, "
              f"min {min(times[1:]):.1f} ms, max {max(times[1:]):.1f} ms (20 queries)")
        a.terminate()
        a.wait()
        docker("rm", "-f", "bench-fleet-web")


def burst(port):
    with tempfile.TemporaryDirectory() as d:
        a = agent(d, port, {})
        docker("rm", "-f", "bench-fleet-web")
        docker("run", "-d", "--network", "none", "--name", "bench-fleet-web", "-l",
               "io.balena.app-id=1001", "-l", "io.balena.service-name=web", "cld-busybox", "sh",
               "-c", "i=1; while true; do j=0; while [ $j -lt 100 ]; do echo \"line $i " +
               "x" * 90 + "\"; i=$((i+1)); j=$((j+1)); done; sleep 0.1; done")
        time.sleep(5)
        before = hwm(a.pid)
        asker = Asker(port)
        for i in range(1000):
            q = {"replyTo": f"bench/replies/b{i}", "correlationId": f"b{i}", "limit": 1000}
            asker.c.publish(f"container-manager/query/{HOST}", json.dumps(q), qos=0)
        time.sleep(10)
        after = hwm(a.pid)
        print(f"burst of 1000 queries at ~1000 lines/s: VmHWM {before} -> {after} KiB, "
              f"answered {len(asker.done)}")
        a.terminate()
        a.wait()
        docker("rm", "-f", "bench-fleet-web")


def main():
    port = free_port()
    d = tempfile.mkdtemp()
    with open(f"{d}/m.conf", "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n")
    broker = subprocess.Popen(["mosquitto", "-c", f"{d}/m.conf"])
    time.sleep(0.5)
    try:
        latency(port, "ring", {})
        latency(port, "files", {"LOG_MAX_MEMORY": "1"})
        burst(port)
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
