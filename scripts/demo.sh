#!/usr/bin/env bash
# One command from a fresh clone to a running gateway:
#   installs missing packages, builds, generates example certificates,
#   starts the demo upstream and the gateway in the background (logs in demo/).
# Stop everything with: bash scripts/demo.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
demo=demo
if [ "${1:-}" = "stop" ]; then
  for f in "$demo"/*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  echo "demo stopped"; exit 0
fi
bash scripts/install-deps.sh
swift build --product edge-gateway
bin=$(swift build --show-bin-path)/edge-gateway
for f in "$demo"/*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
rm -rf "$demo" && mkdir -p "$demo"
bash certs-example/generate.sh "$demo/certs" >/dev/null
cat > "$demo/config.yaml" <<YAML
# Example configuration: see README.md for every key.
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
"$bin" demo-upstream --listen 127.0.0.1:9000 > "$demo/upstream.log" 2>&1 & echo $! > "$demo/upstream.pid"
"$bin" run -c "$demo/config.yaml" > "$demo/gateway.log" 2>&1 & echo $! > "$demo/gateway.pid"
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:9901/readyz && break; sleep 0.1; done
cat <<TXT

The gateway is running (logs: $demo/gateway.log). Try:
  curl --cacert $demo/certs/ca.pem https://localhost:8443/
  curl --cacert $demo/certs/ca.pem --resolve a.example.test:8443:127.0.0.1 https://a.example.test:8443/
  curl http://127.0.0.1:8080/headers
  curl --http2 --cacert demo/certs/ca.pem https://localhost:8443/
  curl http://127.0.0.1:9901/status
  curl http://127.0.0.1:9901/status/upstreams
  openssl s_client -connect 127.0.0.1:8443 -servername x.b.example.test </dev/null 2>/dev/null | openssl x509 -noout -subject -ext subjectAltName
Stop it with: bash scripts/demo.sh stop
TXT
