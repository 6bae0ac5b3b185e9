#!/usr/bin/env bash
# Side-by-side proxy benchmark: alb beside nginx and HAProxy, one core each, via the team's
# shared script (../shared/bench/proxy_bench.py), once per strategy, plain and with TLS.
#
#   apt-get install -y nginx haproxy wrk openssl    # once
#   load/bench.sh                                   # all four strategies, plain + TLS
#   load/bench.sh round_robin                       # chosen strategies only
#   ALB_EXTRA='{"access_log": {"path": "/tmp/a.log"}}' load/bench.sh round_robin
#                                                   # any config keys merged in
#
# The shared script writes alb's config itself with "strategy": "round_robin"; for the other
# strategies alb is started through a small wrapper that rewrites that one key. Every other
# feature (metrics, health checks, decision records, retries, outlier detection) stays on.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${PROXY_BENCH:-../shared/bench/proxy_bench.py}
strategies=("$@")
[ ${#strategies[@]} -gt 0 ] || strategies=(round_robin least_conn sticky adaptive)

cargo build --release --quiet
alb="$PWD/target/release/alb"
wrapper=$(mktemp -d)/alb-with-strategy
cat > "$wrapper" <<WRAP
#!/usr/bin/env bash
# alb run --config FILE, with the strategy taken from ALB_STRATEGY and the keys of the
# JSON object in ALB_EXTRA merged in.
config="\$3"
python3 - "\$config" <<'PY'
import json, os, sys
path = sys.argv[1]
config = json.load(open(path))
config["strategy"] = os.environ.get("ALB_STRATEGY", "round_robin")
config.update(json.loads(os.environ.get("ALB_EXTRA", "{}")))
json.dump(config, open(path, "w"))
PY
exec "$alb" "\$@"
WRAP
chmod +x "$wrapper"

for strategy in "${strategies[@]}"; do
  echo "== plain HTTP/1.1, strategy $strategy"
  ALB_STRATEGY=$strategy python3 "$bench" --alb "$wrapper"
done
echo "== TLS at the proxy, strategy ${strategies[0]}"
ALB_STRATEGY=${strategies[0]} python3 "$bench" --alb "$wrapper" --tls
