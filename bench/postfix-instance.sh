#!/usr/bin/env bash
# A throwaway Postfix that does what Postern's device listener does in the benchmark: accepts mail
# from 127.0.0.0/8 on one loopback port, queues it (its own queue and data directories) and relays
# everything over STARTTLS with a client certificate, verifying the upstream's certificate, to one
# upstream, reusing connections (including TLS ones).
#
#   bench/postfix-instance.sh setup DIR LISTEN_PORT RELAY_PORT CERTDIR   # writes DIR/etc, DIR/queue, DIR/data
#   postfix -c DIR/etc start | stop                                     # (the caller runs these)
#
# DIR must be on the filesystem being measured; it is made mode 755 (the daemons run as `postfix`).
set -euo pipefail

[ "${1:-}" = setup ] && [ $# -eq 5 ] || { echo "usage: $0 setup DIR LISTEN_PORT RELAY_PORT CERTDIR" >&2; exit 2; }
DIR=$2 PORT=$3 RELAY=$4 CERTDIR=$5
mkdir -p "$DIR/etc" "$DIR/queue" "$DIR/data"
DIR=$(cd "$DIR" && pwd)
CERTDIR=$(cd "$CERTDIR" && pwd)
chmod 755 "$DIR" "$DIR/etc"
chown postfix "$DIR/data"
# The client key must be readable by the smtp processes (user postfix).
install -m 0644 "$CERTDIR/client.pem" "$DIR/etc/client.pem"
install -m 0640 -g postfix "$CERTDIR/client.key" "$DIR/etc/client.key"
install -m 0644 "$CERTDIR/ca.pem" "$DIR/etc/ca.pem"

cat > "$DIR/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $DIR/queue
data_directory = $DIR/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localhost
mydomain = localhost
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_client_connection_count_limit = 1000
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = $DIR/maillog
maillog_file_prefixes = $DIR
# Everything goes to the benchmark sink, over TLS with a client certificate; the sink's certificate
# is checked against the dev CA and the name localhost (what Postern's relay checks too).
relayhost = [127.0.0.1]:$RELAY
smtp_tls_security_level = verify
smtp_tls_verify_cert_match = localhost
smtp_tls_CAfile = $DIR/etc/ca.pem
smtp_tls_cert_file = $DIR/etc/client.pem
smtp_tls_key_file = $DIR/etc/client.key
smtp_tls_session_cache_database = btree:\$data_directory/smtp_scache
smtp_tls_connection_reuse = yes
smtp_connection_cache_on_demand = yes
smtp_connection_cache_destinations = [127.0.0.1]:$RELAY
EOF

# Debian's services, chroot off (the instance has no chroot tree), the SMTP server on our port,
# postlog for maillog_file and tlsproxy for TLS connection reuse.
cat > "$DIR/etc/master.cf" <<EOF
127.0.0.1:$PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsproxy  unix  -       -       n       -       0       tlsproxy
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
postfix -c "$DIR/etc" check
