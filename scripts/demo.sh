#!/usr/bin/env bash
# One command from a fresh clone to a running gateway:
#   installs missing packages, builds, generates example certificates,
#   starts the demo upstream and the gateway in the background (logs in demo/).
# Stop everything with: bash scripts/demo.sh stop
# When the gateway does not come up, it says why (the gateway's own error), stops what it
# started and exits 1.
# EDGE_GATEWAY=/path/to/edge-gateway skips the install and build steps (the tests use it);
# DEMO_DIR puts the demo's files elsewhere than demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=$(realpath -m "${DEMO_DIR:-demo}")

stop_all() {
  for f in "$demo"/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

if [ "${1:-}" = "stop" ]; then
  stop_all
  echo "demo stopped"; exit 0
fi
if [ -n "${EDGE_GATEWAY:-}" ]; then
  bin=$EDGE_GATEWAY
else
  bash scripts/install-deps.sh
  swift build --product edge-gateway
  bin=$(swift build --show-bin-path)/edge-gateway
fi
# The directory is emptied: only one the demo made (its marker) or an empty one.
if [ -d "$demo" ] && [ -n "$(ls -A "$demo")" ] && [ ! -e "$demo/.edge-gateway-demo" ]; then
  echo "demo: refusing to empty $demo, which the demo did not make (DEMO_DIR names a directory of its own)" >&2
  exit 1
fi
[ -d "$demo" ] && stop_all
rm -rf "$demo" && mkdir -p "$demo" && touch "$demo/.edge-gateway-demo"
bash certs-example/generate.sh "$demo/certs" >/dev/null
cat > "$demo/config.yaml" <<YAML
# Example configuration: see docs/configuration.md for every key.
listeners:
  - name: https
    address: "127.0.0.1:8443"
    tls: { h2: true }            # the certificate set below, chosen by SNI; HTTP/2 by ALPN
  - name: http
    address: "127.0.0.1:8080"
certificates:
  sources:
    - certbot: certs/live        # every live/<name>/ is a lineage, watched
  default: localhost
  ca_file: certs/ca.pem          # check served chains against the example root
upstreams:
  app:
    backends: ["127.0.0.1:9000"]
    health_check: { kind: http, path: /, interval: 5s }
routes:
  - upstream: app
admin:
  address: "127.0.0.1:9901"
YAML
"$bin" check -c "$demo/config.yaml"

# Fails loudly: what went wrong, from the process's own log, then everything stopped.
fail() {
  echo "demo: $1" >&2
  if [ -s "$2" ]; then
    echo "--- last lines of $2:" >&2
    tail -n 5 "$2" >&2
  fi
  stop_all
  exit 1
}

# Started, then waited for: alive and answering, within 10 s.
"$bin" demo-upstream --listen 127.0.0.1:9000 > "$demo/upstream.log" 2>&1 & echo $! > "$demo/upstream.pid"
for _ in $(seq 1 100); do
  kill -0 "$(cat "$demo/upstream.pid")" 2>/dev/null || fail "the demo upstream exited at start" "$demo/upstream.log"
  curl -s -o /dev/null http://127.0.0.1:9000/ && break
  sleep 0.1
done
curl -s -o /dev/null http://127.0.0.1:9000/ || fail "the demo upstream does not answer on 127.0.0.1:9000" "$demo/upstream.log"
# Readiness is asked of 127.0.0.1:9901: another program answering there would pass for ours.
if (exec 3<>/dev/tcp/127.0.0.1/9901) 2>/dev/null; then
  fail "port 9901 (the admin endpoint) is taken: another gateway or demo runs (bash scripts/demo.sh stop)" /dev/null
fi
"$bin" run -c "$demo/config.yaml" > "$demo/gateway.log" 2>&1 & echo $! > "$demo/gateway.pid"
for _ in $(seq 1 100); do
  kill -0 "$(cat "$demo/gateway.pid")" 2>/dev/null || fail "the gateway exited at start" "$demo/gateway.log"
  curl -s -o /dev/null http://127.0.0.1:9901/readyz && break
  sleep 0.1
done
curl -s -o /dev/null http://127.0.0.1:9901/readyz || fail "the gateway is not ready after 10 s" "$demo/gateway.log"
kill -0 "$(cat "$demo/gateway.pid")" 2>/dev/null || fail "the gateway exited at start" "$demo/gateway.log"
# Another program on port 9000 answers in its place when ours could not bind.
kill -0 "$(cat "$demo/upstream.pid")" 2>/dev/null || fail "the demo upstream exited (is port 9000 taken?)" "$demo/upstream.log"
cat <<TXT

The gateway is running (logs: $demo/gateway.log). Try:
  curl --cacert $demo/certs/ca.pem https://localhost:8443/
  curl --cacert $demo/certs/ca.pem --resolve a.example.test:8443:127.0.0.1 https://a.example.test:8443/
  curl http://127.0.0.1:8080/headers
  curl --http2 --cacert $demo/certs/ca.pem https://localhost:8443/
  curl http://127.0.0.1:9901/status
  curl http://127.0.0.1:9901/status/upstreams
  openssl s_client -connect 127.0.0.1:8443 -servername x.b.example.test </dev/null 2>/dev/null | openssl x509 -noout -subject -ext subjectAltName
Stop it with: ${DEMO_DIR:+DEMO_DIR=$demo }bash $PWD/scripts/demo.sh stop
TXT
