#!/usr/bin/env bash
# Runs the whole test suite: installs missing system packages, builds, runs `swift test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# promtool (prometheus) checks the /metrics exposition; chromium renders the status page;
# h2load (nghttp2-client) drives HTTP/2; testssl.sh and sslyze (PyPI, in a venv) scan TLS;
# certbot renews against pebble (the ACME test server) in the end-to-end test; haproxy
# (TCP mode) sends PROXY protocol headers to the gateway; wrk, a client that never retries,
# counts what reloads and takeovers cost; nginx (ssl_verify_client) is a mutual-TLS upstream.
bash scripts/install-deps.sh prometheus chromium fonts-dejavu-core nghttp2-client testssl.sh python3-venv certbot pebble haproxy wrk iproute2 nginx-light
swift build --build-tests
swift test --skip-build
bash scripts/tls-compliance.sh
