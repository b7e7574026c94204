#!/usr/bin/env bash
# Builds the Debian package of the gateway with dpkg-deb:
#   bash scripts/package-deb.sh [BINARY] [OUTPUT_DIRECTORY]
# Without BINARY it builds a release binary with the Swift runtime linked in statically,
# so the package needs no Swift toolchain on the host. Prints the .deb's path.
#
# The package holds /usr/bin/edge-gateway, the systemd unit, /etc/edge-gateway/config.yaml
# (deploy/config.example.yaml, a conffile: an edited one survives upgrades) and the docs.
# Its postinst creates the edge-gateway user and group, /var/lib/edge-gateway/acme (the
# certbot webroot) and a placeholder certificate for the first start; it neither enables
# nor starts the service (ports 80 and 443 may belong to another server until you switch).
set -euo pipefail
umask 022  # dpkg-deb refuses a 0700 DEBIAN/, and installed directories must be readable
cd "$(dirname "$0")/.."
bin=${1:-}
out=$(realpath -m "${2:-.build/deb}")
if [ -z "$bin" ]; then
  # docs/operations.md's production build, with the Swift runtime linked in.
  swift build -c release -Xswiftc -enforce-exclusivity=unchecked --product edge-gateway --static-swift-stdlib >&2
  bin=$(swift build -c release -Xswiftc -enforce-exclusivity=unchecked --show-bin-path)/edge-gateway
fi
# Every build a version of its own, newer than the last (apt installs nothing over an
# equal version): the gateway's version, then the build time and commit.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo local)
# SOURCE_DATE_EPOCH (the reproducible-builds convention) fixes the build time.
version="$("$bin" --version)+$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y%m%d%H%M%S).g$commit"
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/edge-gateway_${version}_${arch}"

install -D -m 755 "$bin" "$root/usr/bin/edge-gateway"
install -D -m 644 deploy/edge-gateway.service "$root/lib/systemd/system/edge-gateway.service"
install -D -m 644 deploy/config.example.yaml "$root/etc/edge-gateway/config.yaml"
install -D -m 644 README.md "$root/usr/share/doc/edge-gateway/README.md"
for page in docs/*.md; do install -D -m 644 "$page" "$root/usr/share/doc/edge-gateway/$page"; done
install -D -m 755 deploy/certbot/edge-gateway-deploy-hook.sh "$root/usr/share/edge-gateway/certbot-deploy-hook.sh"
cat > "$root/usr/share/doc/edge-gateway/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: edge-gateway

Files: *
Copyright: the edge-gateway developers
License: see the source repository
COPYRIGHT
install -D -m 644 deploy/config.example.yaml "$root/usr/share/doc/edge-gateway/examples/config.example.yaml"
install -D -m 755 deploy/certbot/edge-gateway-deploy-hook.sh "$root/usr/share/doc/edge-gateway/examples/edge-gateway-deploy-hook.sh"

mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: edge-gateway
Version: $version
Architecture: $arch
Maintainer: edge-gateway developers <edge-gateway@localhost>
Depends: libc6, libssl3, libstdc++6, libgcc-s1, openssl, adduser
Section: net
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
Description: TLS edge gateway that serves renewed certificates at the next handshake
 Terminates TLS on the system OpenSSL, watches certificate directories (certbot,
 Kubernetes secrets, plain files) and proxies HTTP to upstream groups.
CONTROL
echo /etc/edge-gateway/config.yaml > "$root/DEBIAN/conffiles"

cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  getent group edge-gateway >/dev/null || addgroup --system --quiet edge-gateway
  getent passwd edge-gateway >/dev/null || adduser --system --quiet --ingroup edge-gateway \
    --home /var/lib/edge-gateway --no-create-home --shell /usr/sbin/nologin edge-gateway
  mkdir -p /var/lib/edge-gateway/acme
  chown edge-gateway:edge-gateway /var/lib/edge-gateway /var/lib/edge-gateway/acme
  # Only on the first install, and only if the administrator kept the file.
  if [ -z "$2" ] && [ -e /etc/edge-gateway/config.yaml ]; then
    chgrp edge-gateway /etc/edge-gateway/config.yaml
    chmod 0640 /etc/edge-gateway/config.yaml
  fi
  if [ ! -e /etc/edge-gateway/placeholder.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=placeholder -days 3650 \
      -keyout /etc/edge-gateway/placeholder.key -out /etc/edge-gateway/placeholder.pem
    chgrp edge-gateway /etc/edge-gateway/placeholder.key
    chmod 0640 /etc/edge-gateway/placeholder.key
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade: the new binary takes over if the service was running (nothing starts otherwise).
    if [ -n "$2" ]; then systemctl try-restart edge-gateway.service || true; fi
  fi
  echo "edge-gateway installed. Edit /etc/edge-gateway/config.yaml, then:"
  echo "  edge-gateway check -c /etc/edge-gateway/config.yaml && systemctl enable --now edge-gateway"
fi
POSTINST

cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop edge-gateway.service >/dev/null 2>&1 || true
fi
PRERM

cat > "$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  # What the postinst made; the edge-gateway user and group stay (Debian practice: files
  # elsewhere may still belong to them).
  rm -f /etc/edge-gateway/placeholder.pem /etc/edge-gateway/placeholder.key
  rmdir /etc/edge-gateway 2>/dev/null || true
  rm -rf /var/lib/edge-gateway /var/log/edge-gateway
  # Whether or not systemd runs here, no enablement link outlives the package.
  rm -f /etc/systemd/system/multi-user.target.wants/edge-gateway.service
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTRM
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
dpkg-deb --root-owner-group --build "$root" "$out/edge-gateway_${version}_${arch}.deb" >/dev/null
echo "$out/edge-gateway_${version}_${arch}.deb"
