#!/usr/bin/env bash
# Installs the Debian packages Postern's demo and tests use, if they are missing.
# Idempotent and quiet when everything is there. Needs root (or sudo) to install.
set -euo pipefail
# chromium, chromium-driver and python3-selenium: the registration page's end-to-end browser test (headless).
# python3-jwt and python3-cryptography: the Microsoft 365 stand-in's token endpoint checks client assertions with them.
# haproxy: `make ha-demo` and the failover tests put it (TCP mode, PROXY v2) in front of two gateways.
packages=(swaks slapd haproxy ldap-utils libldap2-dev postfix python3 python3-aiosmtpd python3-jwt python3-cryptography openssl pkg-config curl chromium chromium-driver python3-selenium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# slapd and postfix come without a system configuration: tests and the demo run their own instances.
echo "slapd slapd/no_configuration boolean true" | $sudo debconf-set-selections
echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
# Debian starts slapd from its package scripts on some setups; the system instance is not ours.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet slapd 2>/dev/null; then
  $sudo systemctl stop slapd || true
fi
