#!/usr/bin/env bash
# The main job on a fresh machine: set everything up, start small local backends, run the agent on
# the bundled example (fixtures/demo), send requests through the VIPs and show where each one went,
# change the example under the running agent, then leave the host clean.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash scripts/setup.sh
clb="$root/.venv/bin/clbagent"

work=$(mktemp -d /tmp/clbagent-demo.XXXXXX)
chmod 755 "$work"   # nginx workers run unprivileged and must reach their temp directories
mkdir -p "$work/documents"
cp -r fixtures/demo/. "$work/documents/"
cat >"$work/agent.yaml" <<YAML
documents: $work/documents
state_dir: $work/state
status_socket: $work/status.sock
metrics_address: 127.0.0.1:19489
wait_min: 0.1
wait_max: 1
YAML

agent_pid="" backends_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  # The agent leaves nginx serving when it stops (the data plane outlives it); the demo stops it too.
  if [ -f "$work/state/nginx/run/nginx.pid" ]; then
    kill -QUIT "$(cat "$work/state/nginx/run/nginx.pid")" 2>/dev/null || true
    for _ in $(seq 50); do [ -f "$work/state/nginx/run/nginx.pid" ] || break; sleep 0.1; done
  fi
  [ -n "$backends_pid" ] && kill -TERM "$backends_pid" 2>/dev/null || true
  rm -rf "$work"
  echo "demo: host left clean (agent, nginx and backends stopped, $work removed)"
}
trap cleanup EXIT

.venv/bin/python scripts/demo-backends.py web-1=127.0.20.1:9001 web-2=127.0.20.2:9001 \
  api-1=127.0.20.3:9002 blog-1=127.0.20.4:9003 web-3=127.0.20.5:9001 &
backends_pid=$!

echo "== clbagent run --config $work/agent.yaml"
"$clb" run --config "$work/agent.yaml" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do [ -S "$work/status.sock" ] && break; sleep 0.1; done
"$clb" status --config "$work/agent.yaml"

request() {  # request HOST URL → prints where it went
  local host=$1 url=$2 out
  out=$(curl -sS --max-time 5 -H "Host: $host" "$url" 2>&1 | head -n1) || true
  printf '  %-48s -> %s\n' "$host ${url}" "$out"
}
show() {
  echo "== traffic through the VIPs"
  for _ in 1 2 3 4; do request www.example.com http://127.0.10.1:8080/; done
  request www.example.com http://127.0.10.1:8080/api/orders
  request blog.example.org http://127.0.10.2:8080/
  printf '  %-48s -> %s\n' "www.example.com https://127.0.10.1:8443/ (TLS, SNI)" \
    "$(curl -sS --max-time 5 --cacert fixtures/certs/ca.crt --resolve www.example.com:8443:127.0.10.1 https://www.example.com:8443/ 2>&1 | head -n1)"
}
show

echo "== a target added to the site (web-3) and the API moved to it: the agent applies the edit"
sed -i 's/          - {EniIp: 127.0.20.2, Port: 9001, Weight: 10}/&\n          - {EniIp: 127.0.20.5, Port: 9001, Weight: 10}/; s/127.0.20.3, Port: 9002/127.0.20.5, Port: 9001/' \
  "$work/documents/shop.yaml"
sleep 1.5
show

echo "== an invalid edit of the blog (weight 500): quarantined, its last good version keeps serving"
sed -i 's/Weight: 10}/Weight: 500}/' "$work/documents/blog.yaml"
sleep 1.5
request blog.example.org http://127.0.10.2:8080/
"$clb" status --config "$work/agent.yaml"
echo "== Prometheus metrics of the agent (http://127.0.0.1:19489/metrics), requests per rule so far"
curl -sS --max-time 5 http://127.0.0.1:19489/metrics | grep '^clb_http_requests_total' | cut -c1-160 || true
echo "== agent log (structured events)"
cut -c1-200 "$work/agent.log"
