#!/usr/bin/env bash
# Runs the whole test suite: installs missing system packages, builds, runs `swift test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# promtool (prometheus) checks the /metrics exposition; chromium renders the status page;
# h2load (nghttp2-client) drives HTTP/2; testssl.sh and sslyze (PyPI, in a venv) scan TLS;
# certbot renews against pebble (the ACME test server) in the end-to-end test; haproxy
# (TCP mode) sends PROXY protocol headers to the gateway; wrk, a client that never retries,
# counts what reloads and takeovers cost; nginx (ssl_verify_client) is a mutual-TLS upstream.
#
# One line per phase with its time, so that a redirected log never looks hung for long.
phase() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@"
  echo "== $name: done in $((SECONDS - start)) s"
}
phase "install packages" bash scripts/install-deps.sh prometheus chromium fonts-dejavu-core nghttp2-client testssl.sh python3-venv certbot pebble haproxy wrk iproute2 nginx-light python3-grpcio
# doc-command: swift build --build-tests
phase "build" swift build --build-tests
# XCTest holds every test; --disable-swift-testing drops swift-testing's empty "0 tests" run.
# doc-command: swift test
phase "unit and end-to-end tests" swift test --skip-build --disable-swift-testing
phase "TLS scans (sslyze, testssl)" bash scripts/tls-compliance.sh
