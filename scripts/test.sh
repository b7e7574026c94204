#!/usr/bin/env bash
# Runs the whole test suite: installs missing system packages, builds, runs `swift test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# promtool (prometheus) checks the /metrics exposition; chromium renders the status page.
bash scripts/install-deps.sh prometheus chromium fonts-dejavu-core
swift build --build-tests
swift test --skip-build
