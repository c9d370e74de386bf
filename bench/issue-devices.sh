#!/usr/bin/env bash
# Bulk issuance benchmark: `claimlink ca issue-devices` for 10,000 and 100,000 devices, SM2 and
# P-256, with wall time, devices/s and peak memory (GNU time). Compare devices/s with the
# "device ceiling" rows of `cargo bench -p claimlink --bench crypto` (key generation + one
# signature per device on every core), run on the same machine.
#
# Batches are kept until the end: ext4 allocates inodes slowly for minutes after a mass delete
# (it skips recently freed inodes), which would slow whichever run came next.
# BENCH_DIR picks the file system (default: a new directory under /tmp).
#
#   bash bench/issue-devices.sh [COUNTS...]      (default: 10000 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p claimlink
bin="$PWD/target/release/claimlink"
work="$(mktemp -d "${BENCH_DIR:-/tmp}/claimlink-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
counts=("${@:-10000 100000}")
read -r -a counts <<<"${counts[*]}"
printf 'bench-passphrase\n' >"$work/pass"
echo "| algorithm | devices | wall s | devices/s | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|"
for alg in sm2 p256; do
  "$bin" ca init --algorithm "$alg" --subject "CN=Bench $alg,O=claimlink" --out "$work/$alg-ca" \
    --passphrase-file "$work/pass" >/dev/null
  for n in "${counts[@]}"; do
    out="$work/$alg-$n"
    /usr/bin/time -f '%e %M' -o "$work/time" "$bin" ca issue-devices --ca "$work/$alg-ca" \
      --passphrase-file "$work/pass" --count "$n" --out "$out" >"$work/log" 2>&1
    read -r wall rss <"$work/time"
    rate=$(grep -o '([0-9]* devices/s)' "$work/log" | tr -dc 0-9)
    echo "| $alg | $n | $wall | $rate | $((rss / 1024)) |"
  done
done
