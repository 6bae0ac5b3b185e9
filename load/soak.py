#!/usr/bin/env python3
"""Chaos soak: real ALB, real simulated backends, open-loop traffic, and things breaking.

    python3 load/soak.py --alb target/release/alb --duration 60 --seed 1 [--json out.json]

What runs
---------
* ``alb backend`` processes: four (some with service delays) that are always in the
  config, plus a fifth that reloads add and remove.
* ``alb run`` with ``strategy: adaptive``, a plain HTTP listener and an HTTPS listener
  (``redirect_to_https: false``, so both serve the proxy) on a certificate from
  ``alb gen-cert``, retries on, health checks every 0.5 s.

Traffic (open loop)
-------------------
Arrivals are a Poisson process at ``--rate`` requests per second, drawn from a seeded RNG;
each request is started at its scheduled time whatever happened to the previous ones (a
closed loop would slow down exactly when ALB has trouble, and hide it). The generator's own
lateness is reported (``send_lag_ms``). Each request picks HTTP or HTTPS and one kind:

* ``get``        ``GET /``: the body must be ``backend PORT`` for the ``x-alb-backend`` port;
* ``post``       ``POST /_sim/mirror`` with a random 1-64 KiB body that must come back intact;
* ``download``   ``GET /_sim/bytes?n=N``, 1-4 MiB, length and content checked;
* ``websocket``  upgrade to ``/_sim/ws`` and echo 1-5 messages (a hand-written RFC 6455
  client, so the script needs nothing beyond the standard library);
* ``slow_headers``  a GET whose request head trickles in over 1-3 s;
* ``slow_body``  a mirror POST whose body trickles in over 1-2 s;
* ``slow_read``  a 1 MiB download read 16 KiB at a time through a small receive buffer.

Every request uses its own connection (``Connection: close``), so client-side keep-alive
never hides a failure, and every failure is one request.

Chaos (seeded, at random times)
-------------------------------
* kill: SIGKILL a random running backend, restart it on the same port 0.5-2.5 s later
  (one backend down at a time), every 3-8 s;
* reload: rewrite the config (toggle a backend's weight between 1 and 3, or add/remove the
  fifth backend) and reload ALB with SIGHUP (or ``POST /reload`` one time in three), every
  2-6 s;
* rotate: write a new certificate and key (``alb gen-cert`` into a scratch directory, then
  renamed over the configured files) and send SIGHUP, which re-reads them; a fresh TLS
  handshake then checks that the new certificate is served within 5 s. Every 5-12 s.

Sampling
--------
ALB's ``VmRSS`` (``/proc/PID/status``) and open file descriptors (``/proc/PID/fd``) every
second. Each figure is the median of the five samples nearest its time; "end" is the last
five seconds under load. "After the first minute" is at 60 s (a quarter of a run shorter than
3 min). "After warm-up" is later when ALB's bounded structures are still filling at 60 s: its
decision log keeps the latest 4096 records (``DecisionLog::CAPACITY``), each holding the
backend set it was decided from (reloads make new sets), and at 30 requests/s it fills only
after about 140 s. In the first 10-minute soak RSS climbed until about 150 s and was flat
after (17.8 MiB at 60 s, 21.4 MiB at 160 s, 22.0 MiB at 600 s); the ring explains part of
the climb, allocator high-water marks under peak concurrency presumably the rest. So warm-up
ends at the later of the first minute and the 5120th request (the ring plus a quarter), and
the RSS check needs a run of at least 3 min and twice the warm-up.

Classifying failures
--------------------
A failure (a non-2xx status, a connection error, a truncated or wrong body, a broken
WebSocket) is *by design* when it can be pinned to a kill: the backend that served it
(``x-alb-backend``, or the port named in ALB's ``502`` body ``alb: backend HOST:PORT: ...``)
was killed or down during the request, and ALB could not have saved it:

* ``post_on_killed_backend``: ALB does not buffer request bodies, so a POST is never
  retried (README, Retries);
* ``response_started_on_killed_backend``: a response already streaming is never retried;
* ``websocket_on_killed_backend``: a tunnelled upgrade dies with its backend.

Everything else is *unexplained*. A GET that fails before its response started is always
unexplained: ALB retries those to another backend. One pattern is a known ALB bug and is
counted apart (``alb_bugs``), though it fails the soak all the same:
``upgrade_retried_then_closed``, a WebSocket answered ``101`` by a live backend and closed
before its first echo while another backend was down (a retried upgrade loses the client's
side of the upgrade; see ``classify``).

Acceptance (exit status 1 when any fails; 2 for a setup error)
-------------------------------------------------------------
* no failed GET other than a response cut by a kill;
* failed POSTs <= kills;
* no unexplained failure, and none from a known ALB bug;
* RSS at the end <= 110% of RSS after warm-up (see Sampling for when it applies; RSS after
  the first minute and both growths are always reported);
* fds at the end <= fds after warm-up + ``FD_SLACK``;
* no ``panicked`` line in ALB's stderr.

The JSON report goes to stdout (and to ``--json``), a human summary to stderr. The work
directory (config, certificates, every process's log) is kept when the soak fails or with
``--keep``.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# File descriptors ALB may hold at the end beyond its after-warm-up count: the pools keep
# idle backend connections for about 90 s, so the count follows recent concurrency.
FD_SLACK = 64
RSS_GROWTH_LIMIT = 0.10
# Requests after which ALB's decision log (4096 records) has filled, plus a quarter.
WARMUP_REQUESTS = 5120
REQUEST_TIMEOUT = 30.0
KINDS = [
    # kind, weight, method
    ("get", 40, "GET"),
    ("post", 20, "POST"),
    ("download", 8, "GET"),
    ("websocket", 12, "GET"),
    ("slow_headers", 7, "GET"),
    ("slow_body", 4, "POST"),
    ("slow_read", 6, "GET"),
]
METHOD = {k: m for k, _, m in KINDS}
BACKEND_ARGS = [[], ["--delay", "5ms"], ["--delay", "20ms"], ["--service", "exp:10ms"]]
EXTRA_BACKEND_ARGS = ["--delay", "2ms"]


class SetupError(Exception):
    """The soak could not start (a port, a process, a file)."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


