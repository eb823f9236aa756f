#!/usr/bin/env bash
# A throwaway OpenLDAP server on loopback for Postern's tests and demos.
#
#   scripts/slapd-instance.sh start DIR LDAP_PORT LDAPS_PORT LDIF CERTDIR
#   scripts/slapd-instance.sh stop DIR
#
# start: writes DIR/slapd.conf (suffix dc=example,dc=edu, rootdn cn=admin,dc=example,dc=edu),
#   loads LDIF (first start only), runs slapd on ldap://127.0.0.1:LDAP_PORT/ and
#   ldaps://127.0.0.1:LDAPS_PORT/ with CERTDIR/{server.pem,server.key,ca.pem}, and returns once a
#   bind answers on both. Starting again with the same DIR restarts slapd on the existing data.
#   slapd's log (loglevel stats: one line per BIND) is DIR/slapd.log. Silent on success; on
#   failure prints the reason and slapd's log to stderr and exits non-zero.
# stop: SIGTERM, then waits for slapd to exit.
set -euo pipefail

SUFFIX="dc=example,dc=edu"
ROOTDN="cn=admin,$SUFFIX"
SERVICEDN="cn=postern,ou=services,$SUFFIX"

die() {
  echo "slapd-instance: $*" >&2
  if [ -n "${DIR:-}" ] && [ -s "$DIR/slapd.log" ]; then
    echo "---- $DIR/slapd.log (last 60 lines) ----" >&2
    tail -n 60 "$DIR/slapd.log" >&2
  fi
  exit 1
}

pid_alive() { [ -s "$DIR/slapd.pid" ] && kill -0 "$(cat "$DIR/slapd.pid")" 2>/dev/null; }

stop() {
  [ -s "$DIR/slapd.pid" ] || return 0
  local pid
  pid=$(cat "$DIR/slapd.pid")
  kill -TERM "$pid" 2>/dev/null || { rm -f "$DIR/slapd.pid"; return 0; }
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$DIR/slapd.pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$DIR/slapd.pid"
}

write_schema() {
  # mailAlternateAddress is not in Debian's stock schemas (misc.schema has only
  # mailLocalAddress/mailRoutingAddress). The attribute uses the OID Netscape/Sun messaging
  # servers gave it; the auxiliary class sits under OpenLDAP's experimental arc.
  cat > "$DIR/postern.schema" <<'EOF'
attributetype ( 2.16.840.1.113730.3.1.13 NAME 'mailAlternateAddress'
  DESC 'another RFC 5321 address of the entry'
  EQUALITY caseIgnoreIA5Match
  SUBSTR caseIgnoreIA5SubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )
objectclass ( 1.3.6.1.4.1.4203.666.11.4242.1 NAME 'posternMailUser'
  DESC 'an entry with alternate mail addresses'
  SUP top AUXILIARY
  MAY ( mailAlternateAddress ) )
EOF
}

write_conf() {
  cat > "$DIR/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include $DIR/postern.schema

pidfile $DIR/slapd.pid
argsfile $DIR/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof

TLSCACertificateFile $CERTDIR/ca.pem
TLSCertificateFile $CERTDIR/server.pem
TLSCertificateKeyFile $CERTDIR/server.key

database mdb
maxsize 33554432
suffix "$SUFFIX"
rootdn "$ROOTDN"
rootpw $ROOTPW
directory $DIR/db

overlay memberof

# Passwords: anyone may bind with them, nobody may read them.
access to attrs=userPassword
  by anonymous auth
  by * none
# Postern's service account reads everything else; users read their own entry.
access to *
  by dn.exact="$SERVICEDN" read
  by self read
  by * none
EOF
}

whoami_ok() { # uri
  LDAPTLS_CACERT="$CERTDIR/ca.pem" LDAPTLS_REQCERT=demand \
    ldapwhoami -x -o nettimeout=2 -H "$1" -D "$ROOTDN" -w "$ROOTPW" >/dev/null 2>&1
}

