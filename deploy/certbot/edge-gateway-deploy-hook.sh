#!/bin/sh
# certbot deploy hook: keeps group read access for the gateway's user on new lineages.
# Install: cp edge-gateway-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/ && chmod 755 it.
# No reload is needed: the gateway watches /etc/letsencrypt and serves the new files itself.
set -eu
group=${EDGE_GATEWAY_GROUP:-edge-gateway}
chgrp "$group" /etc/letsencrypt/live /etc/letsencrypt/archive
chmod 0750 /etc/letsencrypt/live /etc/letsencrypt/archive
if [ -n "${RENEWED_LINEAGE:-}" ]; then
  name=$(basename "$RENEWED_LINEAGE")
  chgrp -R "$group" "/etc/letsencrypt/live/$name" "/etc/letsencrypt/archive/$name"
  chmod 0750 "/etc/letsencrypt/live/$name" "/etc/letsencrypt/archive/$name"
  chmod 0640 /etc/letsencrypt/archive/"$name"/privkey*.pem
fi
