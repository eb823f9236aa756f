#!/usr/bin/env bash
# Postern benchmarks (`make bench`): one machine, loopback only, bounded counts, everything started
# here is stopped here. See BENCHMARKS.md for what is measured and how.
#
#   bench/run.sh [all|ceiling|baseline|postern|sealed|postfix|submission|large|idle|policy]...   (default: all)
#   (sealed: the postern device run again with spool encryption, delivery.spool.encrypt;
#    baseline: the postern device run with the binaries in BASELINE_BIN, e.g. a build of the commit before a
#    change, so that before and after are measured in one run)
#
# Environment: MESSAGES (20000) SESSIONS (50) SIZE (10240) SUB_SESSIONS (50) SUB_MESSAGES (10000)
#   LARGE_COUNT (50) LARGE_SIZE (20000000: octets per message in the `large` phase)
#   IDLE_CONNECTIONS (10000) POLICY_DEVICES (100000) RELAY_CONNECTIONS (20) TIMEOUT (600 s per load)
#   WARMUP (2000: messages through Postern into the sink before the first measured phase; 0: none)
#   BIN (directory with release binaries; default .build-release/release); PERF=1 profiles Postern (perf)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/.build-release/release}
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-10240}
SUB_SESSIONS=${SUB_SESSIONS:-50}
SUB_MESSAGES=${SUB_MESSAGES:-10000}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
POLICY_DEVICES=${POLICY_DEVICES:-100000}
# Postern's connections to the sink: 20, Postfix's default_destination_concurrency_limit, which the
# Postfix instance keeps, so both may open as many sessions to the sink.
RELAY_CONNECTIONS=${RELAY_CONNECTIONS:-20}
TIMEOUT=${TIMEOUT:-600}
WARMUP=${WARMUP:-2000}
LARGE_COUNT=${LARGE_COUNT:-50}
LARGE_SIZE=${LARGE_SIZE:-20000000}
FROM=scanner@example.edu
TO=bob@example.edu
PHASES=${*:-all}
want() { [[ " $PHASES " == *" all "* || " $PHASES " == *" $1 "* ]]; }

for tool in smtp-source smtp-sink postfix slapd; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
for b in postern postern-load; do
  [ -x "$BIN/$b" ] || { echo "bench: $BIN/$b is missing; run: swift build -c release --scratch-path .build-release" >&2; exit 1; }
done

# One work directory on the root filesystem (ext4 here), for Postern's spool and Postfix's queue alike.
WORK=$(mktemp -d /var/tmp/postern-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p var/bench
REPORT=$ROOT/var/bench/last-run.txt
: > "$REPORT"
pids=()
CGROUPS=()
POSTFIX_DIR=
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  [ -n "$POSTFIX_DIR" ] && postfix -c "$POSTFIX_DIR/etc" stop >/dev/null 2>&1
  scripts/slapd-instance.sh stop "$WORK/slapd" >/dev/null 2>&1
  sleep 0.5
  for cg in "${CGROUPS[@]}"; do
    if [ -d "$cg" ]; then
      for _ in $(seq 1 50); do [ -s "$cg/cgroup.procs" ] || break; sleep 0.1; done  # postfix stop takes a moment
      for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill "$p" 2>/dev/null; done
      for _ in $(seq 1 20); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "$*" | tee -a "$REPORT"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port seconds
  local end=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -lt $end ] || { echo "bench: nothing listens on port $1 after $2 s" >&2; return 1; }
    sleep 0.05
  done
}
now() { date +%s.%N; }
clk=$(getconf CLK_TCK)
proc_cpu() { awk -v t="$clk" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }  # utime+stime, s (all threads)
# cpuacct cgroups count every process started inside them, including ones that have exited.
new_cgroup() { # name -> path or empty
  local cg=/sys/fs/cgroup/cpuacct/postern-bench-$$-$1
  if mkdir "$cg" 2>/dev/null; then CGROUPS+=("$cg"); echo "$cg"; fi
}
cg_cpu() { awk '{ printf "%.3f", $1 / 1e9 }' "$1/cpuacct.usage"; }
pss_sum_kib() { # pids... -> summed Pss (KiB)
  local total=0 p v
  for p in "$@"; do
    v=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null) || v=
    total=$((total + ${v:-0}))
  done
  echo $total
}
# Samples the summed PSS of a cgroup's processes every 0.5 s; writes the peak (KiB) to FILE.
pss_sampler() { # cgroup file
  local peak=0 cur
  while [ -d "$1" ]; do
    cur=$(pss_sum_kib $(cat "$1/cgroup.procs" 2>/dev/null))
    if [ "$cur" -gt "$peak" ]; then peak=$cur; echo $peak > "$2"; fi
    sleep 0.5
  done
}
sink_received() { awk '{ print $2 }' "$WORK/sink.stats" 2>/dev/null || echo 0; }
sink_changed_at() { awk '{ print $6 }' "$WORK/sink.stats"; }
wait_sink() { # count seconds -> returns when the sink has received count messages
  local end=$((SECONDS + $2))
  while [ "$(sink_received)" -lt "$1" ]; do
    [ $SECONDS -lt $end ] || { echo "bench: the sink has $(sink_received) of $1 messages after $2 s" >&2; return 1; }
    sleep 0.02
  done
}
calc() { python3 -c "print($1)"; }
fmt() { python3 -c "print(format($1, '$2'))"; }
result_field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<< "$1"; }