start() {
  [ -d "$CERTDIR" ] || die "certificate directory $CERTDIR does not exist"
  for f in ca.pem server.pem server.key; do
    [ -s "$CERTDIR/$f" ] || die "missing $CERTDIR/$f (run certs/make-dev-certs.sh $CERTDIR)"
  done
  [ -s "$LDIF" ] || die "LDIF file $LDIF is missing or empty"
  mkdir -p "$DIR/db"
  DIR=$(cd "$DIR" && pwd)
  CERTDIR=$(cd "$CERTDIR" && pwd)
  if pid_alive; then die "slapd already running in $DIR (pid $(cat "$DIR/slapd.pid"))"; fi
  if [ ! -s "$DIR/rootpw" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DIR/rootpw")
  fi
  ROOTPW=$(cat "$DIR/rootpw")
  write_schema
  write_conf
  slaptest -u -f "$DIR/slapd.conf" >"$DIR/slaptest.log" 2>&1 || { cat "$DIR/slaptest.log" >&2; die "slaptest rejected $DIR/slapd.conf"; }

  local fresh=0
  if [ ! -e "$DIR/loaded" ]; then
    fresh=1
    rm -f "$DIR"/db/*.mdb
    # Groups go in after start (slapadd bypasses the memberof overlay); everything else now.
    awk -v RS= -v ORS='\n\n' '!/objectClass: groupOfNames/' "$LDIF" > "$DIR/entries.ldif"
    awk -v RS= -v ORS='\n\n' '/objectClass: groupOfNames/' "$LDIF" > "$DIR/groups.ldif"
    slapadd -q -f "$DIR/slapd.conf" -l "$DIR/entries.ldif" >"$DIR/slapadd.log" 2>&1 \
      || { cat "$DIR/slapadd.log" >&2; die "slapadd failed"; }
  fi

  : >> "$DIR/slapd.log"
  # -d keeps slapd in the foreground and sends its log (stats: connections, BINDs) to the file.
  nohup slapd -d stats -f "$DIR/slapd.conf" \
    -h "ldap://127.0.0.1:$LDAP_PORT/ ldaps://127.0.0.1:$LDAPS_PORT/" \
    </dev/null >>"$DIR/slapd.log" 2>&1 &
  local launched=$!
  echo "$launched" > "$DIR/slapd.pid"

  local ok=0
  for _ in $(seq 1 200); do
    kill -0 "$launched" 2>/dev/null || die "slapd exited during start-up"
    if whoami_ok "ldap://127.0.0.1:$LDAP_PORT/"; then ok=1; break; fi
    sleep 0.05
  done
  [ $ok = 1 ] || { stop; die "slapd did not answer a bind on port $LDAP_PORT within 10 s"; }
  whoami_ok "ldaps://127.0.0.1:$LDAPS_PORT/" || { stop; die "slapd does not answer over ldaps on port $LDAPS_PORT"; }

  if [ $fresh = 1 ]; then
    if [ -s "$DIR/groups.ldif" ]; then
      ldapadd -x -H "ldap://127.0.0.1:$LDAP_PORT/" -D "$ROOTDN" -w "$ROOTPW" -f "$DIR/groups.ldif" \
        >"$DIR/ldapadd.log" 2>&1 || { cat "$DIR/ldapadd.log" >&2; stop; die "ldapadd of groups failed"; }
    fi
    touch "$DIR/loaded"
  fi
}

cmd=${1:-}
case "$cmd" in
  start)
    [ $# -eq 6 ] || { echo "usage: $0 start DIR LDAP_PORT LDAPS_PORT LDIF CERTDIR" >&2; exit 2; }
    DIR=$2 LDAP_PORT=$3 LDAPS_PORT=$4 LDIF=$5 CERTDIR=$6
    start
    ;;
  stop)
    [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
    DIR=$2
    [ -d "$DIR" ] || exit 0
    stop
    ;;
  *)
    echo "usage: $0 start DIR LDAP_PORT LDAPS_PORT LDIF CERTDIR | stop DIR" >&2
    exit 2
    ;;
esac
