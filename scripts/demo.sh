#!/usr/bin/env bash
# Runs the gateway in the foreground on its demo default:
#   device 127.0.0.1:2525, submission 127.0.0.1:2587, submissions 127.0.0.1:2465,
#   accepted mail in var/outbox/. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/outbox
bin="$(swift build --show-bin-path)/postern"
echo "Postern demo: device 127.0.0.1:2525, submission 127.0.0.1:2587 (STARTTLS), submissions 127.0.0.1:2465 (TLS)"
echo "Accepted mail lands in var/outbox/. Ctrl-C to stop."
exec "$bin" serve --config policies/postern.yaml
