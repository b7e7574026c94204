#!/usr/bin/env bash
# Installs the gateway on this host: a release build (Swift runtime linked in statically),
# packaged as a Debian package (scripts/package-deb.sh) and installed with apt, so that
# `apt-get remove edge-gateway` (or `apt-get purge`) takes it away again. Uses sudo when not root.
# EDGE_GATEWAY=/path/to/edge-gateway packages that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# EDGE_GATEWAY_DEB_DIR: where the .deb goes (default .build/deb).
deb=$(bash scripts/package-deb.sh "${EDGE_GATEWAY:-}" "${EDGE_GATEWAY_DEB_DIR:-}")
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 "$deb"
echo "installed $deb"
