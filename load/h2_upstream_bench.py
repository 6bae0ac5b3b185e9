#!/usr/bin/env python3
"""HTTP/2 to the backends, side by side: alb vs nginx vs haproxy, all speaking h2c both ways.

The HTTP/2-upstream row of the README's performance table. Same approach as the team's
../shared/bench/proxy_bench.py (copied, not imported: that script is not ours to change):
each proxy pinned to CPU 0 with one worker; h2load and the backends share CPU 1; rounds
interleave the targets so machine drift hits all of them alike; medians are printed.

Clients: h2load, plain h2c with prior knowledge, --conns connections x --streams streams each.
Backends: three nginx servers answering h2c with prior knowledge (`listen ... http2`).
Proxies, each round robin over the three backends over HTTP/2:
  - alb: "upstream_protocol": "h2" (its HTTP/2 pool), `alb run --config FILE`;
  - nginx: `grpc_pass` (nginx's only HTTP/2 upstream; `proxy_http_version` stops at 1.1), with
    `keepalive` connections to the upstream;
  - haproxy: `proto h2` on the server lines and on the bind line.
The cpu column is the proxy's own CPU time (user+sys, its children included) per request.
h2load reports mean and max per request, not percentiles: p50 shows the mean, p99 the max.
Needs: apt-get install -y nginx haproxy nghttp2-client.

usage: h2_upstream_bench.py [--alb PATH_TO_BINARY] [--rounds N] [--secs S] [--conns C] [--streams M]
"""
import argparse, json, os, re, signal, subprocess, sys, tempfile, time, socket, statistics

BACKENDS = [19001, 19002, 19003]
PORTS = {"nginx": 18081, "haproxy": 18082, "alb": 18083}


def wait_port(port, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def peak_rss_mib(pid):
    """Peak resident memory (VmHWM) of pid and its children, in MiB."""
    total = 0
    pids = [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()] if os.path.exists(f"/proc/{pid}") else []
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_secs(pid):
    """user+sys CPU seconds of pid and its children (nginx's worker is the master's child)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        kids = [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        kids = []
    for p in [pid] + kids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError):
            pass
    return total / tick


def start(cmd, cpu, log):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=log, stderr=log, start_new_session=True)


def h2load(port, secs, conns, streams):
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-c", str(conns), "-m", str(streams), "-D", str(secs),
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    rps = float(re.search(r"finished in .*?, ([\d.]+) req/s", out).group(1))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    bad = int(m.group(3)) + int(m.group(4)) if m else -1
    f = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    failed = f"{f.group(1)} failed, {f.group(2)} errored" if f else "?"
    lm = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)

    def ms(v, u):
        return float(v) / 1000 if u == "us" else float(v) * 1000 if u == "s" else float(v)
    p50 = ms(lm.group(5), lm.group(6)) if lm else 0.0
    p99 = ms(lm.group(3), lm.group(4)) if lm else 0.0
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": bad, "sockerr": failed}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--alb", help="path to the alb binary (omit to bench the peers only)")
    ap.add_argument("--alb-args", default="run --config {config}", help="alb arguments; {config} is replaced")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=6)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per client connection")
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="h2bench-")
    log = open(os.path.join(d, "log.txt"), "w")
    procs = []
    os.chmod(d, 0o755)
    servers = "\n".join(f"server {{ listen 127.0.0.1:{p} http2 reuseport; location / {{ return 200 'backend {p}\\n'; }} }}" for p in BACKENDS)
    be_conf = f"""worker_processes 1; daemon off; pid {d}/be.pid; error_log {d}/be.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000; http2_max_requests 1000000;
 {servers}
}}"""
    up = "\n".join(f"server 127.0.0.1:{p};" for p in BACKENDS)
    lb_conf = f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000; http2_max_requests 1000000;
 upstream ups {{ {up} keepalive 128; keepalive_requests 1000000; }}
 server {{ listen 127.0.0.1:{PORTS['nginx']} http2;
   location / {{ grpc_pass grpc://ups; }} }}
}}"""
    open(f"{d}/be.conf", "w").write(be_conf)
    open(f"{d}/lb.conf", "w").write(lb_conf)
    hap = f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']} proto h2
  default_backend be
backend be
  balance roundrobin
""" + "\n".join(f"  server s{p} 127.0.0.1:{p} proto h2" for p in BACKENDS) + "\n"
    open(f"{d}/haproxy.cfg", "w").write(hap)

    procs.append(start(["nginx", "-c", f"{d}/be.conf", "-p", d], 1, log))
    nginx_lb = start(["nginx", "-c", f"{d}/lb.conf", "-p", d], 0, log)
    haproxy = start(["haproxy", "-f", f"{d}/haproxy.cfg"], 0, log)
    procs += [nginx_lb, haproxy]
    owners = {"nginx": nginx_lb, "haproxy": haproxy}
    targets = {"direct": BACKENDS[0], "nginx": PORTS["nginx"], "haproxy": PORTS["haproxy"]}
    if a.alb:
        cfg = {"port": str(PORTS["alb"]), "strategy": "round_robin",
               "backends": [f"http://127.0.0.1:{p}" for p in BACKENDS],
               "upstream_protocol": "h2",
               "health_check_path": "/health", "health_check_interval": 5, "workers": 1}
        open(f"{d}/alb.json", "w").write(json.dumps(cfg))
        args = a.alb_args.replace("{config}", f"{d}/alb.json").split()
        alb = subprocess.Popen(["taskset", "-c", "0", a.alb] + args, stdout=log, stderr=log, start_new_session=True)
        procs.append(alb)
        owners["alb"] = alb
        targets["alb"] = PORTS["alb"]
    try:
        for name, port in targets.items():
            if not wait_port(port):
                print(f"{name} did not open port {port}; log: {d}/log.txt", file=sys.stderr)
                sys.exit(2)
        for name, port in targets.items():  # warm-up
            h2load(port, 1, a.conns, a.streams)
        res = {n: [] for n in targets}
        for _ in range(a.rounds):
            for name, port in targets.items():
                c0 = cpu_secs(owners[name].pid) if name in owners else 0
                r = h2load(port, a.secs, a.conns, a.streams)
                c1 = cpu_secs(owners[name].pid) if name in owners else 0
                r["cpu_us"] = (c1 - c0) * 1e6 / max(1.0, r["rps"] * a.secs)
                res[name].append(r)
        med = {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_us")} for n, rs in res.items()}
        rss = {n: peak_rss_mib(owners[n].pid) for n in med if n in owners}
        print(f"h2c both ways, {a.conns} connections x {a.streams} streams (p50 = mean, p99 = max: h2load)")
        print(f"{'target':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10} {'peakRSS MiB':>12}  non2xx failures")
        for n, m in med.items():
            r = f"{rss[n]:12.1f}" if n in rss else f"{'-':>12}"
            cpu = f"{m['cpu_us']:10.2f}" if n in owners else f"{'-':>10}"
            print(f"{n:8} {m['rps']:10.0f} {m['p50']:8.3f} {m['p99']:8.3f} {cpu} {r}  {sum(x['non2xx'] for x in res[n])} {res[n][-1]['sockerr']}")
        if "alb" in med:
            for peer in ("nginx", "haproxy"):
                print(f"ratio alb/{peer}: rps {med['alb']['rps'] / med[peer]['rps']:.2f}  mean {med['alb']['p50'] / med[peer]['p50']:.2f}"
                      f"  cpu/req {med['alb']['cpu_us'] / med[peer]['cpu_us']:.2f}")
        json.dump({"median": med, "runs": res}, open(os.path.join(d, "result.json"), "w"))
        print(f"result: {d}/result.json")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
