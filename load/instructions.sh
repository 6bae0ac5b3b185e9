#!/usr/bin/env bash
# Instructions per proxied GET, counted by callgrind: exact and repeatable, where timing on a
# shared VM moves by ±15% between runs of the same binary. alb (one worker) runs under
# `valgrind --tool=callgrind` with instrumentation off; three nginx backends answer; after a
# warm-up of 2 000 requests, instrumentation is switched on for N requests
# (`h2load --h1 -n N -c 64`), then the profile is dumped.
#
#   apt-get install -y valgrind nginx nghttp2-client    # once
#   load/instructions.sh target/release/alb             # prints instructions per request
#   load/instructions.sh OLD NEW                        # two binaries, one after the other
#   N=50000 OUT=/tmp/profiles load/instructions.sh target/release/alb
#   ARGS="{config} forward" load/instructions.sh target/release/examples/hyper_floor
#   EXTRA='"retries": {"attempts": 0}' load/instructions.sh target/release/alb
#   POST_BYTES=1024 load/instructions.sh target/release/alb     # 1 KiB POSTs instead of GETs
#
# `callgrind_annotate --inclusive=yes` on the profile it names then shows where they go.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 ALB_BINARY [ALB_BINARY ...]" >&2; exit 2; }
n=${N:-20000}
# More config members, as JSON text: EXTRA='"retries": {"attempts": 0}'.
extra=${EXTRA:-}
# The binary's arguments; `{config}` becomes the config file's path.
args=${ARGS:-run --config \{config\}}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
dir=$(mktemp -d)
# POST_BYTES=1024: each request is a POST with a body of that many bytes instead of a GET.
load=()
if [ -n "${POST_BYTES:-}" ]; then
  head -c "$POST_BYTES" /dev/zero | tr '\0' x > "$dir/body"
  load=(-d "$dir/body")
fi
chmod 755 "$dir"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
servers=""
for port in 19401 19402 19403; do
  servers+="server { listen 127.0.0.1:$port; location / { return 200 'backend $port\n'; } }"$'\n'
done
cat > "$dir/backends.conf" <<CONF
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
$servers}
CONF
cat > "$dir/alb.json" <<CONF
{"port": "18401", "admin_addr": "127.0.0.1:18402", "strategy": "round_robin", "workers": 1,
 "backends": ["http://127.0.0.1:19401", "http://127.0.0.1:19402", "http://127.0.0.1:19403"],
 "health_check_path": "/health", "health_check_interval": 5${extra:+, $extra}}
CONF
nginx -c "$dir/backends.conf" -p "$dir" &
for binary in "$@"; do
  name=$(basename "$binary").$$
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/$name.out" \
    "$binary" ${args//\{config\}/$dir/alb.json} > "$dir/$name.log" 2>&1 &
  grinder=$!
  for _ in $(seq 1 200); do
    curl -s -o /dev/null http://127.0.0.1:18401/ && break
    sleep 0.5
  done
  h2load --h1 -n 2000 -c 64 "${load[@]}" http://127.0.0.1:18401/ > /dev/null
  callgrind_control -i on "$grinder" > /dev/null
  h2load --h1 -n "$n" -c 64 "${load[@]}" http://127.0.0.1:18401/ | grep -E "^requests:"
  callgrind_control -i off "$grinder" > /dev/null
  callgrind_control -d "$grinder" > /dev/null
  sleep 1
  kill "$grinder"
  wait "$grinder" 2>/dev/null || true
  # The dump asked for above is `.out.1`; `.out` is the (empty) one written at exit.
  profile="$out/$name.out.1"
  total=$(callgrind_annotate "$profile" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
  echo "$binary: $((total / n)) instructions per request ($profile)"
done