# === Processes ===


class Backend:
    """One ``alb backend`` process on a fixed port, restartable after a kill."""

    def __init__(self, alb, port, args, log_path):
        self.alb, self.port, self.args, self.log_path = alb, port, args, log_path
        self.proc = None
        self.down_since = None  # monotonic time of the kill while it is down

    def start(self):
        for _ in range(50):
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [self.alb, "backend", str(self.port), *self.args],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            log.close()
            if wait_port(self.port, self.proc, timeout=10):
                self.down_since = None
                return
            self.proc.kill()
            self.proc.wait()
            time.sleep(0.1)  # the port may still be held by the killed process
        raise SetupError(f"backend on port {self.port} does not start; see {self.log_path}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.down_since = time.monotonic()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Alb:
    """``alb run`` on a config file that the chaos rewrites."""

    def __init__(self, args, workdir):
        self.bin = args.alb
        self.dir = workdir
        self.http_port, self.tls_port, self.admin_port = free_port(), free_port(), free_port()
        self.cert_dir = os.path.join(workdir, "certs")
        self.cert_file = os.path.join(self.cert_dir, "localhost.crt")
        self.key_file = os.path.join(self.cert_dir, "localhost.key")
        self.config_path = os.path.join(workdir, "config.json")
        self.log_path = os.path.join(workdir, "alb.log")
        self.proc = None
        self.weights = {}  # port -> weight of the backends in the config
        self.workers = args.workers

    def gen_cert(self, into):
        out = subprocess.run([self.bin, "gen-cert", into], capture_output=True, text=True)
        if out.returncode != 0:
            raise SetupError(f"alb gen-cert failed: {out.stderr.strip()}")

    def write_config(self):
        config = {
            "port": self.http_port,
            "bind_address": "127.0.0.1",
            "tls_port": self.tls_port,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "redirect_to_https": False,
            "admin_addr": f"127.0.0.1:{self.admin_port}",
            "strategy": "adaptive",
            "backends": [
                {"url": f"http://127.0.0.1:{p}", "weight": w}
                for p, w in sorted(self.weights.items())
            ],
            "health_check_interval": "500ms",
            "health_check_timeout": "500ms",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "connect_timeout": "1s",
            "request_timeout": "20s",
            "retries": {"attempts": 2, "budget_percent": 50, "min_per_second": 20},
            "client_header_timeout": "10s",
            "workers": self.workers,
        }
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=1)
        os.replace(tmp, self.config_path)  # ALB never reads half a file

    def start(self):
        self.gen_cert(self.cert_dir)
        self.write_config()
        log = open(self.log_path, "wb")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.proc = subprocess.Popen(
            [self.bin, "run", "--config", self.config_path],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        log.close()
        for port in (self.http_port, self.tls_port, self.admin_port):
            if not wait_port(port, self.proc):
                raise SetupError(f"alb run does not listen on {port}; see {self.log_path}")

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)

    def post_reload(self):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/reload", data=b"", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status

    def sample(self):
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            return None
        return rss, fds

    def stop(self):
        """SIGTERM (graceful drain), then the exit status; SIGKILL after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed after 20 s"
        return self.proc.returncode


# === HTTP/1.1 and WebSocket client (raw, so slow clients and byte checks are exact) ===


class Truncated(Exception):
    """The response started but its body ended early or was cut."""


class Mismatch(Exception):
    """A complete answer whose content is wrong."""


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connect(scheme, port, ctx, rcvbuf=None):
    sock = socket.socket()
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    if scheme == "https":
        return await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="localhost")
    return await asyncio.open_connection(sock=sock)


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_body(reader, headers, slow=False):
    """The whole body; ``slow`` reads 16 KiB every 20 ms."""
    try:
        if "content-length" in headers:
            n = int(headers["content-length"])
            if not slow:
                return await reader.readexactly(n)
            parts, left = [], n
            while left:
                part = await reader.readexactly(min(16384, left))
                parts.append(part)
                left -= len(part)
                await asyncio.sleep(0.02)
            return b"".join(parts)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
        return await reader.read()
    except (
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ConnectionError,
        ssl.SSLError,
        ValueError,
    ) as e:
        raise Truncated(f"{type(e).__name__}: {e}") from e


def backend_of(status, headers, body):
    """The backend port that served (or failed) a request, when ALB says."""
    name = headers.get("x-alb-backend")
    if name:
        return int(name.rsplit(":", 1)[1])
    if status >= 500 and body.startswith(b"alb: backend "):
        try:
            return int(body.split(b" ")[2].rstrip(b":").rsplit(b":", 1)[1])
        except (IndexError, ValueError):
            return None
    return None


async def http_exchange(
    rec, scheme, port, ctx, method, target, body=b"", trickle=None, slow_read=False
):
    """One request on its own connection. ``trickle`` = (seconds, 'head'|'body')."""
    reader, writer = await connect(scheme, port, ctx, rcvbuf=16384 if slow_read else None)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if method == "POST":
            head += f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
        head = (head + "\r\n").encode()
        try:
            await send_request(writer, head, body, trickle)
        except ConnectionError as e:
            # ALB may answer (a 502 naming the backend) and close before the body is all
            # sent: read that answer if it is there.
            rec["send_error"] = f"{type(e).__name__}: {e}"
        status, headers = await read_head(reader)
        rec["status"] = status
        rec["started"] = True
        rec["backend"] = backend_of(status, headers, b"")
        data = await read_body(reader, headers, slow=slow_read)
        rec["backend"] = backend_of(status, headers, data)
        if status >= 400:
            rec["detail"] = data[:200].decode("latin-1").strip()
        return status, headers, data
    finally:
        writer.close()


async def send_request(writer, head, body, trickle):
    if trickle and trickle[1] == "head":
        pieces = [head[i : i + 8] for i in range(0, len(head), 8)]
        for p in pieces:
            writer.write(p)
            await writer.drain()
            await asyncio.sleep(trickle[0] / len(pieces))
    else:
        writer.write(head)
    if body:
        if trickle and trickle[1] == "body":
            step = max(1, len(body) // 20)
            for i in range(0, len(body), step):
                writer.write(body[i : i + step])
                await writer.drain()
                await asyncio.sleep(trickle[0] / 20)
        else:
            writer.write(body)
    await writer.drain()


def ws_frame(opcode, payload, rng):
    mask = rng.randbytes(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


async def ws_read(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    if b1 & 0x80:
        raise Mismatch("server frame is masked")
    return b0 & 0x0F, await reader.readexactly(n)


async def websocket_echo(rec, scheme, port, ctx, rng):
    reader, writer = await connect(scheme, port, ctx)
    try:
        key = base64.b64encode(rng.randbytes(16)).decode()
        writer.write(
            (
                "GET /_sim/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status, headers = await read_head(reader)
        rec["status"] = status
        rec["backend"] = backend_of(status, headers, b"")
        if status != 101:
            body = await read_body(reader, headers)
            rec["backend"] = backend_of(status, headers, body)
            rec["detail"] = body[:200].decode("latin-1").strip()
            return
        rec["started"] = True
        rec["echoes"] = 0
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise Mismatch("bad Sec-WebSocket-Accept")
        try:
            for _ in range(rng.randint(1, 5)):
                binary = rng.random() < 0.5
                size = rng.randint(1, 16384)
                payload = rng.randbytes(size) if binary else rng.choice("abcdef").encode() * size
                writer.write(ws_frame(0x2 if binary else 0x1, payload, rng))
                await writer.drain()
                while True:
                    opcode, echoed = await ws_read(reader)
                    if opcode != 0x9:  # a ping: skip
                        break
                if opcode == 0x8:
                    raise Truncated("closed by the peer")
                if echoed != payload:
                    raise Mismatch(f"echo of {size} bytes differs")
                rec["echoes"] = rec.get("echoes", 0) + 1
                await asyncio.sleep(rng.uniform(0, 0.2))
            writer.write(ws_frame(0x8, (1000).to_bytes(2, "big"), rng))
            await writer.drain()
            try:
                await asyncio.wait_for(ws_read(reader), 5)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass  # the close handshake's answer is not what the soak checks
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as e:
            raise Truncated(f"{type(e).__name__}: {e}") from e
        rec["status"] = 101
    finally:
        writer.close()


# === One request of each kind ===


async def run_request(rec, scheme, port, ctx, rng):
    """One request of ``rec["kind"]``; raises Mismatch or Truncated on a wrong answer."""
    kind = rec["kind"]
    if kind in ("get", "slow_headers"):
        trickle = (rng.uniform(1, 3), "head") if kind == "slow_headers" else None
        status, headers, data = await http_exchange(
            rec, scheme, port, ctx, "GET", "/", trickle=trickle
        )
        if status == 200 and data != f"backend {rec['backend']}\n".encode():
            raise Mismatch(f"body {data[:60]!r} from backend {rec['backend']}")
    elif kind in ("post", "slow_body"):
        size = rng.randint(1024, 65536) if kind == "post" else rng.randint(8192, 32768)
        body = rng.randbytes(size)
        trickle = (rng.uniform(1, 2), "body") if kind == "slow_body" else None
        rec["bytes"] = size
        status, headers, data = await http_exchange(
            rec, scheme, port, ctx, "POST", "/_sim/mirror", body=body, trickle=trickle
        )
        if status == 200 and data != body:
            raise Mismatch(f"mirror returned {len(data)} bytes for {size}, content differs")
    elif kind in ("download", "slow_read"):
        size = rng.randint(1 << 20, 4 << 20) if kind == "download" else 1 << 20
        rec["bytes"] = size
        status, headers, data = await http_exchange(
            rec, scheme, port, ctx, "GET", f"/_sim/bytes?n={size}", slow_read=kind == "slow_read"
        )
        if status == 200 and (len(data) != size or data.count(b"x") != size):
            raise Mismatch(f"download of {size} bytes returned {len(data)}")
    elif kind == "websocket":
        await websocket_echo(rec, scheme, port, ctx, rng)
    else:
        raise ValueError(kind)


async def one_request(soak, rec, rng):
    """Runs one scheduled request and writes its outcome into ``rec``."""
    scheme = rec["scheme"]
    port = soak.alb.tls_port if scheme == "https" else soak.alb.http_port
    rec["start"] = time.monotonic()
    try:
        await asyncio.wait_for(run_request(rec, scheme, port, soak.ctx, rng), REQUEST_TIMEOUT)
        ok = rec.get("status") in (200, 101)
        rec["outcome"] = "ok" if ok else f"status_{rec.get('status')}"
    except Mismatch as e:
        rec["outcome"], rec["detail"] = "body_mismatch", str(e)
    except Truncated as e:
        rec["outcome"], rec["detail"] = "truncated", str(e)
    except asyncio.TimeoutError:
        rec["outcome"] = "timeout"
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as e:
        rec["outcome"] = "truncated" if rec.get("started") else "connection_error"
        rec["detail"] = f"{type(e).__name__}: {e}"
    rec["end"] = time.monotonic()


# === The soak ===


class Soak:
    """The processes, the chaos loops, the load, and what they recorded."""

    def __init__(self, args):
        self.args = args
        self.rng_chaos = random.Random(f"{args.seed}-chaos")
        self.rng_load = random.Random(f"{args.seed}-load")
        self.workdir = tempfile.mkdtemp(prefix="alb-soak-")
        self.alb = Alb(args, self.workdir)
        self.ctx = tls_context()
        self.backends = {}
        self.extra_port = None
        self.records = []
        self.events = []  # (time, what, detail)
        self.kills = []  # {"port", "at", "restarted"}
        self.samples = []  # (t, rss_kib, fds)
        self.send_lag = []
        self.rotations = {"done": 0, "verified": 0, "not_verified": 0}
        self.reloads = {"sighup": 0, "post": 0, "post_failed": 0}
        self.stopping = False
        self.stop_event = None
        self.t0 = None

    def log(self, what, detail=""):
        t = time.monotonic() - self.t0 if self.t0 else 0.0
        self.events.append((round(t, 3), what, detail))
        if self.args.verbose:
            print(f"[{t:7.2f}] {what} {detail}", file=sys.stderr)

    def start(self):
        for i, extra in enumerate(BACKEND_ARGS + [EXTRA_BACKEND_ARGS]):
            port = free_port()
            log = os.path.join(self.workdir, f"backend-{port}.log")
            b = Backend(self.args.alb, port, extra, log)
            b.start()
            self.backends[port] = b
            if i < len(BACKEND_ARGS):
                self.alb.weights[port] = 1
            else:
                self.extra_port = port
        self.alb.start()

    # --- chaos ---

    async def pause(self, seconds):
        """Sleeps; True when the soak is stopping (a chaos loop then ends after finishing
        what it started, so a killed backend is always restarted)."""
        try:
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        return self.stopping

    async def killer(self):
        rng = self.rng_chaos
        while not self.stopping:
            if await self.pause(rng.uniform(3, 8)):
                return
            port = rng.choice(sorted(self.backends))
            b = self.backends[port]
            b.kill()
            kill = {"port": port, "at": b.down_since, "restarted": None}
            self.kills.append(kill)
            self.log("kill", port)
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            await asyncio.get_running_loop().run_in_executor(None, b.start)
            kill["restarted"] = time.monotonic()
            self.log("restart", port)

    async def reloader(self):
        rng = random.Random(f"{self.args.seed}-reload")
        while not self.stopping:
            if await self.pause(rng.uniform(2, 6)):
                return
            weights = self.alb.weights
            if rng.random() < 0.5:
                if self.extra_port in weights:
                    del weights[self.extra_port]
                    change = f"remove {self.extra_port}"
                else:
                    weights[self.extra_port] = 1
                    change = f"add {self.extra_port}"
            else:
                port = rng.choice(sorted(weights))
                weights[port] = 3 if weights[port] == 1 else 1
                change = f"weight {port}={weights[port]}"
            self.alb.write_config()
            if rng.random() < 1 / 3:
                try:
                    loop = asyncio.get_running_loop()
                    status = await loop.run_in_executor(None, self.alb.post_reload)
                    self.reloads["post"] += 1
                    self.log("reload POST /reload", f"{change} -> {status}")
                except OSError as e:
                    self.reloads["post_failed"] += 1
                    self.log("reload POST /reload failed", f"{change}: {e}")
            else:
                self.alb.sighup()
                self.reloads["sighup"] += 1
                self.log("reload SIGHUP", change)

    async def rotator(self):
        rng = random.Random(f"{self.args.seed}-rotate")
        loop = asyncio.get_running_loop()
        while not self.stopping:
            if await self.pause(rng.uniform(5, 12)):
                return
            scratch = tempfile.mkdtemp(dir=self.workdir)
            await loop.run_in_executor(None, self.alb.gen_cert, scratch)
            with open(os.path.join(scratch, "localhost.crt")) as f:
                want = ssl.PEM_cert_to_DER_cert(f.read())
            # Both renames happen with no await between them: no SIGHUP of ours sees a pair
            # from two generations.
            os.replace(os.path.join(scratch, "localhost.key"), self.alb.key_file)
            os.replace(os.path.join(scratch, "localhost.crt"), self.alb.cert_file)
            shutil.rmtree(scratch, ignore_errors=True)
            self.alb.sighup()
            self.rotations["done"] += 1
            verified = False
            for _ in range(50):  # up to 5 s: a debug build on a busy machine is slow
                await asyncio.sleep(0.1)
                try:
                    _, writer = await connect("https", self.alb.tls_port, self.ctx)
                    got = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                    writer.close()
                except (OSError, ssl.SSLError):
                    continue
                if got == want:
                    verified = True
                    break
            self.rotations["verified" if verified else "not_verified"] += 1
            self.log("rotate", "served" if verified else "NOT served after 5 s")

    async def sampler(self):
        while True:
            s = self.alb.sample()
            if s:
                self.samples.append((time.monotonic() - self.t0, *s))
            await asyncio.sleep(1)

    # --- load ---

    async def load(self, duration):
        rng = self.rng_load
        kinds = [k for k, _, _ in KINDS]
        weights = [w for _, w, _ in KINDS]
        tasks = set()
        t = time.monotonic()
        end = self.t0 + duration
        while True:
            t += rng.expovariate(self.args.rate)
            if t >= end:
                break
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send_lag.append(max(0.0, time.monotonic() - t))
            rec = {
                "kind": rng.choices(kinds, weights)[0],
                "scheme": "https" if rng.random() < 0.5 else "http",
                "intended": t,
            }
            self.records.append(rec)
            task = asyncio.ensure_future(one_request(self, rec, random.Random(rng.random())))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return tasks

    async def run(self):
        self.t0 = time.monotonic()
        self.stop_event = asyncio.Event()
        chaos = [asyncio.ensure_future(c()) for c in (self.killer, self.reloader, self.rotator)]
        sampler = asyncio.ensure_future(self.sampler())
        in_flight = await self.load(self.args.duration)
        self.load_end = time.monotonic() - self.t0
        self.stopping = True
        self.stop_event.set()
        if in_flight:
            await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT + 5)
        await asyncio.gather(*chaos)
        sampler.cancel()

    # --- report ---

    def classify(self, rec):
        """None for a success, else (by_design_reason or None, description)."""
        if rec["outcome"] == "ok":
            return None
        port = rec.get("backend")
        start, end = rec["start"], rec["end"]

        def killed_during(p):
            for k in self.kills:
                if p is not None and k["port"] != p:
                    continue
                down_until = k["restarted"] or float("inf")
                # Killed while the request ran, or dead when it started (a health check had
                # not noticed yet): 0.25 s of slack for the kernel's reset to arrive.
                if k["at"] <= end + 0.25 and down_until >= start:
                    return True
            return False

        # Without a backend name (a connection cut before any answer) any kill in the
        # request's time counts.
        if not killed_during(port):
            if (
                rec["kind"] == "websocket"
                and rec.get("status") == 101
                and rec.get("echoes") == 0
                and killed_during(None)
            ):
                # Seen in this soak and reproduced alone: an upgrade whose first backend
                # refused the connection is retried to another one, which answers 101, but
                # the retried request no longer carries the client's upgrade (Replay in
                # src/retry.rs keeps method, URI, headers and peer only), so the tunnel
                # cannot start ("upgrade failed error=no upgrade available" at debug level)
                # and the client sees 101 and then the connection closed.
                return ("alb_bug", "upgrade_retried_then_closed")
            return (None, "unexplained")
        method = METHOD[rec["kind"]]
        if rec["kind"] == "websocket" and rec.get("started"):
            return ("websocket_on_killed_backend", "")
        if method == "POST":
            return ("post_on_killed_backend", "")
        if rec.get("started") and rec.get("status") == 200:
            return ("response_started_on_killed_backend", "")
        return (None, "GET failed before its response started: ALB should have retried it")

    def report(self, alb_exit):
        args = self.args
        by_kind = {}
        by_design = {}
        unexplained, by_design_samples, alb_bugs = [], [], {}
        failed_gets, failed_posts = 0, 0
        for rec in self.records:
            if "outcome" not in rec:
                rec.update(outcome="unfinished", start=rec["intended"], end=time.monotonic())
            k = by_kind.setdefault(rec["kind"], {"total": 0, "http": 0, "https": 0, "outcomes": {}})
            k["total"] += 1
            k[rec["scheme"]] += 1
            k["outcomes"][rec["outcome"]] = k["outcomes"].get(rec["outcome"], 0) + 1
            c = self.classify(rec)
            if c is None:
                continue
            reason, why = c
            if METHOD[rec["kind"]] == "POST":
                failed_posts += 1
            elif rec["kind"] != "websocket" and reason in (None, "alb_bug"):
                failed_gets += 1
            sample = {
                "t": round(rec["start"] - self.t0, 3),
                "duration_s": round(rec["end"] - rec["start"], 3),
                "kind": rec["kind"],
                "scheme": rec["scheme"],
                "outcome": rec["outcome"],
                "status": rec.get("status"),
                "backend": rec.get("backend"),
                "detail": rec.get("detail", ""),
                "send_error": rec.get("send_error"),
                "why": why or reason,
            }
            if reason == "alb_bug":
                alb_bugs[why] = alb_bugs.get(why, 0) + 1
                unexplained.append(sample)
            elif reason:
                by_design[reason] = by_design.get(reason, 0) + 1
                by_design_samples.append(sample)
            else:
                unexplained.append(sample)
        with open(self.alb.log_path, errors="replace") as f:
            log = f.read().splitlines()
        panics = [l for l in log if "panicked" in l]
        backend_panics = 0
        for b in self.backends.values():
            with open(b.log_path, errors="replace") as f:
                backend_panics += sum("panicked" in l for l in f)

        first_minute = 60.0 if args.duration >= 180 else args.duration / 4
        ring_full = WARMUP_REQUESTS <= len(self.records)
        warm = max(
            first_minute,
            self.records[WARMUP_REQUESTS - 1]["intended"] - self.t0 if ring_full else 0.0,
        )
        rss_check_applies = args.duration >= 180 and ring_full and 2 * warm <= self.load_end
        loaded = [s for s in self.samples if s[0] <= self.load_end]

        def around(t):
            near = sorted(loaded, key=lambda s: abs(s[0] - t))[:5]
            if not near:
                return 0, 0
            return statistics.median(s[1] for s in near), statistics.median(s[2] for s in near)

        rss_warm, fd_warm = around(warm)
        rss_minute = around(first_minute)[0]
        rss_end, fd_end = around(self.load_end)
        fd_start = self.samples[0][2] if self.samples else 0
        lag = sorted(self.send_lag) or [0.0]
        total = len(self.records)
        ok = sum(r["outcome"] == "ok" for r in self.records)
        rss_growth = (rss_end - rss_warm) / rss_warm if rss_warm else 0.0
        rss_growth_minute = (rss_end - rss_minute) / rss_minute if rss_minute else 0.0
        checks = {
            "no_failed_get": failed_gets == 0,
            "failed_posts_at_most_kills": failed_posts <= len(self.kills),
            "no_unexplained_failure": len(unexplained) == sum(alb_bugs.values()),
            "no_failure_from_known_alb_bug": not alb_bugs,
            "rss_growth_within_10pct": (
                rss_growth <= RSS_GROWTH_LIMIT if rss_check_applies else None
            ),
            "fd_growth_within_slack": fd_end <= fd_warm + FD_SLACK,
            "no_panic": not panics,
        }
        report = {
            "seed": args.seed,
            "duration_s": args.duration,
            "rate_per_s": args.rate,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "requests": {"total": total, "ok": ok, "failed": total - ok, "by_kind": by_kind},
            "failures": {
                "failed_gets": failed_gets,
                "failed_posts": failed_posts,
                "by_design": by_design,
                "unexplained": len(unexplained) - sum(alb_bugs.values()),
                "alb_bugs": alb_bugs,
                "unexplained_samples": unexplained[:50],
                "by_design_samples": by_design_samples[:50],
            },
            "chaos": {
                "kills": len(self.kills),
                "reloads": self.reloads["sighup"] + self.reloads["post"],
                "reloads_detail": self.reloads,
                "cert_rotations": self.rotations["done"],
                "cert_rotations_verified": self.rotations["verified"],
                "config_reload_failed_lines": sum("config reload failed" in l for l in log),
                "tls_reload_failed_lines": sum("TLS certificate reload failed" in l for l in log),
            },
            "alb": {
                "warmup_s": round(warm, 1),
                "rss_kib_after_first_minute": rss_minute,
                "rss_growth_since_first_minute": round(rss_growth_minute, 4),
                "rss_kib_after_warmup": rss_warm,
                "rss_kib_end": rss_end,
                "rss_kib_max": max((s[1] for s in self.samples), default=0),
                "rss_growth": round(rss_growth, 4),
                "fd_start": fd_start,
                "fd_after_warmup": fd_warm,
                "fd_end": fd_end,
                "fd_max": max((s[2] for s in self.samples), default=0),
                "panicked_lines": len(panics),
                "panic_samples": panics[:5],
                "backend_panicked_lines": backend_panics,
                "exit_status": alb_exit,
            },
            "generator": {
                "send_lag_ms_p99": round(1000 * lag[int(0.99 * (len(lag) - 1))], 2),
                "send_lag_ms_max": round(1000 * lag[-1], 2),
            },
            "samples": [[round(t, 1), r, f] for t, r, f in self.samples],
            "events": self.events,
            "acceptance": checks,
            "passed": all(v is not False for v in checks.values()),
            "workdir": self.workdir,
        }
        return report


def summary(r):
    """The report in a few lines for a person."""
    f, c, a = r["failures"], r["chaos"], r["alb"]
    lines = [
        f"soak: seed {r['seed']}, {r['duration_s']} s at {r['rate_per_s']}/s: "
        f"{r['requests']['total']} requests, {r['requests']['ok']} ok,"
        f" {r['requests']['failed']} failed",
    ]
    for kind, k in sorted(r["requests"]["by_kind"].items()):
        outs = ", ".join(f"{o} {n}" for o, n in sorted(k["outcomes"].items()))
        lines.append(f"  {kind:<13} {k['total']:6}  (http {k['http']}, https {k['https']})  {outs}")
    lines += [
        f"  failures by design: {f['by_design'] or 'none'}; ALB bugs: {f['alb_bugs'] or 'none'};"
        f" unexplained: {f['unexplained']};"
        f" failed GETs {f['failed_gets']}, failed POSTs {f['failed_posts']}",
        f"  chaos: {c['kills']} kills, {c['reloads']} reloads, {c['cert_rotations']} certificate"
        f" rotations ({c['cert_rotations_verified']} seen served)",
        f"  alb RSS {a['rss_kib_after_first_minute'] / 1024:.1f} MiB after the first minute,"
        f" {a['rss_kib_after_warmup'] / 1024:.1f} MiB after warm-up ({a['warmup_s']:.0f} s),"
        f" {a['rss_kib_end'] / 1024:.1f} MiB at the end ({100 * a['rss_growth']:+.1f}%),"
        f" max {a['rss_kib_max'] / 1024:.1f} MiB",
        f"  alb fds {a['fd_start']} at start, {a['fd_after_warmup']} after warm-up,"
        f" {a['fd_end']} at the end, max {a['fd_max']}; panicked lines {a['panicked_lines']};"
        f" exit {a['exit_status']}",
        f"  send lag p99 {r['generator']['send_lag_ms_p99']} ms,"
        f" max {r['generator']['send_lag_ms_max']} ms",
    ]
    for u in f["unexplained_samples"][:10]:
        lines.append(f"  UNEXPLAINED {u}")
    for name, ok in r["acceptance"].items():
        lines.append(f"  {'PASS' if ok else 'n/a ' if ok is None else 'FAIL'} {name}")
    lines.append("soak " + ("PASSED" if r["passed"] else "FAILED") + f" (logs in {r['workdir']})")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alb", default="target/release/alb", help="the alb binary")
    p.add_argument("--duration", type=float, default=60, help="seconds of load")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=30, help="requests per second (Poisson)")
    p.add_argument("--workers", type=int, default=2, help="alb's worker threads")
    p.add_argument("--json", help="also write the JSON report here")
    p.add_argument("--keep", action="store_true", help="keep the work directory after a pass")
    p.add_argument("--verbose", action="store_true", help="print chaos events as they happen")
    args = p.parse_args()
    args.alb = os.path.abspath(args.alb)

    soak = Soak(args)
    alb_exit = None
    try:
        soak.start()
        asyncio.run(soak.run())
    except SetupError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    finally:
        if soak.alb.proc:
            alb_exit = soak.alb.stop()
        for b in soak.backends.values():
            b.stop()
    report = soak.report(alb_exit)
    text = json.dumps(report, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    print(summary(report), file=sys.stderr)
    if report["passed"] and not args.keep:
        shutil.rmtree(soak.workdir, ignore_errors=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
