#!/usr/bin/env bash
# Generates example certificates at run time (nothing secret is committed):
# a root CA, an intermediate CA, and ECDSA P-256 leaves for localhost,
# a.example.test and *.b.example.test, laid out two ways:
#   OUT/live/<name>/{cert,chain,fullchain,privkey}.pem -> ../../archive/<name>/*1.pem  (certbot,
#   with OUT/renewal/<name>.conf as certbot 2.1 writes it, for the renewal watchdog)
#   OUT/pairs/<name>.crt + <name>.key                                                 (plain pairs)
# OUT/ca.pem is the root to trust: curl --cacert OUT/ca.pem https://localhost:8443/
set -euo pipefail
out=${1:-certs-example/out}
days=${DAYS:-90}
mkdir -p "$out"
cd "$out"
umask 077

ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ec ca.key
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=Edge Gateway Example Root CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
ec intermediate.key
openssl req -new -key intermediate.key -subj "/CN=Edge Gateway Example Intermediate CA" -out intermediate.csr
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' > intermediate.ext
openssl x509 -req -in intermediate.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1825 -sha256 \
  -extfile intermediate.ext -out intermediate.pem 2>/dev/null

issue() { # name, SANs
  local name=$1 sans=$2
  mkdir -p "archive/$name" "live/$name" pairs
  ec "archive/$name/privkey1.pem"
  openssl req -new -key "archive/$name/privkey1.pem" -subj "/CN=${name}" -out "$name.csr"
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$sans" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA intermediate.pem -CAkey intermediate.key -CAcreateserial \
    -days "$days" -sha256 -extfile "$name.ext" -out "archive/$name/cert1.pem" 2>/dev/null
  cp intermediate.pem "archive/$name/chain1.pem"
  cat "archive/$name/cert1.pem" intermediate.pem > "archive/$name/fullchain1.pem"
  for f in cert chain fullchain privkey; do
    ln -sfn "../../archive/$name/${f}1.pem" "live/$name/$f.pem"
  done
  mkdir -p renewal
  printf '# renew_before_expiry = 30 days\nversion = 2.1.0\narchive_dir = %s/archive/%s\ncert = %s/live/%s/cert.pem\nprivkey = %s/live/%s/privkey.pem\nchain = %s/live/%s/chain.pem\nfullchain = %s/live/%s/fullchain.pem\n\n# Options used in the renewal process\n[renewalparams]\nauthenticator = manual\nserver = https://acme.example.test/directory\n' \
    "$PWD" "$name" "$PWD" "$name" "$PWD" "$name" "$PWD" "$name" "$PWD" "$name" > "renewal/$name.conf"
  cp "archive/$name/fullchain1.pem" "pairs/$name.crt"
  cp "archive/$name/privkey1.pem" "pairs/$name.key"
  rm -f "$name.csr" "$name.ext"
}

issue localhost "DNS:localhost,IP:127.0.0.1"
issue a.example.test "DNS:a.example.test"
issue b.example.test "DNS:*.b.example.test"
chmod 700 live archive renewal
rm -f intermediate.csr intermediate.ext ./*.srl
chmod 644 ca.pem intermediate.pem
echo "example certificates written to $(pwd) (trust ca.pem)"
