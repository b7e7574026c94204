#!/bin/sh
# certbot deploy hook: gives the gateway's group read access to the lineage certbot just
# deployed (certbot keeps live/ and archive/ 0700 root), and to its renewal settings
# (renewal/<name>.conf, also 0700 root: the gateway reads renew_before_expiry from it to
# know when certbot should renew; it holds no key). The Debian package installs it as
# /usr/share/edge-gateway/certbot-deploy-hook.sh: name it with certbot's --deploy-hook (kept
# for the lineage's renewals), or link it into /etc/letsencrypt/renewal-hooks/deploy/.
# No reload is needed: the gateway watches the directories and serves the new files itself.
# EDGE_GATEWAY_GROUP names another group than edge-gateway.
set -eu
group=${EDGE_GATEWAY_GROUP:-edge-gateway}
: "${RENEWED_LINEAGE:?run by certbot, which sets RENEWED_LINEAGE (live/<name>)}"
name=$(basename "$RENEWED_LINEAGE")
live=$(dirname "$RENEWED_LINEAGE")
archive=$(dirname "$live")/archive
renewal=$(dirname "$live")/renewal
chgrp "$group" "$live" "$archive" "$renewal"
chmod 0750 "$live" "$archive" "$renewal"
if [ -f "$renewal/$name.conf" ]; then
  chgrp "$group" "$renewal/$name.conf"
  chmod 0640 "$renewal/$name.conf"
fi
chgrp -R "$group" "$live/$name" "$archive/$name"
chmod 0750 "$live/$name" "$archive/$name"
chmod 0640 "$archive/$name"/privkey*.pem
