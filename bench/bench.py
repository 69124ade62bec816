#!/usr/bin/env python3
"""bench/bench.py owns the measurements of `make bench`: it runs container-logd, the raw engine
reader, mosquitto_pub and the naive `docker logs -f | mosquitto_pub` pipeline against one
private engine and a private mosquitto, and prints every figure beside the baseline measured in
the same run (table on stdout, JSON in --out). bench/run.sh sets up the engine and the build;
bench/README.md says what each figure means. Python 3 standard library only.
"""
import argparse
import calendar
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
LABEL = "cld-bench=1"
LINE = ("bench line " + "0123456789" * 9)[:99]  # 99 characters + "\n" = 100 bytes
BASE = "bench/logs"
STATUS = "bench/status"
PROBE = "bench/probe"

procs = []  # every process we started, stopped by pid in cleanup()
args = None
work = None


def log(*a):
    print("[bench %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM, wait=10.0):
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(wait)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def docker(*a, check=True, capture=True):
    r = subprocess.run(["docker", *a], env=dict(os.environ, DOCKER_HOST=args.docker_host),
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError("docker %s: %s" % (" ".join(a[:3]), r.stderr.strip()))
    return r.stdout.strip() if capture else ""


def rm_containers():
    ids = docker("ps", "-aq", "--filter", "label=" + LABEL, check=False).split()
    if ids:
        docker("rm", "-f", *ids, check=False)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- /proc readings ---------------------------------------------------------------------------

def cpu_s(pid):
    """utime+stime of a live process, seconds (clock-tick resolution)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_ns(pid):
    """On-CPU time of all live threads of a process, nanoseconds (schedstat resolution)."""
    total = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def cpu_by_thread(pid):
    """utime+stime per live thread name (reader threads `logs-*` summed), seconds."""
    out = {}
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        name = "logs-*" if name.startswith("logs-") else name
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def engine_cpu():
    """utime+stime of dockerd (it reads the log files and serves the follow streams), or None."""
    try:
        return cpu_s(args.engine_pid) if args.engine_pid else None
    except OSError:
        return None


def engine_cost(c0, lines):
    c1 = engine_cpu()
    return (c1 - c0) / lines * 1e6 if c0 is not None and c1 is not None and lines else None


def host_cpu():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
            elif k == "Threads":
                out[k] = int(v)
    return out


# ---- broker and subscriber --------------------------------------------------------------------

class Broker:
    def __init__(self, name):
        self.port = free_port()
        self.dir = os.path.join(work, "broker-" + name)
        os.makedirs(self.dir)
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 2000000\nmax_queued_bytes 0\n"
                    "log_dest file %s/mosquitto.log\n" % (self.port, self.dir))
        self.proc = spawn(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def close(self):
        stop(self.proc)


class Subscriber:
    """mosquitto_sub writing `receipt-unix-time topic payload` lines to a file."""

    def __init__(self, broker, name):
        self.path = os.path.join(work, "sub-%s.txt" % name)
        self.f = open(self.path, "wb")
        self.proc = spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                           "-i", "bench-sub-" + name, "-t", BASE + "/standalone/#",
                           "-t", STATUS, "-t", PROBE, "-F", "%U %t %p"],
                          stdout=self.f, stderr=subprocess.DEVNULL)
        self.rd = open(self.path, "rb")
        self.buf = b""
        self.lines = 0       # log messages (not batches) seen so far
        self.last_growth = time.time()
        self.status = b""
        self.broker = broker
        # Subscribed once a probe comes back.
        deadline = time.time() + 10
        while time.time() < deadline:
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port),
                            "-t", PROBE, "-m", "probe"], check=False, timeout=10)
            time.sleep(0.2)
            if b" " + PROBE.encode() + b" " in open(self.path, "rb").read():
                return
        raise RuntimeError("subscriber did not get its probe")

    def poll(self):
        data = self.rd.read()
        if data:
            self.last_growth = time.time()
            self.buf += data
            cut = self.buf.rfind(b"\n") + 1
            done, self.buf = self.buf[:cut], self.buf[cut:]
            for m in re.finditer(rb"(?m)^\S+ (\S+) (.{0,40})", done):
                topic = m.group(1)
                if topic.endswith(b"/batch"):
                    c = re.match(rb'\{"count":(\d+)', m.group(2))
                    self.lines += int(c.group(1)) if c else 0
                elif topic.startswith(BASE.encode() + b"/standalone/"):
                    self.lines += 1
                elif topic == STATUS.encode():
                    self.status = m.group(2)
        return self.lines

    def wait_for(self, n, idle=5.0, timeout=90.0, producers_done=lambda: True):
        """Until n log lines arrived, or nothing came for `idle` s once producers are done."""
        start = time.time()
        while time.time() - start < timeout:
            if self.poll() >= n:
                return True
            if producers_done() and time.time() - self.last_growth > idle:
                return False
            time.sleep(0.2)
        return False

    def close(self):
        stop(self.proc)
        self.f.close()
        self.rd.close()

    def records(self):
        """(receipt s, engine-timestamp ms or None, id or None) of every log line received."""
        out = []
        with open(self.path, "rb") as f:
            for line in f:
                t, _, rest = line.rstrip(b"\n").partition(b" ")
                topic, _, payload = rest.partition(b" ")
                if not topic.startswith(BASE.encode() + b"/standalone/"):
                    continue
                rt = float(t)
                if topic.endswith(b"/batch"):
                    for m in json.loads(payload)["logs"]:
                        out.append((rt, engine_ms(m), m.get("id")))
                elif topic.endswith(b"/naive"):
                    # `docker logs -t`: RFC 3339 engine timestamp first
                    out.append((rt, rfc3339_ms(payload.split(b" ", 1)[0]), None))
                elif topic.endswith(b"/mosq"):
                    out.append((rt, None, None))
                else:
                    m = json.loads(payload)
                    out.append((rt, engine_ms(m), m.get("id")))
        return out


def engine_ms(m):
    """The engine's time of a line, ms: the nanoseconds inside the stable id
    (`{container12}-{unix ns}-{n}`) when present, else `timestamp` (whole ms, up to 1 ms early)."""
    try:
        return int(m["id"].split("-")[1]) / 1e6
    except (KeyError, IndexError, ValueError, AttributeError):
        return m.get("timestamp")


def rfc3339_ms(b):
    """2026-11-25T02:30:01.123456789Z -> unix ms (float)."""
    m = re.match(rb"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(\.\d+)?Z", b)
    if not m:
        return None
    secs = calendar.timegm(tuple(int(x) for x in m.groups()[:6]))
    frac = float(m.group(7)) if m.group(7) else 0.0
    return (secs + frac) * 1000.0


# ---- containers -------------------------------------------------------------------------------

def start_containers(prefix, n, script, script_args):
    """n containers running `script` once /go/flag exists; returns (ids, flag path)."""
    gate = os.path.join(work, "gate-" + prefix)
    os.makedirs(gate)
    wrapped = "until [ -e /go/flag ]; do sleep 0.05; done; " + script

    def one(i):
        return docker("run", "-d", "--network", "none", "--label", LABEL, "--name",
                      "%s-%d" % (prefix, i), "--log-driver", "json-file",
                      "--log-opt", "max-size=64m", "--log-opt", "max-file=2",
                      "-v", gate + ":/go:ro", "cld-busybox", "sh", "-c", wrapped, "bench",
                      *script_args)

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        ids = list(ex.map(one, range(n)))
    return ids, os.path.join(gate, "flag")


def flat_out(prefix, n, k):
    return start_containers(prefix, n, 'yes "$1" | head -n "$2"', [LINE, str(k)])


def paced(prefix, lines, per_tick=10, tick="0.01"):
    """About per_tick lines every `tick` seconds (1k lines/s asked for; forks slow it a little)."""
    script = ('i=0; while [ $i -lt "$2" ]; do yes "$1" | head -n "$3"; sleep "$4"; '
              'i=$((i+1)); done')
    return start_containers(prefix, 1, script,
                            [LINE, str(lines // per_tick), str(per_tick), tick])


def running(ids):
    out = docker("inspect", "-f", "{{.State.Running}}", *ids, check=False)
    return out.count("true")


def api_version():
    return docker("version", "--format", "{{.Server.APIVersion}}")


# ---- statistics -------------------------------------------------------------------------------

def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def latency_stats(lat_ms):
    return {"p50_ms": pct(lat_ms, 50), "p99_ms": pct(lat_ms, 99),
            "max_ms": max(lat_ms) if lat_ms else None, "n": len(lat_ms)}


# ---- measurements -----------------------------------------------------------------------------

def raw_reader(prefix, n, k, paced_lines=None):
    """Engine read limit: one curl per container on the follow stream, lines counted here."""
    if paced_lines:
        ids, flag = paced(prefix, paced_lines)
    else:
        ids, flag = flat_out(prefix, n, k)
    ver = api_version()
    sock = args.docker_host[len("unix://"):]
    results = [None] * len(ids)

    def read(i, cid):
        p = spawn(["curl", "-sN", "--unix-socket", sock,
                   "http://docker/v%s/containers/%s/logs?follow=1&stdout=1&stderr=1&timestamps=1"
                   % (ver, cid)], stdout=subprocess.PIPE)
        count, first, last, lat, pending = 0, None, None, [], b""
        while True:
            chunk = p.stdout.read1(1 << 20)
            if not chunk:
                break
            now = time.time()
            first = first or now
            last = now
            count += chunk.count(b"\n")
            if paced_lines:
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                for m in re.finditer(rb"(\d{4}-\d\d-\d\dT[\d:.]+Z) ", pending[:cut]):
                    ts = rfc3339_ms(m.group(1))
                    lat.append(now * 1000.0 - ts)
                pending = pending[cut:]
        p.wait()
        results[i] = (count, first, last, lat)

    threads = [threading.Thread(target=read, args=(i, c)) for i, c in enumerate(ids)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    e0 = engine_cpu()
    open(flag, "w").close()
    for t in threads:
        t.join(120)
    rm_containers()
    got = sum(r[0] for r in results if r)
    first = min(r[1] for r in results if r and r[1])
    last = max(r[2] for r in results if r and r[2])
    out = {"lines": got, "expected": paced_lines or n * k,
           "lines_per_s": got / (last - first) if last > first else None,
           "engine_cpu_s_per_mline": engine_cost(e0, got)}
    if paced_lines:
        out.update(latency_stats([x for r in results for x in r[3]]))
    return out


def agent_env(broker, name, qos, batch):
    d = os.path.join(work, "agent-" + name)
    os.makedirs(os.path.join(d, "logs"))
    os.makedirs(os.path.join(d, "state"))
    return dict(os.environ, DOCKER_HOST=args.docker_host, LOG_DIR=d + "/logs",
                STATE_DIR=d + "/state", API_LISTEN="127.0.0.1:%d" % free_port(),
                MQTT_BROKER="mqtt://127.0.0.1:%d" % broker.port, MQTT_QOS=str(qos),
                MQTT_BATCH="true" if batch else "false", MQTT_BATCH_INTERVAL_MS="1000",
                MQTT_BATCH_MAX="50", MQTT_BASE_TOPIC=BASE, MQTT_STATUS_TOPIC=STATUS,
                MQTT_CLIENT_ID="bench-agent-" + name, SINCE="all",
                LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warn"),
                # As the systemd unit runs it (etc/container-logd.service).
                MALLOC_ARENA_MAX=os.environ.get("MALLOC_ARENA_MAX", "1"),
                GLIBC_TUNABLES=os.environ.get(
                    "GLIBC_TUNABLES",
                    "glibc.malloc.tcache_max=128:glibc.rtld.nns=1:glibc.rtld.optional_static_tls=0")), d


def agent_health(agent):
    """The agent's /api/v1/health document, or the error that prevented reading it."""
    import urllib.request
    try:
        with urllib.request.urlopen("http://%s/api/v1/health" % agent.api, timeout=5) as r:
            return json.load(r)
    except Exception as e:  # a 503 (degraded) carries the document too
        body = getattr(e, "read", lambda: b"")()
        try:
            return json.loads(body)
        except ValueError:
            return {"error": str(e)}


def start_agent(broker, sub, name, qos, batch, binary=None, wrap=(), env_extra=None,
                online_s=15):
    """The agent (run under `wrap`, e.g. valgrind, when given), once its retained status says
    it is online."""
    env, d = agent_env(broker, name, qos, batch)
    env.update(env_extra or {})
    log_file = open(os.path.join(d, "agent.log"), "wb")
    p = spawn([*wrap, binary or args.agent], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    p.api = env["API_LISTEN"]
    p.dir = d
    deadline = time.time() + online_s
    while time.time() < deadline:
        sub.poll()
        if b"online" in sub.status:
            return p
        if p.poll() is not None:
            raise RuntimeError("agent exited with %s; see %s/agent.log" % (p.returncode, d))
        time.sleep(0.1)
    raise RuntimeError("agent did not come online; see %s/agent.log" % d)


def agent_run(name, qos, batch, n, k, paced_lines=None):
    broker = Broker(name)
    sub = Subscriber(broker, name)
    agent = None
    try:
        agent = start_agent(broker, sub, name, qos, batch)
        if paced_lines:
            ids, flag = paced("b-" + name, paced_lines)
            expected = paced_lines
        else:
            ids, flag = flat_out("b-" + name, n, k)
            expected = n * k
        time.sleep(0.5)
        cpu0 = cpu_s(agent.pid)
        threads0 = cpu_by_thread(agent.pid)
        e0 = engine_cpu()
        open(flag, "w").close()
        # Up to 20 s without an arrival before giving up: longer than the agent's own
        # acknowledgement watchdog (10 s), so a broker that stalls for a while shows as a slow
        # run, and only what never arrives as loss.
        complete = sub.wait_for(expected, idle=20.0, producers_done=lambda: running(ids) == 0,
                                timeout=args.run_timeout)
        time.sleep(0.3)
        sub.poll()
        cpu1 = cpu_s(agent.pid)
        e_mline = engine_cost(e0, sub.lines)
        threads1 = cpu_by_thread(agent.pid)
        st = status(agent.pid)
        health = agent_health(agent)
        if not complete and os.environ.get("BENCH_GDB"):
            # What each thread was doing and what sat in the socket queues when it fell short.
            with open(os.path.join(work, "ss-%s.txt" % name), "w") as f:
                subprocess.run(["ss", "-tnpi"], stdout=f, stderr=subprocess.STDOUT, timeout=20)
            for who, pid in (("agent", agent.pid), ("broker", broker.proc.pid)):
                with open(os.path.join(work, "gdb-%s-%s.txt" % (who, name)), "w") as f:
                    f.write("cpu %s s, then %s s a second later\n" % (cpu_s(pid), time.sleep(1) or cpu_s(pid)))
                    f.flush()
                    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                                   stdout=f, stderr=subprocess.STDOUT, timeout=120)
        stop(agent)
    finally:
        stop(agent)
        sub.close()
        broker.close()
        rm_containers()
    recs = sub.records()
    ids_seen = set(r[2] for r in recs)
    first = min(r[0] for r in recs) if recs else 0
    last = max(r[0] for r in recs) if recs else 0
    uniq = len(ids_seen)
    out = {"lines": uniq, "expected": expected, "lost": expected - uniq,
           "duplicates": len(recs) - uniq, "complete": complete,
           "lines_per_s": uniq / (last - first) if last > first else None,
           "cpu_s": cpu1 - cpu0, "vm_hwm": st["VmHWM"], "threads": st["Threads"],
           "engine_cpu_s_per_mline": e_mline}
    if not complete:
        # What the agent itself said when the subscriber gave up: tells a stalled pipeline
        # from lines that never reached the broker.
        out["agent_health"] = health
    # Where the CPU went; threads that ended during the run (readers of exited containers)
    # only show in the remainder.
    by = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
    by["ended threads"] = out["cpu_s"] - sum(by.values())
    out["cpu_s_by_thread"] = {k: round(v, 2) for k, v in sorted(by.items()) if abs(v) >= 0.005}
    out["cpu_s_per_mline"] = out["cpu_s"] / uniq * 1e6 if uniq else None
    if paced_lines:
        out.update(latency_stats([r[0] * 1000.0 - r[1] for r in recs if r[1] is not None]))
    return out


def rusage_wait(p, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid, st, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = st
            return ru
        time.sleep(0.05)
    p.kill()
    _, st, ru = os.wait4(p.pid, 0)
    p.returncode = st
    return ru


def naive_run(name, k, paced_lines=None):
    """`docker logs -f -t C | mosquitto_pub -l -q 1`: what a user writes instead."""
    broker = Broker(name)
    sub = Subscriber(broker, name)
    try:
        if paced_lines:
            ids, flag = paced("n-" + name, paced_lines)
            expected = paced_lines
        else:
            ids, flag = flat_out("n-" + name, 1, k)
            expected = k
        env = dict(os.environ, DOCKER_HOST=args.docker_host)
        dl = spawn(["docker", "logs", "-f", "-t", ids[0]], env=env, stdout=subprocess.PIPE,
                   stderr=subprocess.DEVNULL)
        mp = spawn(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-l",
                    "-t", BASE + "/standalone/naive"], stdin=dl.stdout,
                   stderr=subprocess.DEVNULL)
        dl.stdout.close()
        time.sleep(0.5)
        open(flag, "w").close()
        ru_dl = rusage_wait(dl, args.run_timeout)
        ru_mp = rusage_wait(mp, 30)
        sub.wait_for(expected, idle=2.0, timeout=10)
    finally:
        sub.close()
        broker.close()
        rm_containers()
    recs = sub.records()
    first = min(r[0] for r in recs) if recs else 0
    last = max(r[0] for r in recs) if recs else 0
    got = len(recs)
    cpu = (ru_dl.ru_utime + ru_dl.ru_stime + ru_mp.ru_utime + ru_mp.ru_stime)
    out = {"lines": got, "expected": expected, "lost": expected - got,
           "lines_per_s": got / (last - first) if last > first else None, "cpu_s": cpu,
           "cpu_s_per_mline": cpu / got * 1e6 if got else None,
           "vm_hwm": (ru_dl.ru_maxrss + ru_mp.ru_maxrss) * 1024}
    if paced_lines:
        out.update(latency_stats([r[0] * 1000.0 - r[1] for r in recs if r[1] is not None]))
    return out


def mosq_baseline(name, qos, n, clients=1):
    """What mosquitto takes from well-behaved clients: `clients` mosquitto_pub -l fed agent-sized
    messages (n in all), their input held open until the subscriber has them all (so nothing is
    dropped at their exit)."""
    broker = Broker(name)
    sub = Subscriber(broker, name)
    payload = json.dumps({"id": "0123456789ab-1764037800000123456-0", "message": LINE,
                          "timestamp": 1764037800000, "level": "info",
                          "source": {"type": "container", "name": "bench-0"},
                          "appId": "standalone", "serviceId": None, "serviceName": "bench-0",
                          "containerId": "0123456789ab" * 5 + "0123", "isStdErr": False,
                          "isSystem": False, "host": socket.gethostname()},
                         separators=(",", ":")).encode() + b"\n"
    try:
        mps, writers = [], []
        for i in range(clients):
            mp = spawn(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q",
                        str(qos), "-l", "-i", "bench-pub-%s-%d" % (name, i),
                        "-t", BASE + "/standalone/mosq"], stdin=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
            part = n // clients + (1 if i < n % clients else 0)
            w = threading.Thread(target=mp.stdin.write, args=(payload * part,))
            mps.append(mp)
            writers.append(w)
        for w in writers:
            w.start()
        complete = sub.wait_for(n, idle=5.0, timeout=args.run_timeout)
        for w, mp in zip(writers, mps):
            w.join(10)
            mp.stdin.close()
            stop(mp)
    finally:
        sub.close()
        broker.close()
    recs = sub.records()
    first = min(r[0] for r in recs) if recs else 0
    last = max(r[0] for r in recs) if recs else 0
    return {"lines": len(recs), "expected": n, "complete": complete, "payload_bytes": len(payload),
            "lines_per_s": len(recs) / (last - first) if last > first else None}


def idle_run(n):
    """Agent and naive pipelines following n quiet containers, side by side (one pipeline per
    container, for at most --idle-naive of them: 200 `docker logs` processes would take
    gigabytes)."""
    broker = Broker("idle")
    sub = Subscriber(broker, "idle")
    agent, static, pipes = None, None, []
    # Only the bench's containers, should the engine run others.
    only = {"CONTAINERS_INCLUDE": "i-idle-*"}
    try:
        agent = start_agent(broker, sub, "idle", 1, False, env_extra=only)
        if args.agent_static:
            # The same code linked as the ARM builds are (static glibc), following the same
            # containers at the same time.
            static = start_agent(broker, sub, "idle-static", 1, False, binary=args.agent_static,
                                 env_extra=only)
        time.sleep(2)
        st0 = status(agent.pid)
        st0_static = status(static.pid) if static else None
        ids, flag = start_containers("i-idle", n, "echo ready; exec sleep 100000", [])
        open(flag, "w").close()
        env = dict(os.environ, DOCKER_HOST=args.docker_host)
        naive = ids[:max(0, min(n, args.idle_naive))]
        for cid in naive:
            dl = spawn(["docker", "logs", "-f", cid], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
            mp = spawn(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                        "-l", "-t", BASE + "/standalone/naive"], stdin=dl.stdout,
                       stderr=subprocess.DEVNULL)
            dl.stdout.close()
            pipes += [dl, mp]
        cpu_window = min(30.0, args.idle_secs)
        time.sleep(max(0.0, args.idle_secs - cpu_window))
        a0, n0, t0 = cpu_ns(agent.pid), sum(cpu_ns(p.pid) for p in pipes), time.time()
        time.sleep(cpu_window)
        a1, n1, t1 = cpu_ns(agent.pid), sum(cpu_ns(p.pid) for p in pipes), time.time()
        st = status(agent.pid)
        st_static = status(static.pid) if static else None
        naive_rss = sum(status(p.pid)["VmRSS"] for p in pipes)
        naive_threads = sum(status(p.pid)["Threads"] for p in pipes)
        followed = agent_health(agent)
        stop(agent)
        stop(static)
    finally:
        stop(agent)
        stop(static)
        for p in pipes:
            stop(p)
        sub.close()
        broker.close()
        rm_containers()
    per = lambda rss, rss0: (rss - rss0) / n if n else None
    return {"containers": n, "idle_s": args.idle_secs, "cpu_window_s": t1 - t0,
            "naive_pipelines": len(naive), "agent_health": followed,
            "agent_rss_per_container": per(st["VmRSS"], st0["VmRSS"]),
            "static_rss_per_container": per(st_static["VmRSS"], st0_static["VmRSS"])
            if st_static else None,
            "agent_rss": st["VmRSS"], "agent_threads": st["Threads"],
            "agent_rss_anon": st["RssAnon"], "agent_rss_file": st["RssFile"],
            "agent_rss_no_containers": st0["VmRSS"], "agent_threads_no_containers": st0["Threads"],
            "agent_cpu_pct": (a1 - a0) / 1e9 / (t1 - t0) * 100.0,
            "naive_rss": naive_rss, "naive_threads": naive_threads,
            "naive_cpu_pct": (n1 - n0) / 1e9 / (t1 - t0) * 100.0,
            "static_rss": st_static["VmRSS"] if st_static else None,
            "static_rss_file": st_static["RssFile"] if st_static else None,
            "static_rss_no_containers": st0_static["VmRSS"] if st0_static else None}


# ---- instructions, allocations ----------------------------------------------------------------

# callgrind_annotate rows that only start threads or the program (every thread's cost passes
# through them): left out of the costliest functions.
WRAPPERS = re.compile(r"\(below main\)|__libc_start|start_thread|thread_start|clone3?$|"
                      r"__rust_begin_short_backtrace|FnOnce::call_once|lang_start|^main$|"
                      r"^0x[0-9a-f]+$|^_start$")


def lines_container(name, n):
    """A container that prints n lines of 100 bytes once its gate opens, then sleeps: (id, name,
    gate)."""
    ids, flag = start_containers(name, 1, 'yes "$1" | head -n "$2"; exec sleep 100000',
                                 [LINE, str(n)])
    return ids[0], "%s-0" % name, flag


def floor_read(container, wrap=()):
    """Runs the floor reader on the container's log; the lines it decoded."""
    r = subprocess.run([*wrap, args.floor, container],
                       env=dict(os.environ, DOCKER_HOST=args.docker_host),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    m = re.search(r"lines=(\d+)", r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError("floor reader: %s" % r.stderr.strip()[-300:])
    return int(m.group(1))


def callgrind_total(path):
    """Instructions of a callgrind output file (its `summary:` or `totals:` line)."""
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no total in %s" % path)


def costliest(path, n, lines, top=10):
    """The `top` functions with the highest inclusive cost (callgrind_annotate), thread and
    program start-up wrappers left out: [(instructions per line, % of all, function)]."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300)
    out = []
    for line in r.stdout.splitlines():
        # `  12,345 (12.34%)  file:function [object]`: rows with an object are whole functions;
        # those without are the lines of one function that were inlined from another file.
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?):(.*) \[(.*)\]$", line)
        if not m:
            continue
        fn = m.group(3)
        if WRAPPERS.search(fn):
            continue
        ir = int(m.group(1).replace(",", ""))
        out.append({"ir_per_line": round(ir / lines), "pct": round(100.0 * ir / n, 1),
                    "function": fn, "object": os.path.basename(m.group(4))})
        if len(out) == top:
            break
    return out


def dhat_totals(path):
    """(bytes allocated, blocks allocated, bytes live at the heap's peak) from a dhat file."""
    with open(path) as f:
        d = json.load(f)
    pps = d["pps"]
    return (sum(p["tb"] for p in pps), sum(p["tbk"] for p in pps), sum(p["gb"] for p in pps))


def following(agent, name, timeout):
    """Waits until the agent's API says it follows the container."""
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen("http://%s/api/v1/containers" % agent.api, timeout=10) as r:
                if any(c["name"] == name and c["state"] == "following" for c in json.load(r)):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError("the agent did not follow %s; see %s" % (name, agent.dir))


def settled(pid, timeout=120):
    """Waits until the process has used (almost) no CPU for a second: the agent has looked at
    every running container and has nothing left to do."""
    deadline = time.time() + timeout
    c0 = cpu_s(pid)
    while time.time() < deadline:
        time.sleep(1)
        c1 = cpu_s(pid)
        if c1 - c0 < 0.05:
            return
        c0 = c1
    raise RuntimeError("the agent did not settle within %d s" % timeout)


def callgrind_dump(pid):
    """Makes callgrind write what it counted so far to the next numbered file and start again."""
    r = subprocess.run(["callgrind_control", "--dump", str(pid)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError("callgrind_control: %s" % r.stdout.strip()[-300:])


def agent_lines_run(name, batch, n, tool=None, binary=None):
    """One agent (`binary`, else --agent; SINCE=all, files on, QoS 1, only its own container) and
    a container of its own that prints n lines once the agent follows it; stopped with SIGTERM
    once the subscriber has them all. `tool`: None (native), "callgrind" (what it counted before
    the lines, while they went through, and after, in FILE.1, FILE.2 and FILE) or "dhat". Returns
    the lines delivered, Threads and VmHWM when they had all arrived (valgrind's own memory counts
    in them too), and the tool's output file."""
    cid, cname, flag = lines_container("ins-" + name, n)
    out = os.path.join(work, "%s-%s.out" % (tool, name)) if tool else None
    wrap = ("valgrind", "--tool=" + tool, "--%s-out-file=%s" % (tool, out)) if tool else ()
    if tool == "callgrind":
        # Instruction addresses too: packaging/hot-text.py makes the hot text's list from them.
        wrap += ("--dump-instr=yes",)
    broker = Broker(name)
    sub = Subscriber(broker, name)
    agent = None
    try:
        agent = start_agent(broker, sub, name, 1, batch, binary=binary, wrap=wrap,
                            env_extra={"CONTAINERS_INCLUDE": cname}, online_s=120 if tool else 15)
        following(agent, cname, 120)
        if tool == "callgrind":
            settled(agent.pid)
            callgrind_dump(agent.pid)
        open(flag, "w").close()
        complete = sub.wait_for(n, idle=60.0, timeout=600) if n else True
        st = status(agent.pid)
        if tool == "callgrind":
            callgrind_dump(agent.pid)
        stop(agent, wait=300)
        if agent.returncode != 0:
            raise RuntimeError("the agent did not stop cleanly on SIGTERM (exit %s); see %s"
                               % (agent.returncode, agent.dir))
        if not complete:
            raise RuntimeError("%d of %d lines delivered" % (sub.poll(), n))
    finally:
        stop(agent)
        sub.close()
        broker.close()
        docker("rm", "-f", cid, check=False)
    return {"delivered": sub.lines, "threads": st["Threads"], "vm_hwm": st["VmHWM"], "out": out}


def instructions_mode(key, batch, runs):
    """Callgrind runs of the agent (instructions while the lines went through, per line), dhat
    runs with n lines and with none (bytes allocated per line: the difference), a native run."""
    n = args.instr_lines
    out = {"runs": []}
    for i in range(runs):
        cg = agent_lines_run("%s-%d" % (key, i + 1), batch, n, "callgrind")["out"]
        start, lines, end = (callgrind_total(cg + ".1"), callgrind_total(cg + ".2"),
                             callgrind_total(cg))
        out["runs"].append({"per_line": lines / n, "start_up": start, "lines": lines,
                            "shutdown": end, "whole_run_per_line": (start + lines + end) / n})
        if i == 0:
            out["costliest"] = costliest(cg + ".2", lines, n)
    per = [x["per_line"] for x in out["runs"]]
    out["instructions_per_line"] = sum(per) / len(per)
    out["spread_pct"] = 100.0 * (max(per) - min(per)) / min(per)
    out["whole_run_per_line"] = out["runs"][0]["whole_run_per_line"]
    with_lines = dhat_totals(agent_lines_run(key + "-dhat", batch, n, "dhat")["out"])
    without = dhat_totals(agent_lines_run(key + "-dhat0", batch, 0, "dhat")["out"])
    out.update({"bytes_allocated": with_lines[0], "bytes_allocated_no_lines": without[0],
                "bytes_per_line": (with_lines[0] - without[0]) / n,
                "allocations_per_line": (with_lines[1] - without[1]) / n,
                "heap_peak_bytes": with_lines[2]})
    return out


def instructions_run():
    """The instructions phase: the floor reader and the agent on one container's
    `--instr-lines` lines of 100 bytes, under callgrind and dhat."""
    for tool in ("valgrind", "callgrind_annotate", "callgrind_control"):
        if not shutil.which(tool):
            raise RuntimeError("%s is missing" % tool)
    if not args.floor or not args.agent_symbols:
        raise RuntimeError("--floor and --agent-symbols are needed")
    n = args.instr_lines
    # The agent looks at every running container when it starts, followed or not, and the
    # events of all of them reach it: the bench's own engine runs none but the bench's.
    others = len(docker("ps", "-q").split())
    if others:
        log("instructions: %d other containers run on the engine; start-up figures count them"
            % others)
    cid, _, flag = lines_container("ins-floor", n)
    open(flag, "w").close()
    deadline = time.time() + 60
    while floor_read(cid) < n:
        if time.time() > deadline:
            raise RuntimeError("the floor's container did not print its %d lines" % n)
        time.sleep(0.5)
    cg = os.path.join(work, "callgrind-floor.out")
    got = floor_read(cid, ("valgrind", "--tool=callgrind", "--callgrind-out-file=" + cg))
    if got != n:
        raise RuntimeError("the floor read %d of %d lines" % (got, n))
    total = callgrind_total(cg)
    dh = os.path.join(work, "dhat-floor.out")
    floor_read(cid, ("valgrind", "--tool=dhat", "--dhat-out-file=" + dh))
    docker("rm", "-f", cid, check=False)
    b, blocks, peak = dhat_totals(dh)
    out = {"lines": n, "line_bytes": len(LINE) + 1, "binary": args.agent_symbols,
           "other_containers": others,
           "floor": {"instructions": total, "instructions_per_line": total / n,
                     "costliest": costliest(cg, total, n), "bytes_allocated": b,
                     "bytes_per_line": b / n, "allocations_per_line": blocks / n,
                     "heap_peak_bytes": peak}}
    saved, args.agent = args.agent, args.agent_symbols
    try:
        for key, batch in (("unbatched", False), ("batched", True)):
            log("instructions: agent QoS 1 %s, %d callgrind runs" % (key, args.instr_runs))
            out[key] = instructions_mode(key, batch, args.instr_runs)
    finally:
        args.agent = saved
    return out


def peak_run():
    """The peak phase: the instructions phase's backlog (--instr-lines lines of 100 bytes in one
    container) read natively by the shipped build and by its static twin, unbatched and batched:
    VmHWM and threads once every line arrived."""
    builds = [("dynamic", args.agent)]
    if args.agent_static:
        builds.append(("static", args.agent_static))
    out = {"lines": args.instr_lines}
    for key, batch in (("unbatched", False), ("batched", True)):
        for build, binary in builds:
            a = agent_lines_run("peak-%s-%s" % (key, build), batch, args.instr_lines,
                                binary=binary)
            out.setdefault(key, {})[build] = {"vm_hwm": a["vm_hwm"], "threads": a["threads"]}
    return out


# ---- report -----------------------------------------------------------------------------------

def file_size(*names):
    total = 0
    for name in names:
        p = shutil.which(name) or name
        if os.path.exists(p):
            total += os.path.getsize(os.path.realpath(p))
    return total


def report(r):
    rows = []

    def row(figure, value, unit, base_name, base, target=None, ok=None):
        ratio = (value / base) if (value is not None and base) else None
        rows.append({"figure": figure, "value": value, "unit": unit, "baseline": base_name,
                     "baseline_value": base, "ratio": ratio, "target": target, "met": ok})

    def s_throughput():
        # The broker's and the naive pipeline's rows only when their phases ran (BENCH_ONLY).
        eng = r["engine"]
        mq = {k: v.get("lines_per_s") for k, v in r["mosquitto"].items() if isinstance(v, dict)}
        nv = r["naive"].get("flat")
        for key, label in (("q0", "QoS 0 unbatched"), ("q1", "QoS 1 unbatched"),
                           ("q1b", "QoS 1 batched 50/1s")):
            for n in args.containers:
                a = r["agent"].get("%s-%d" % (key, n))
                if not a:
                    continue
                fig = "agent %s, %d container%s" % (label, n, "" if n == 1 else "s")
                rate = a["lines_per_s"] or 0
                base = eng.get(str(n), {}).get("lines_per_s")
                target, ok = None, None
                if key == "q1b" and n == 1:
                    target, ok = ">= 0.8 x engine, 0 lost", rate >= 0.8 * (base or 1e18) and a["lost"] == 0
                row(fig + " [lines/s]", a["lines_per_s"], "lines/s",
                    "engine read limit, %d stream%s (best of 2)" % (n, "" if n == 1 else "s"), base,
                    target, ok)
                if key == "q1" and n == 1 and "q1" in mq:
                    row(fig + " vs broker [lines/s]", a["lines_per_s"], "lines/s",
                        "mosquitto_pub -q 1 -l (well fed)", mq["q1"])
                    mb = max(mq.get("q1x4") or 0, mq["q1"] or 0)
                    row(fig + " vs broker [lines/s]", a["lines_per_s"], "lines/s",
                        "best of 1 and 4 mosquitto_pub -q 1 -l", mb, ">= 0.8 x",
                        rate >= 0.8 * (mb or 1e18))
                if key in ("q1", "q1b") and n == 1 and nv:
                    row(fig + " vs naive [lines/s]", a["lines_per_s"], "lines/s",
                        "docker logs -f | mosquitto_pub -q 1 -l", nv["lines_per_s"],
                        ">= 3 x, 0 lost", rate >= 3 * (nv["lines_per_s"] or 1e18)
                        and a["lost"] == 0)
                if key == "q1" and n == 1:
                    row("agent QoS 1 unbatched, 1 container: lines lost", a["lost"], "lines",
                        "naive pipeline lines lost", nv["lost"] if nv else None, "0",
                        a["lost"] == 0)
                if key == "q0" and n == 1 and "q0" in mq:
                    row(fig + " vs broker [lines/s]", a["lines_per_s"], "lines/s",
                        "mosquitto_pub -q 0 -l (well fed)", mq["q0"])
                if a["lost"]:
                    row(fig + ": lines lost", a["lost"], "lines", "lines sent", a["expected"])

    def s_latency():
        for key, label in (("lat", "unbatched"), ("latb", "batched 50/1s")):
            a = r["agent"].get(key)
            if not a:
                continue
            for p in ("p50_ms", "p99_ms", "max_ms"):
                target, ok = None, None
                if key == "lat" and p == "p99_ms":
                    target, ok = "<= 50 ms", (a[p] or 1e18) <= 50
                row("latency QoS 1 %s %s [ms]" % (label, p[:-3]), a[p], "ms",
                    "raw engine reader %s" % p[:-3], r["engine"]["lat"][p], target, ok)
            if key == "lat":
                for p in ("p50_ms", "p99_ms"):
                    row("latency QoS 1 unbatched %s vs naive [ms]" % p[:-3], a[p], "ms",
                        "naive pipeline %s" % p[:-3], r["naive"]["lat"][p])

    def s_peak():
        naive = r["naive"].get("flat") or {}
        base = naive["vm_hwm"] / 2**20 if naive.get("vm_hwm") else None
        one = [a["vm_hwm"] for k, a in r["agent"].items() if a and k.endswith("-1")]
        if one:
            row("agent peak RSS at full rate, 1 container [MiB]", max(one) / 2**20, "MiB",
                "naive pipeline peak RSS, 1 container", base, "<= 6 MiB",
                max(one) <= 6 * 2**20)
        peaks = [a["vm_hwm"] for a in r["agent"].values() if a]
        if peaks:
            peak = max(peaks)
            row("agent peak RSS at full rate [MiB]", peak / 2**20, "MiB",
                "naive pipeline peak RSS, 1 container", base, "<= 8 MiB", peak <= 8 * 2**20)

    def mib(v):
        return v / 2**20 if v is not None else None

    def kib(v):
        return v / 1024 if v is not None else None

    def s_idle():
        idle = r["idle"]
        n, k = idle["containers"], idle.get("naive_pipelines", idle["containers"])
        # The naive pipelines' sums, scaled from the k measured to the n containers.
        scale = n / k if k else None
        naive = "%d naive pipelines" % n + ("" if k == n else " (%d measured, scaled)" % k)
        goal = n <= 20  # the 4 MiB goal is for the default 20 containers
        # The 16 KiB a container is for 200 idle ones: at 20 the agent's fixed cost dominates.
        per_goal = n >= 200
        # BENCH_IDLE_NAIVE=0 measures no naive pipeline: its baselines are left empty.
        per_naive = (lambda v: v / k) if k else (lambda v: None)
        scaled = (lambda v: v * scale) if scale else (lambda v: None)
        row("agent RSS, idle, no containers [MiB]", idle["agent_rss_no_containers"] / 2**20, "MiB",
            "1 naive pipeline (1/%d of the sum)" % k, mib(per_naive(idle["naive_rss"])))
        row("agent RSS after %gs idle, %d containers [MiB]" % (idle["idle_s"], n),
            idle["agent_rss"] / 2**20, "MiB", naive, mib(scaled(idle["naive_rss"])),
            "<= 4 MiB" if goal else None, idle["agent_rss"] <= 4 * 2**20 if goal else None)
        row("agent idle cost per followed container, %d containers [KiB]" % n,
            idle["agent_rss_per_container"] / 1024, "KiB", "1 naive pipeline",
            kib(per_naive(idle["naive_rss"])), "<= 16 KiB" if per_goal else None,
            idle["agent_rss_per_container"] <= 16 * 1024 if per_goal else None)
        if idle.get("static_rss"):
            row("agent RSS after %gs idle, %d containers, static build [MiB]"
                % (idle["idle_s"], n), idle["static_rss"] / 2**20, "MiB", naive,
                mib(scaled(idle["naive_rss"])), "<= 4 MiB" if goal else None,
                idle["static_rss"] <= 4 * 2**20 if goal else None)
            row("agent idle cost per followed container, %d containers, static [KiB]" % n,
                idle["static_rss_per_container"] / 1024, "KiB", "1 naive pipeline",
                kib(per_naive(idle["naive_rss"])), "<= 16 KiB" if per_goal else None,
                idle["static_rss_per_container"] <= 16 * 1024 if per_goal else None)
        row("agent idle CPU, %d containers [%%]" % n, idle["agent_cpu_pct"], "%",
            naive, scaled(idle["naive_cpu_pct"]), "<= 0.1 %", idle["agent_cpu_pct"] <= 0.1)

    def s_cpu():
        naive = r["naive"].get("flat", {}).get("cpu_s_per_mline")
        for key, label in (("q1-1", "unbatched"), ("q1b-1", "batched")):
            a = r["agent"].get(key)
            if a:
                row("agent CPU per million lines, QoS 1 %s [s]" % label, a["cpu_s_per_mline"],
                    "s", "naive pipeline", naive)
        e = r["engine"].get("1")
        a = r["agent"].get("q1b-1")
        if a and e and e.get("engine_cpu_s_per_mline"):
            row("agent CPU per million lines, QoS 1 batched vs engine [s]", a["cpu_s_per_mline"],
                "s", "dockerd serving them (raw reader run)", e["engine_cpu_s_per_mline"])
        idle = r.get("idle")
        if idle:
            n, k = idle["containers"], idle.get("naive_pipelines", idle["containers"])
            row("agent threads, %d containers idle" % n, idle["agent_threads"], "",
                "%d naive pipelines" % n + ("" if k == n else " (%d measured, scaled)" % k),
                idle["naive_threads"] * n / k if k else None)

    def s_instructions():
        ins = r["instructions"]
        fl = ins["floor"]
        row("floor reader, decode only [instructions/line]", fl["instructions_per_line"], "",
            "-", None)
        for key, label in (("unbatched", "QoS 1 unbatched"), ("batched", "QoS 1 batched 50/1s")):
            a = ins.get(key)
            if not a:
                continue
            row("agent %s [instructions/line]" % label, a["instructions_per_line"], "",
                "floor reader (decode only)", fl["instructions_per_line"])
            row("agent %s, start-up and stop included [instructions/line]" % label,
                a["whole_run_per_line"], "", "floor reader (decode only)",
                fl["instructions_per_line"])
            row("agent %s: spread of %d callgrind runs [%%]" % (label, len(a["runs"])),
                a["spread_pct"], "%", "-", None, "<= 1 %", a["spread_pct"] <= 1.0)
            row("agent %s [bytes allocated/line]" % label, a["bytes_per_line"], "B",
                "floor reader (decode only)", fl["bytes_per_line"])
            row("agent %s [allocations/line]" % label, a["allocations_per_line"], "",
                "floor reader (decode only)", fl["allocations_per_line"])

    def s_lines_peak():
        for key, label in (("unbatched", "QoS 1 unbatched"), ("batched", "QoS 1 batched 50/1s")):
            for build, a in r["peak"].get(key, {}).items():
                row("agent %s: peak RSS reading the lines%s [MiB]"
                    % (label, ", static build" if build == "static" else ""),
                    a["vm_hwm"] / 2**20, "MiB", "-", None, "<= 6 MiB", a["vm_hwm"] <= 6 * 2**20)

    def s_size():
        row("agent binary size, stripped [MiB]", r["binary_bytes"] / 2**20, "MiB",
            "docker CLI + mosquitto_pub + libmosquitto", r["naive_binary_bytes"] / 2**20)

    # A phase that failed or was skipped leaves its rows out; the others still print.
    for section in (s_throughput, s_latency, s_peak, s_idle, s_cpu, s_instructions,
                    s_lines_peak, s_size):
        try:
            section()
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            log("table: %s left out (%r)" % (section.__name__[2:], e))
    return rows


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return "%.0f" % v
        if abs(v) >= 1:
            return "%.2f" % v
        return "%.3g" % v
    return str(v)


def print_costliest(ins):
    """The instructions phase's ten costliest functions (inclusive), per mode."""
    if not ins:
        return
    for key in ("floor", "unbatched", "batched"):
        a = ins.get(key)
        if not a or not a.get("costliest"):
            continue
        print("\ncostliest functions, %s (inclusive, instructions/line of %d lines, %% of all):"
              % ("floor reader" if key == "floor" else "agent QoS 1 " + key, ins["lines"]))
        for c in a["costliest"]:
            print("  %7d  %5.1f %%  %s" % (c["ir_per_line"], c["pct"], c["function"][:110]))


def print_table(rows):
    cols = [("figure", 72), ("value", 9), ("baseline", 42), ("baseline_value", 9),
            ("ratio", 7), ("target", 24), ("met", 4)]
    head = ["figure", "value", "baseline", "base", "ratio", "target", "met"]
    print("  ".join(h.ljust(w) for h, (_, w) in zip(head, cols)))
    print("  ".join("-" * w for _, w in cols))
    for r in rows:
        print("  ".join(fmt(r[k]).ljust(w) if k in ("figure", "baseline", "target", "met")
                        else fmt(r[k]).rjust(w) for k, w in cols))


def main():
    global args, work
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--agent-static", default="",
                    help="the same agent linked statically (as the ARM builds), for the idle and "
                    "peak RSS")
    ap.add_argument("--docker-host", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--engine-pid", type=int, default=0,
                    help="dockerd's pid, to report the engine's own CPU per million lines")
    ap.add_argument("--lines", type=int, default=int(os.environ.get("BENCH_LINES", 100000)),
                    help="lines per throughput run, split over the containers")
    ap.add_argument("--containers", default=os.environ.get("BENCH_CONTAINERS", "1,4,20"))
    ap.add_argument("--idle-secs", type=float, default=float(os.environ.get("BENCH_IDLE_SECS", 60)))
    ap.add_argument("--idle-containers", type=int,
                    default=int(os.environ.get("BENCH_IDLE_CONTAINERS", 20)))
    ap.add_argument("--idle-naive", type=int, default=int(os.environ.get("BENCH_IDLE_NAIVE", 20)),
                    help="naive pipelines beside the idle agent (at most one per container)")
    ap.add_argument("--agent-symbols", default="",
                    help="the agent's release build with symbols, for the instructions phase")
    ap.add_argument("--floor", default="", help="the floor reader (examples/floor.rs)")
    ap.add_argument("--instr-lines", type=int,
                    default=int(os.environ.get("BENCH_INSTR_LINES", 30000)),
                    help="lines of the instructions phase's backlog")
    ap.add_argument("--instr-runs", type=int, default=int(os.environ.get("BENCH_INSTR_RUNS", 2)),
                    help="callgrind runs of each agent measurement (their spread is reported)")
    ap.add_argument("--latency-lines", type=int, default=5000)
    ap.add_argument("--run-timeout", type=float, default=60)
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", 3)),
                    help="runs of each agent and naive throughput measurement; the median counts")
    ap.add_argument("--agent-runs", default=os.environ.get("BENCH_AGENT_RUNS", ""),
                    help="comma list of agent throughput runs, e.g. q1-1,q1b-20 (default all)")
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                    help="comma list of phases: "
                    "engine,mosquitto,naive,agent,latency,idle,instructions,peak")
    args = ap.parse_args()
    args.containers = [int(x) for x in args.containers.split(",")]
    only = set(filter(None, args.only.split(",")))
    want = lambda phase: not only or phase in only
    work = tempfile.mkdtemp(prefix="cld-bench-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    r = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
         "cpus": os.cpu_count(), "lines_per_run": args.lines, "line_bytes": len(LINE) + 1,
         "engine": {}, "agent": {}, "naive": {}, "mosquitto": {}, "peak": {},
         "repeat": args.repeat}
    busy0, total0 = host_cpu()
    try:
        rm_containers()
        r["engine_api"] = api_version()
        k = args.lines
        failed = []

        def attempt(what, fn, *a, **kw):
            try:
                return fn(*a, **kw)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
                log("%s failed: %s" % (what, e))
                failed.append(what)
                rm_containers()
                return None

        def median_of_runs(what, fn, *a, **kw):
            """Runs fn args.repeat times; the run with the median lines/s stands for them all,
            with the worst loss and the highest peak RSS of any run, and every run's lines/s."""
            runs = []
            name, rest = a[0], a[1:]
            for i in range(max(1, args.repeat)):
                # Each run gets its own name: its broker, agent and containers are its own.
                one = attempt("%s (run %d)" % (what, i + 1), fn,
                              name if i == 0 else "%s-r%d" % (name, i + 1), *rest, **kw)
                if one:
                    runs.append(one)
            ok = sorted((x for x in runs if x.get("lines_per_s")), key=lambda x: x["lines_per_s"])
            if not ok:
                return runs[0] if runs else None
            out = dict(ok[(len(ok) - 1) // 2])
            out["runs_lines_per_s"] = [x.get("lines_per_s") for x in runs]
            # Every run's loss and, for a run that fell short, what the agent said.
            out["runs"] = [{k: x.get(k) for k in ("lines", "lost", "duplicates", "complete",
                                                   "lines_per_s", "agent_health") if k in x}
                           for x in runs]
            out["lost"] = max(x["lost"] for x in runs)
            out["vm_hwm"] = max(x["vm_hwm"] for x in runs)
            out["complete"] = all(x.get("complete", True) for x in runs)
            return out

        if want("engine"):
            for n in args.containers:
                log("engine read limit, %d stream(s)" % n)
                r["engine"][str(n)] = attempt("engine %d" % n, raw_reader, "e%d" % n, n, k // n)
        if want("mosquitto"):
            for q in (0, 1):
                log("mosquitto_pub baseline QoS %d" % q)
                r["mosquitto"]["q%d" % q] = attempt("mosquitto q%d" % q, mosq_baseline, "mq%d" % q, q, k)
            log("mosquitto_pub baseline QoS 1, 4 clients")
            r["mosquitto"]["q1x4"] = attempt("mosquitto q1x4", mosq_baseline, "mq1x4", 1, k,
                                                clients=4)
        if want("naive"):
            log("naive pipeline, flat out")
            r["naive"]["flat"] = median_of_runs("naive", naive_run, "nflat", k)
        if want("agent"):
            for key, qos, batch in (("q0", 0, False), ("q1", 1, False), ("q1b", 1, True)):
                for n in args.containers:
                    if key == "q0" and n != 1:
                        continue
                    if args.agent_runs and "%s-%d" % (key, n) not in args.agent_runs.split(","):
                        continue
                    log("agent %s, %d container(s)" % (key, n))
                    run = "%s-%d" % (key, n)
                    r["agent"][run] = median_of_runs("agent " + run, agent_run, run, qos, batch, n,
                                                     k // n)
        if want("engine"):
            # The engine's pace drifts with the host: measure it again after the agent runs and
            # keep the faster run as the baseline (the stricter comparison).
            for n in args.containers:
                log("engine read limit again, %d stream(s)" % n)
                again = attempt("engine %d again" % n, raw_reader, "e%db" % n, n, k // n)
                first = r["engine"].get(str(n))
                r["engine"][str(n) + "-runs"] = [first, again]
                best = [x for x in (first, again) if x and x.get("lines_per_s")]
                if best:
                    r["engine"][str(n)] = max(best, key=lambda x: x["lines_per_s"])
        if want("latency"):
            ll = args.latency_lines
            log("latency: raw engine reader")
            r["engine"]["lat"] = attempt("latency raw", raw_reader, "elat", 1, 0, paced_lines=ll)
            log("latency: naive pipeline")
            r["naive"]["lat"] = attempt("latency naive", naive_run, "nlat", 0, paced_lines=ll)
            log("latency: agent unbatched")
            r["agent"]["lat"] = attempt("latency agent", agent_run, "lat", 1, False, 1, 0,
                                         paced_lines=ll)
            log("latency: agent batched")
            r["agent"]["latb"] = attempt("latency agent batched", agent_run, "latb", 1, True, 1,
                                          0, paced_lines=ll)
        if want("instructions"):
            log("instructions: floor and agent, %d lines" % args.instr_lines)
            r["instructions"] = attempt("instructions", instructions_run)
        if want("peak"):
            log("peak: agent reading %d lines, native" % args.instr_lines)
            r["peak"] = attempt("peak", peak_run)
        if want("idle"):
            log("idle: %d quiet containers for %gs" % (args.idle_containers, args.idle_secs))
            r["idle"] = attempt("idle", idle_run, args.idle_containers)
        r["binary_bytes"] = os.path.getsize(args.agent)
        r["naive_binary_bytes"] = file_size("docker", "mosquitto_pub",
                                            "/usr/lib/x86_64-linux-gnu/libmosquitto.so.1")
        r["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        busy1, total1 = host_cpu()
        # Everything on the machine, the bench included: near 100 % means the figures are bound
        # by the host (2 shared cores here), and other load on it skews them.
        r["host_cpu_busy_pct"] = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
        r["failed"] = failed
        r["table"] = report(r)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(r, f, indent=1)
        if r["table"]:
            print_table(r["table"])
            print_costliest(r.get("instructions"))
            print("host: %d CPUs, %.0f %% busy during the run (all processes); engine API %s; "
                  "agent and naive lines/s: median of %d runs"
                  % (r["cpus"], r["host_cpu_busy_pct"], r["engine_api"], args.repeat))
        else:
            print(json.dumps({k: v for k, v in r.items() if k != "table"}, indent=1))
        log("results in %s" % args.out)
        if failed:
            log("these measurements failed: %s" % ", ".join(failed))
            sys.exit(1)
    finally:
        for p in procs:
            stop(p, wait=5)
        try:
            rm_containers()
        except Exception as e:  # cleanup must not hide the real error
            log("cleanup: %s" % e)
        if os.environ.get("BENCH_KEEP_TMP"):
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
