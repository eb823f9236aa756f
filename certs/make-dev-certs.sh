#!/usr/bin/env bash
# Makes a development CA, a server certificate for localhost/127.0.0.1/::1 and a client
# certificate for the gateway's mutual-TLS relay. For demos and tests only.
# Usage: certs/make-dev-certs.sh [OUTDIR]   (default: the directory of this script)
# Private keys are generated here and never committed (.gitignore).
set -euo pipefail
out="${1:-$(cd "$(dirname "$0")" && pwd)}"
mkdir -p "$out"
cd "$out"
if [ -s ca.pem ] && [ -s server.pem ] && [ -s client.pem ] && [ -s server.key ] && [ -s client.key ]; then
  exit 0
fi
umask 077
days=825
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/O=Postern Dev/CN=Postern Development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

issue() { # name subject extensions
  local name=$1 subject=$2 ext=$3
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" 2>/dev/null
  openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr"
  printf '%s\n' "$ext" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days $days -sha256 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
issue server "/O=Postern Dev/CN=localhost" \
"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
issue client "/O=Postern Dev/CN=postern-gateway.example.edu" \
"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=DNS:postern-gateway.example.edu"
rm -f ca.srl
# The key files are readable by their owner only; the certificates by all.
chmod 600 ./*.key
chmod 644 ./*.pem
echo "certificates in $out: ca.pem server.pem server.key client.pem client.key"