log "# Postern benchmark, $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
log "# $(stat -f -c %T "$WORK") filesystem ($(df --output=source "$WORK" | tail -1)); postfix $(postconf -d -h mail_version); messages $MESSAGES x $SIZE B, $SESSIONS sessions"
log "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

certs/make-dev-certs.sh "$WORK/certs" >/dev/null
CERTS=$WORK/certs

# ---------------------------------------------------------------------------------------------
# 1. Ceiling: smtp-source straight into smtp-sink (plaintext; neither tool speaks TLS).
if want ceiling; then
  port=$(free_port)
  smtp-sink -u nobody 127.0.0.1:$port 1024 & pids+=($!)
  wait_port "$port" 10
  t0=$(now)
  timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f $FROM -t $TO 127.0.0.1:$port
  t1=$(now)
  CEILING_RATE=$(calc "$MESSAGES / ($t1 - $t0)")
  log "ceiling  smtp-source -> smtp-sink: $(fmt "$CEILING_RATE" .0f) msg/s ($MESSAGES in $(fmt "$t1 - $t0" .2f) s)"
  r=$(timeout "$TIMEOUT" "$BIN/postern-load" smtp --port "$port" --sessions "$SESSIONS" --messages "$MESSAGES" --size "$SIZE" --label ceiling-load)
  log "ceiling  postern-load -> smtp-sink: $(result_field "$r" rate) msg/s, DATA-end->250 p50 $(result_field "$r" p50_ms) ms p99 $(result_field "$r" p99_ms) ms"
  kill "${pids[-1]}"; unset 'pids[-1]'
fi

# ---------------------------------------------------------------------------------------------
# The sink for Postern and Postfix alike: `postern sink --discard`, STARTTLS, client certificate required.
SINK_PORT=$(free_port)
"$BIN/postern" sink --listen 127.0.0.1:$SINK_PORT --tls starttls --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
  --ca "$CERTS/ca.pem" --discard --stats-file "$WORK/sink.stats" >"$WORK/sink.log" 2>&1 & pids+=($!)
wait_port "$SINK_PORT" 20

LDAP_PORT=$(free_port); LDAPS_PORT=$(free_port)
if want submission || want large; then
  scripts/slapd-instance.sh start "$WORK/slapd" "$LDAP_PORT" "$LDAPS_PORT" policies/demo-directory.ldif "$CERTS"
fi

