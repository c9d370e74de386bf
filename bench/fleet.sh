#!/usr/bin/env bash
# The whole onboarding journey for N devices: `claimlink up` (release build) in a fresh data
# directory, N more device identities from its manufacturer CA imported into staging, then
# `claimlink fleet` runs them all in one process (first power-on -> staging -> claim over MQTT by
# the demo OEM's claim-thing with the label's claim code -> move -> JITP in the first CONNECT ->
# first accepted publish) and prints the total time and the claim-to-online latency p50/p99.
# Platform and simulator share this machine's cores.
#
#   bash bench/fleet.sh [N] [CONCURRENCY] [p256|sm2]        (default: 10000 256 p256)
#
# With sm2 the devices are SM2 (birth certificates from the SM2 manufacturer CA) and every
# connection is TLS 1.3 with TLS_SM4_GCM_SM3, SM2 certificates both ways.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
conc="${2:-256}"
alg="${3:-p256}"
case "$alg" in
  p256) ca=claimlink-data/manufacturer-ca ;;
  sm2) ca=claimlink-data/manufacturer-ca-sm2 ;;
  *) echo "algorithm: p256 or sm2" >&2; exit 2 ;;
esac
cargo build --release -q -p claimlink
bin="$PWD/target/release/claimlink"
work="$(mktemp -d "${BENCH_DIR:-/tmp}/claimlink-fleet.XXXXXX")"
up_pid=""
cleanup() { [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sm=$(port); sa=$(port); am=$(port); ad=$(port); po=$(port); cs=$(port)
cd "$work"
"$bin" up --devices 1 --staging-mqtt "127.0.0.1:$sm" --staging-api "127.0.0.1:$sa" \
  --account-mqtt "127.0.0.1:$am" --admin-api "127.0.0.1:$ad" --portal "127.0.0.1:$po" \
  --ca-system "127.0.0.1:$cs" >up.log 2>up.err &
up_pid=$!
for _ in $(seq 1 120); do grep -q "Stop with Ctrl-C" up.log 2>/dev/null && break; sleep 0.5; done
grep -q "Stop with Ctrl-C" up.log || { cat up.log up.err; exit 1; }
"$bin" ca issue-devices --ca "$ca" --passphrase-file claimlink-data/ca-passphrase \
  --count "$n" --out fleet --staging-endpoint "staging.localhost:$sm" \
  --endpoint-root-ca claimlink-data/endpoint-ca.pem >issue.log 2>&1
"$bin" staging import-manifest fleet/manifest.jsonl --database "sqlite://$work/claimlink-data/claimlink.db"
echo "fleet of $n $alg devices, $conc journeys at once ($(nproc) cores shared with the platform):"
/usr/bin/time -f 'simulator: %e s wall, %M KiB peak RSS' "$bin" fleet --bundles fleet/devices --count "$n" \
  --concurrency "$conc" --endpoint "demo-oem.localhost:$am"
echo "platform peak RSS: $(grep VmHWM /proc/$up_pid/status | awk '{print $2, $3}')"
