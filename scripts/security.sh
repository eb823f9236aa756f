#!/usr/bin/env bash
# TLS compliance and open-relay scan of a running gateway (`make security`).
#
# Starts `postern serve` with the demo policy on free loopback ports, then runs
#   - sslyze --mozilla_config=intermediate against submission (STARTTLS) and submissions (implicit TLS),
#   - nmap's smtp-open-relay script against the device listener from 127.0.0.1 (registered) and
#     127.0.0.2 (unregistered),
# prints their results and exits non-zero if either endpoint is not Mozilla-intermediate compliant or
# nmap reports an open relay. Installs sslyze (PyPI) and nmap (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
SWIFT="${SWIFT:-swift}"
PYTHON="${PYTHON:-python3}"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v nmap >/dev/null 2>&1; then
  echo "installing nmap"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q nmap >/dev/null || {
    $sudo apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q nmap >/dev/null; }
fi
if ! "$PYTHON" -m sslyze --help >/dev/null 2>&1; then
  echo "installing sslyze"
  "$PYTHON" -m pip install -q sslyze
fi
certs/make-dev-certs.sh >/dev/null

"$SWIFT" build --product postern 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\]' || true
bin="$("$SWIFT" build --show-bin-path)/postern"

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
device=$(free_port); submission=$(free_port); submissions=$(free_port)
work="$(mktemp -d /tmp/postern-security.XXXXXX)"
# Mozilla's intermediate profile allows certificates of at most 366 days; the dev server certificate
# lives 825. So that the scan judges the gateway's TLS settings, not the dev certificate, issue a 365-day
# one from the dev CA for this run.
mkdir -p "$work/tls"
openssl ecparam -name prime256v1 -genkey -noout -out "$work/tls/server.key" 2>/dev/null
openssl req -new -key "$work/tls/server.key" -subj "/O=Postern Dev/CN=localhost" -out "$work/tls/server.csr"
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" >"$work/tls/server.ext"
openssl x509 -req -in "$work/tls/server.csr" -CA certs/ca.pem -CAkey certs/ca.key -CAcreateserial \
  -CAserial "$work/tls/ca.srl" -days 365 -sha256 -extfile "$work/tls/server.ext" -out "$work/tls/server.pem" 2>/dev/null
# nmap takes the server name from the greeting for its "from@server" test: with example.edu it sends
# MAIL FROM:<scanner@example.edu>, demo-scanner's registered sender, so that test reaches RCPT.
cat >"$work/postern.yaml" <<YAML
hostname: example.edu
policies: $root/policies
tls:
  certificate: $work/tls/server.pem
  key: $work/tls/server.key
listeners:
  - { name: device, kind: device, listen: "127.0.0.1:$device" }
  - { name: submission, kind: submission, listen: "127.0.0.1:$submission" }
  - { name: submissions, kind: submissions, listen: "127.0.0.1:$submissions" }
delivery:
  outbox: $work/outbox
audit:
  output: $work/audit.jsonl
YAML
"$bin" serve --config "$work/postern.yaml" --log-level warning >"$work/gateway.log" 2>&1 &
gateway=$!
cleanup() { kill "$gateway" 2>/dev/null || true; wait "$gateway" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do
  "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1',$submissions),timeout=1)" 2>/dev/null && break
  sleep 0.1
done

failures=()
sslyze_run() {  # name, extra args, target
  local name=$1; shift
  echo "== sslyze --mozilla_config=intermediate: $name"
  if "$PYTHON" -m sslyze --mozilla_config=intermediate --certinfo_ca_file="$root/certs/ca.pem" "$@" >"$work/sslyze-$name.txt" 2>&1; then
    grep -E '^ \* (SSL|TLS) [0-9.]+ Cipher Suites|accepted the following|rejected all|^        TLS_' "$work/sslyze-$name.txt" || true
    sed -n '/COMPLIANCE AGAINST/,$p' "$work/sslyze-$name.txt"
  else
    cat "$work/sslyze-$name.txt"
    failures+=("sslyze $name: not compliant with Mozilla intermediate")
  fi
}
sslyze_run submission --starttls=smtp "127.0.0.1:$submission"
sslyze_run submissions "127.0.0.1:$submissions"

relay_run() {  # source address
  local source=$1
  echo "== nmap smtp-open-relay: device endpoint from $source"
    # "+" runs the script although nmap does not recognise SMTP on an unusual port.
  nmap -n -Pn -sT -S "$source" -e lo -p "$device" --script +smtp-open-relay \
      --script-args "smtp-open-relay.domain=external.example,smtp-open-relay.from=scanner,smtp-open-relay.ip=127.0.0.1" \
      127.0.0.1 >"$work/nmap-$source.txt" 2>&1 || true
  sed -n '/^PORT/,/^Nmap done/p' "$work/nmap-$source.txt"
  if grep -q "Server is an open relay" "$work/nmap-$source.txt"; then
    failures+=("nmap: open relay reported from $source")
  elif ! grep -q "smtp-open-relay" "$work/nmap-$source.txt"; then
    cat "$work/nmap-$source.txt"
    failures+=("nmap: smtp-open-relay did not run from $source")
  fi
}
relay_run 127.0.0.1
relay_run 127.0.0.2
echo "== what the gateway decided (audit log)"
grep -o '"result":"[^"]*".*"rule":"[^"]*"\|"rule":"[^"]*".*"result":"[^"]*"' "$work/audit.jsonl" | sort | uniq -c | sort -rn | head -20 || true

if [ ${#failures[@]} -ne 0 ]; then
  printf 'SECURITY CHECK FAILED: %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "security: TLS endpoints Mozilla-intermediate compliant; no open relay from 127.0.0.1 or 127.0.0.2"
