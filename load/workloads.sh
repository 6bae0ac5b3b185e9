#!/usr/bin/env bash
# The performance issue's five workloads (get, post, big, h2, get at 1024 connections), each
# run with the team's shared script (../shared/bench/proxy_bench.py: alb beside nginx and
# HAProxy, one core each), then all five again: two passes, so each figure has a second
# opinion from the same session.
#
#   apt-get install -y nginx haproxy wrk openssl nghttp2-client    # once
#   load/workloads.sh                        # builds the release binary, prints both passes
#   load/workloads.sh path/to/alb            # another binary (for before/after comparisons)
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${PROXY_BENCH:-../shared/bench/proxy_bench.py}
binary=${1:-}
if [ -z "$binary" ]; then
  cargo build --release --quiet
  binary=target/release/alb
fi
for pass in 1 2; do
  for workload in "get" "post" "big" "h2" "get --conns 1024"; do
    echo "=== pass $pass: $workload ($(date +%H:%M:%S), load average $(cut -d' ' -f1 /proc/loadavg))"
    # shellcheck disable=SC2086 # "get --conns 1024" is two arguments
    python3 "$bench" --alb "$binary" --workload $workload | tail -7
  done
done