DEVICE_PORT=$(free_port); SUB_PORT=$(free_port)
write_postern_config() {
  cat > "$WORK/postern.yaml" <<EOF
hostname: localhost
policies: $ROOT/policies
tls: { certificate: $CERTS/server.pem, key: $CERTS/server.key }
limits:
  max-message-size: 26214400
  max-recipients: 100
  idle-timeout-seconds: 300
  max-connections-per-client: 20000   # the idle check opens 10,000 connections from 127.0.0.1
  max-connections: 20000
listeners:
  - { name: device, kind: device, listen: "127.0.0.1:$DEVICE_PORT" }
  - { name: submission, kind: submission, listen: "127.0.0.1:$SUB_PORT" }
directory:
  uris: [ldaps://127.0.0.1:$LDAPS_PORT]
  ca-file: $CERTS/ca.pem
  bind-dn: cn=postern,ou=services,dc=example,dc=edu
  bind-password-env: POSTERN_LDAP_PASSWORD
  search-base: ou=people,dc=example,dc=edu
  user-filter: (&(objectClass=inetOrgPerson)(uid=%s))
  address-attributes: [mail, mailAlternateAddress]
  group-attribute: memberOf
  group-base: ou=groups,dc=example,dc=edu
  required-groups: [mail-submitters]
delivery:
  spool: $SPOOL_SETTING
  relay:
    upstreams:
      - name: bench-sink
        host: 127.0.0.1
        port: ${UPSTREAM_PORT:-$SINK_PORT}
        tls: starttls
        server-name: localhost
        ca-file: $CERTS/ca.pem
        certificate: $CERTS/client.pem
        key: $CERTS/client.key
        max-connections: $RELAY_CONNECTIONS
    default: bench-sink
audit:
  output: $WORK/postern-audit.log
EOF
}
POSTERN_PID=
SEALED=${SEALED:-}  # SEALED=1: the postern phase with an encrypted spool (to profile it with PERF=1)
start_postern() {
  SPOOL_SETTING=$WORK/postern-spool
  if [ -n "$SEALED" ]; then  # spool encryption: one AES-256 key, as docs/production.md makes it
    (umask 077; printf 'bench %s\n' "$(openssl rand -base64 32)" >"$WORK/spool-keys")
    SPOOL_SETTING="{ directory: $WORK/postern-spool, encrypt: { key-file: $WORK/spool-keys } }"
  fi
  write_postern_config
  rm -rf "$WORK/postern-spool"
  POSTERN_LDAP_PASSWORD=postern-demo-pass "${SERVE_BIN:-$BIN}/postern" serve --config "$WORK/postern.yaml" >>"$WORK/postern.log" 2>&1 &
  POSTERN_PID=$!; pids+=($POSTERN_PID)
  wait_port "$DEVICE_PORT" 30
}
stop_postern() {
  kill "$POSTERN_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$POSTERN_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$POSTERN_PID" 2>/dev/null || true
  POSTERN_PID=
}
hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# Runs smtp-source against PORT; the rate is counted at the sink (first message sent to last
# message received). Sets RUN_RATE, RUN_SECONDS.
measure_smtp_source() { # port
  local base t0 t1
  base=$(sink_received)
  t0=$(now)
  timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f $FROM -t $TO 127.0.0.1:"$1"
  ACCEPT_SECONDS=$(calc "$(now) - $t0")
  wait_sink $((base + MESSAGES)) "$TIMEOUT"
  t1=$(sink_changed_at)
  RUN_SECONDS=$(calc "$t1 - $t0")
  RUN_RATE=$(calc "$MESSAGES / $RUN_SECONDS")
}

# measure_smtp_source on the running Postern's device listener, with its CPU: sets RUN_RATE, RUN_SECONDS and
# RUN_CPU (CPU-s per 1,000 messages) and logs one line, "LABEL smtp-source -> PATH: ...".
measure_device() { # label path
  local cpu0 cpu1
  cpu0=$(proc_cpu "$POSTERN_PID")
  measure_smtp_source "$DEVICE_PORT"
  cpu1=$(proc_cpu "$POSTERN_PID")
  RUN_CPU=$(calc "($cpu1 - $cpu0) * 1000 / $MESSAGES")
  log "$1 smtp-source -> $2: $(fmt "$RUN_RATE" .0f) msg/s at the sink ($MESSAGES in $(fmt "$RUN_SECONDS" .2f) s; smtp-source done after $(fmt "$ACCEPT_SECONDS" .2f) s), $(fmt "$RUN_CPU" .2f) CPU-s/1000 msgs"
}

# ---------------------------------------------------------------------------------------------
# Warm-up, not measured: the shared sink's first load came out slower than its later ones in every run
# (the phase measured first lost to the same build measured second), so WARMUP messages go through
# Postern into the sink before the first measured phase.
if [ "$WARMUP" -gt 0 ] && { want postern || want baseline || want sealed || want postfix; }; then
  start_postern
  base=$(sink_received)
  timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$WARMUP" -l "$SIZE" -f $FROM -t $TO 127.0.0.1:"$DEVICE_PORT"
  wait_sink $((base + WARMUP)) "$TIMEOUT"
  stop_postern
  log "warm-up  $WARMUP messages through Postern into the sink (not measured)"
fi

# ---------------------------------------------------------------------------------------------
# 1b. The device path with another build (BASELINE_BIN): before and after a change, in one run (the baseline
# first, then phase 2 with this build).
if want baseline && [ -n "${BASELINE_BIN:-}" ]; then
  [ -x "$BASELINE_BIN/postern" ] || { echo "bench: $BASELINE_BIN/postern is missing" >&2; exit 1; }
  SERVE_BIN=$BASELINE_BIN
  start_postern
  sleep 1
  measure_device "baseline" "device -> spool -> mTLS -> sink ($BASELINE_BIN)"
  B_RATE=$RUN_RATE B_CPU=$RUN_CPU
  stop_postern
  SERVE_BIN=
fi

# ---------------------------------------------------------------------------------------------
# 2. Postern: device listener -> durable spool -> mTLS relay -> sink.
if want postern; then
  start_postern
  sleep 1
  if [ -n "${PERF:-}" ]; then  # PERF=1: profile Postern during the smtp-source run (figures then include perf's cost)
    perf record -F 999 -g -o "$ROOT/var/bench/postern.perf.data" -p "$POSTERN_PID" >/dev/null 2>&1 & perf_pid=$!
    sleep 0.5
  fi
  measure_device "postern " "device -> spool -> mTLS -> sink"
  P_RATE=$RUN_RATE P_CPU=$RUN_CPU
  if [ -n "${PERF:-}" ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    perf report -i "$ROOT/var/bench/postern.perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
      | grep -v '^$' | swift demangle --simplified > "$ROOT/var/bench/postern.perf.txt" || true
    log "perf profile: var/bench/postern.perf.txt"
  fi
  base=$(sink_received)
  r=$(timeout "$TIMEOUT" "$BIN/postern-load" smtp --port "$DEVICE_PORT" --sessions "$SESSIONS" --messages "$MESSAGES" --size "$SIZE" --label postern-device)
  wait_sink $((base + MESSAGES)) "$TIMEOUT"
  P_P50=$(result_field "$r" p50_ms); P_P99=$(result_field "$r" p99_ms)
  P_RSS=$(hwm_mib "$POSTERN_PID")
  log "postern  postern-load -> device: $(result_field "$r" rate) msg/s accepted, failed $(result_field "$r" failed), DATA-end->250 p50 $P_P50 ms p99 $P_P99 ms max $(result_field "$r" max_ms) ms; peak RSS $P_RSS MiB"
  stop_postern
fi

# ---------------------------------------------------------------------------------------------
# 2b. The same device path with spool encryption (every message and envelope sealed with AES-256-GCM).
if want sealed; then
  SEALED=1
  start_postern
  sleep 1
  measure_device "sealed  " "device -> encrypted spool -> mTLS -> sink"
  S_RATE=$RUN_RATE S_CPU=$RUN_CPU
  stop_postern
  SEALED=
fi

# ---------------------------------------------------------------------------------------------
# 3. TLS+AUTH on the submission listener (STARTTLS, AUTH PLAIN against slapd, many messages per session).
if want submission; then
  start_postern
  sleep 1
  cpu0=$(proc_cpu "$POSTERN_PID")
  base=$(sink_received)
  per=$(( (SUB_MESSAGES + SUB_SESSIONS - 1) / SUB_SESSIONS ))
  r=$(timeout "$TIMEOUT" "$BIN/postern-load" smtp --mode submission --port "$SUB_PORT" --ca "$CERTS/ca.pem" \
        --user alice --password alice-demo-pass --from alice@example.edu --to bob@example.edu \
        --sessions "$SUB_SESSIONS" --messages "$SUB_MESSAGES" --per-connection "$per" --size "$SIZE" --label submission)
  wait_sink $((base + SUB_MESSAGES)) "$TIMEOUT"
  cpu1=$(proc_cpu "$POSTERN_PID")
  log "submission postern-load ($SUB_SESSIONS sessions x $per msgs, STARTTLS+AUTH once per session): $(result_field "$r" rate) msg/s accepted, failed $(result_field "$r" failed), p50 $(result_field "$r" p50_ms) ms p99 $(result_field "$r" p99_ms) ms, $(fmt "($cpu1 - $cpu0) * 1000 / $SUB_MESSAGES" .2f) CPU-s/1000 msgs, peak RSS $(hwm_mib "$POSTERN_PID") MiB"
  base=$(sink_received)
  r=$(timeout "$TIMEOUT" "$BIN/postern-load" smtp --mode submission --port "$SUB_PORT" --ca "$CERTS/ca.pem" \
        --user alice --password alice-demo-pass --from alice@example.edu --to bob@example.edu \
        --sessions "$SUB_SESSIONS" --messages 2000 --per-connection 1 --size "$SIZE" --label submission-reconnect)
  wait_sink $((base + 2000)) "$TIMEOUT"
  log "submission postern-load (connection + STARTTLS + AUTH per message, 2000 msgs): $(result_field "$r" rate) msg/s, failed $(result_field "$r" failed), p50 $(result_field "$r" p50_ms) ms p99 $(result_field "$r" p99_ms) ms"
  stop_postern
fi

# ---------------------------------------------------------------------------------------------
# 4. Postfix, configured for the same job (bench/postfix-instance.sh), started and stopped here.
if want postfix; then
  POSTFIX_PORT=$(free_port)
  bench/postfix-instance.sh setup "$WORK/postfix" "$POSTFIX_PORT" "$SINK_PORT" "$CERTS"
  POSTFIX_DIR=$WORK/postfix
  cg=$(new_cgroup postfix)
  ( [ -n "$cg" ] && echo $BASHPID > "$cg/cgroup.procs"; exec postfix -c "$POSTFIX_DIR/etc" start ) >/dev/null 2>&1
  wait_port "$POSTFIX_PORT" 30
  sleep 1
  if [ -n "$cg" ]; then
    pss_sampler "$cg" "$WORK/postfix.pss" & pids+=($!)
    cpu0=$(cg_cpu "$cg")
  fi
  measure_smtp_source "$POSTFIX_PORT"
  X_RATE=$RUN_RATE
  if [ -n "$cg" ]; then X_CPU=$(calc "($(cg_cpu "$cg") - $cpu0) * 1000 / $MESSAGES"); else X_CPU=nan; fi
  log "postfix  smtp-source -> smtpd -> queue -> smtp (TLS, client cert) -> sink: $(fmt "$X_RATE" .0f) msg/s at the sink ($MESSAGES in $(fmt "$RUN_SECONDS" .2f) s; smtp-source done after $(fmt "$ACCEPT_SECONDS" .2f) s), $(fmt "$X_CPU" .2f) CPU-s/1000 msgs"
  base=$(sink_received)
  r=$(timeout "$TIMEOUT" "$BIN/postern-load" smtp --port "$POSTFIX_PORT" --sessions "$SESSIONS" --messages "$MESSAGES" --size "$SIZE" --label postfix)
  wait_sink $((base + MESSAGES)) "$TIMEOUT"
  X_P50=$(result_field "$r" p50_ms); X_P99=$(result_field "$r" p99_ms)
  X_PSS=$(awk '{ printf "%.1f", $1 / 1024 }' "$WORK/postfix.pss" 2>/dev/null || echo nan)
  log "postfix  postern-load -> smtpd: $(result_field "$r" rate) msg/s accepted, failed $(result_field "$r" failed), DATA-end->250 p50 $X_P50 ms p99 $X_P99 ms max $(result_field "$r" max_ms) ms; peak PSS (all processes) $X_PSS MiB, $(wc -l < "$cg/cgroup.procs" 2>/dev/null || echo '?') processes at the end"
  postfix -c "$POSTFIX_DIR/etc" stop >/dev/null 2>&1 || true
  POSTFIX_DIR=
fi

# ---------------------------------------------------------------------------------------------
# 4b. Large messages (issue #20): LARGE_COUNT messages of LARGE_SIZE octets at once, on the device listener and
# then on submission (STARTTLS + AUTH); a fresh gateway for each, relaying to a sink with an outbox (the
# benchmark sink discards), where bench/large-messages.py checks every message's SHA-256. The figure: the
# gateway's peak RSS (VmHWM, and VmRSS sampled every 20 ms) minus its RSS at rest before the load.
if want large; then
  LARGE_SINK_PORT=$(free_port)
  mkdir -p "$WORK/large-outbox"
  "$BIN/postern" sink --listen 127.0.0.1:$LARGE_SINK_PORT --tls starttls --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
    --ca "$CERTS/ca.pem" --outbox "$WORK/large-outbox" >"$WORK/large-sink.log" 2>&1 & pids+=($!)
  wait_port "$LARGE_SINK_PORT" 20
  for mode in device submission; do
    rm -f "$WORK/large-outbox"/*.eml
    UPSTREAM_PORT=$LARGE_SINK_PORT start_postern
    sleep 2
    if [ $mode = device ]; then port=$DEVICE_PORT; auth=(); else port=$SUB_PORT
      auth=(--user alice --password alice-demo-pass --ca "$CERTS/ca.pem" --sender alice@example.edu); fi
    cpu0=$(proc_cpu "$POSTERN_PID")
    r=$(timeout "$TIMEOUT" python3 bench/large-messages.py --port "$port" --mode $mode --count "$LARGE_COUNT" --size "$LARGE_SIZE" \
          --pid "$POSTERN_PID" --outbox "$WORK/large-outbox" --timeout "$TIMEOUT" --label large-$mode "${auth[@]}")
    cpu1=$(proc_cpu "$POSTERN_PID")
    log "large    $mode: $LARGE_COUNT x $LARGE_SIZE B at once: accepted $(result_field "$r" accepted), failed $(result_field "$r" failed), intact at the sink $(result_field "$r" intact) (mismatched $(result_field "$r" mismatched)), accepted after $(result_field "$r" accept_seconds) s, relayed after $(result_field "$r" relayed_seconds) s; RSS at rest $(result_field "$r" rss_rest_mib) MiB, peak $(result_field "$r" vmhwm_mib) MiB (VmHWM; sampled $(result_field "$r" rss_peak_sampled_mib) MiB): growth $(result_field "$r" growth_mib) MiB (target < 100); $(fmt "$cpu1 - $cpu0" .1f) CPU-s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    stop_postern
  done
fi

# ---------------------------------------------------------------------------------------------
# 5. Idle connections: a fresh Postern, 10,000 connections that read 220 and stay.
if want idle; then
  start_postern
  sleep 1
  r=$(timeout "$TIMEOUT" "$BIN/postern-load" idle --port "$DEVICE_PORT" --connections "$IDLE_CONNECTIONS" --pid "$POSTERN_PID")
  log "idle     $IDLE_CONNECTIONS connections: opened $(result_field "$r" open) (failures $(result_field "$r" failures)) in $(result_field "$r" open_seconds) s; Postern RSS $(result_field "$r" rss_before_mib) MiB before, $(result_field "$r" rss_idle_mib) MiB with them open ($(result_field "$r" kib_per_connection) KiB each); a new client's 220 after p50 $(result_field "$r" greet_p50_ms) ms, max $(result_field "$r" greet_max_ms) ms ($(result_field "$r" probes) probes)"
  stop_postern
fi

# ---------------------------------------------------------------------------------------------
# 6. Policy decision and reload with many devices.
if want policy; then
  r=$(timeout "$TIMEOUT" "$BIN/postern-load" policy --policies policies --devices "$POLICY_DEVICES")
  log "policy   $POLICY_DEVICES devices in devices.d: decision (connect) $(result_field "$r" decide_connect_ns) ns, decision (MAIL+RCPT) $(result_field "$r" decide_rcpt_ns) ns (thread CPU $(result_field "$r" decide_connect_cpu_ns) / $(result_field "$r" decide_rcpt_cpu_ns) ns); cold load $(result_field "$r" cold_load_ms) ms (CPU $(result_field "$r" cold_load_cpu_ms) ms, all threads); reload after one device file changed (watcher) p50 $(result_field "$r" reload_one_p50_ms) ms max $(result_field "$r" reload_one_max_ms) ms ($(result_field "$r" one_stats) stats, $(result_field "$r" one_parsed) files parsed, $(result_field "$r" one_full_scans) full scans of $(result_field "$r" reloads)); unchanged p50 $(result_field "$r" reload_unchanged_p50_ms) ms; policy.yaml edited p50 $(result_field "$r" reload_policy_p50_ms) ms; SIGHUP after one change (every file statted) p50 $(result_field "$r" reload_sighup_one_p50_ms) ms max $(result_field "$r" reload_sighup_one_max_ms) ms; readdir+fstatat of every file alone $(result_field "$r" scan_floor_ms) ms"
fi

# ---------------------------------------------------------------------------------------------
if want postern && want postfix; then
  log ""
  log "summary (device path; Postern/Postfix; targets: >= 3x msg/s, <= 1/3 CPU, p99 no worse)"
  log "  msg/s at sink     Postern $(fmt "$P_RATE" .0f)  Postfix $(fmt "$X_RATE" .0f)  ratio $(fmt "$P_RATE / $X_RATE" .2f)"
  log "  CPU-s/1000 msgs   Postern $(fmt "$P_CPU" .2f)  Postfix $(fmt "$X_CPU" .2f)  ratio $(fmt "$P_CPU / $X_CPU" .2f)"
  log "  p50 / p99 ms      Postern $P_P50 / $P_P99  Postfix $X_P50 / $X_P99"
  log "  peak memory MiB   Postern $P_RSS (RSS)  Postfix $X_PSS (PSS, summed)"
  [ -n "${B_RATE:-}" ] && log "  baseline build    $(fmt "$B_RATE" .0f) msg/s, $(fmt "$B_CPU" .2f) CPU-s/1000 msgs; ratio to Postfix $(fmt "$B_RATE / $X_RATE" .2f) msg/s, $(fmt "$B_CPU / $X_CPU" .2f) CPU"
  [ -n "${S_RATE:-}" ] && log "  encrypted spool   Postern $(fmt "$S_RATE" .0f) msg/s, $(fmt "$S_CPU" .2f) CPU-s/1000 msgs; ratio to Postfix $(fmt "$S_RATE / $X_RATE" .2f) msg/s, $(fmt "$S_CPU / $X_CPU" .2f) CPU (target >= 3x msg/s)"
  [ -n "${CEILING_RATE:-}" ] && log "  Postern/ceiling   $(fmt "$P_RATE / $CEILING_RATE" .2f) (ceiling $(fmt "$CEILING_RATE" .0f) msg/s, smtp-source -> smtp-sink, plaintext)"
fi
log "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg); report in $REPORT"
