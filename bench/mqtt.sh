#!/usr/bin/env bash
# claimlink broker beside Mosquitto 2.0, same TLS setup (P-256 certificates from our CA, client
# certificates required), same load generator (`claimlink bench mqtt`), in one run.
#
#   bash bench/mqtt.sh            (needs the Debian package mosquitto)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p claimlink
bin="$PWD/target/release/claimlink"
work="$(mktemp -d /tmp/claimlink-mqtt-bench.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
[ -n "${BENCH_DEBUG:-}" ] && trap - EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cd "$work"
printf 'bench-passphrase\n' >pass
"$bin" ca init --algorithm p256 --subject "CN=Bench CA,O=claimlink" --out ca --passphrase-file pass >/dev/null
for n in server client; do
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $n.key 2>/dev/null
  openssl req -new -key $n.key -subj /CN=$n -out $n.csr
done
"$bin" ca sign-csr --ca ca --passphrase-file pass --csr server.csr --profile server --dns localhost --ip 127.0.0.1 --out server.leaf >/dev/null
"$bin" ca sign-csr --ca ca --passphrase-file pass --csr client.csr --profile claim-thing --out client.leaf >/dev/null
cat server.leaf ca/issuing-ca.pem >server.pem
cat client.leaf ca/issuing-ca.pem >client.pem

cat >claimlink.toml <<CONF
[[listener]]
bind = "127.0.0.1:0"
[listener.tls]
certificate = "server.pem"
private_key = "server.key"
client_ca = "ca/chain.pem"
[limits]
max_connections = 60000
max_queued = 10000
CONF
"$bin" broker --config claimlink.toml >claimlink.out 2>&1 &
pids+=($!); ours_pid=$!
sleep 1
ours_port=$(sed -n 's|listening on mqtts://127.0.0.1:||p' claimlink.out)

mosq_port=$((20000 + RANDOM % 20000))
cat >mosquitto.conf <<CONF
user root
listener $mosq_port 127.0.0.1
cafile $work/ca/chain.pem
certfile $work/server.pem
keyfile $work/server.key
require_certificate true
allow_anonymous true
max_queued_messages 10000
# Unlimited in-flight QoS 1/2 messages per client, as claimlink allows a 3.1.1 client.
max_inflight_messages 0
max_connections -1
CONF
mosquitto -c mosquitto.conf >mosquitto.out 2>&1 &
pids+=($!); mosq_pid=$!
sleep 1

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
bench() { "$bin" bench mqtt --host 127.0.0.1 --port "$1" --ca ca/root-ca.pem --cert client.pem --key client.key "${@:2}"; }

# Each row runs REPEAT times (default 3), alternating its two sides (the arguments in `left` and
# `right` before the row's own), and reports the medians.
repeat=${REPEAT:-3}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rate() { bench "$@" | grep -oE '[0-9]+ (msg|connections)/s' | cut -d' ' -f1; }
row() {
  local name="$1"; shift
  # ONLY=regex runs the matching rows only.
  if [ -n "${ONLY:-}" ] && ! [[ "$name" =~ $ONLY ]]; then return; fi
  local a="" b=""
  for _ in $(seq 1 "$repeat"); do
    a="$a $(rate "${left[@]}" "$@")"
    b="$b $(rate "${right[@]}" "$@")"
  done
  a=$(echo $a | tr ' ' '\n' | median)
  b=$(echo $b | tr ' ' '\n' | median)
  echo "| $name | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }') |"
}
fan_rows() {
  for payload in 64 1024; do
    for qos in 0 1; do
      row "fan-in QoS $qos, $payload B, 8 pub -> 1 sub (msg/s)" --qos $qos --payload $payload --publishers 8 --subscribers 1
      row "fan-out QoS $qos, $payload B, 1 pub -> 8 sub (msg/s)" --qos $qos --payload $payload --publishers 1 --subscribers 8
    done
  done
}

# PEERS=0 skips the rows beside Mosquitto (to take only the suite rows below).
if [ "${PEERS:-1}" = 1 ]; then
  echo "| measurement | claimlink | mosquitto 2.0.11 | ratio |"
  echo "|---|---:|---:|---:|"
  left=("$ours_port") right=("$mosq_port")
  fan_rows
  row "mutual-TLS handshakes, 16 concurrent (connections/s)" --mode handshakes --connections 16
fi

# The record cipher alone: claimlink broker, same P-256 certificates, the client offering only
# TLS_SM4_GCM_SM3 or only TLS_AES_128_GCM_SHA256 (Mosquitto's OpenSSL has no RFC 8998 suites).
# SUITES=0 skips these rows.
if [ "${SUITES:-1}" = 1 ]; then
  echo
  echo "| claimlink broker | TLS_SM4_GCM_SM3 | TLS_AES_128_GCM_SHA256 | ratio |"
  echo "|---|---:|---:|---:|"
  left=("$ours_port" --cipher-suite TLS_SM4_GCM_SM3) right=("$ours_port" --cipher-suite TLS_AES_128_GCM_SHA256)
  fan_rows
  echo
fi

# Memory per idle TLS connection: open IDLE (default 10,000) connections, wait until they are all
# up (or 300 s have passed), then divide the broker's RSS growth by the connections established.
idle=${IDLE:-10000}
[ "$idle" -gt 0 ] || exit 0
for which in ours mosq; do
  if [ $which = ours ]; then port=$ours_port pid=$ours_pid; else port=$mosq_port pid=$mosq_pid; fi
  before=$(rss_kib $pid)
  bench "$port" --mode idle --connections "$idle" --seconds 10 >idle.$which 2>&1 &
  bench_pid=$!
  for _ in $(seq 1 600); do grep -q "connections open" idle.$which && break; sleep 0.5; done
  up=$(ss -tnH state established "( sport = :$port )" | wc -l)
  after=$(rss_kib $pid)
  kill $bench_pid 2>/dev/null || true
  wait $bench_pid 2>/dev/null || true
  awk -v b="$before" -v a="$after" -v n="$up" -v w="$which" \
    'BEGIN { printf "| memory per idle TLS connection, %s (KiB, %d connections up) | %.1f |\n", w, n, (a - b) / n }'
  sleep 2
done
