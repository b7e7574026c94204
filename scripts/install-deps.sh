#!/usr/bin/env bash
# Installs the Debian packages the gateway, its demo and its tests need, when missing.
# Services shipped by packages (nginx, haproxy, prometheus) are not started on install.
set -euo pipefail
packages=(libssl-dev openssl curl ca-certificates python3 "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}"
# policy-rc.d keeps the packages' services from starting; one made here is removed on
# exit, so an operator's host is left as it was (CI makes its own, and keeps it).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
