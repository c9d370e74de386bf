#!/usr/bin/env bash
# OCSP responses per second: our responder (`claimlink ca ocsp-responder`) beside OpenSSL's
# (`openssl ocsp -index ... -port`, two processes with -multi 2), the same requests from the
# same load generator (`claimlink bench ocsp`: CONNS clients, a fresh connection per request),
# in one run, for a P-256 and an SM2 CA; each with a nonce (signed fresh) and without (ours from
# its cache; OpenSSL signs every response).
#
#   bash bench/ocsp.sh            (SECONDS_EACH=5 CONNS=4)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p claimlink
bin="$PWD/target/release/claimlink"
work="$(mktemp -d /tmp/claimlink-ocsp-bench.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
secs=${SECONDS_EACH:-5}
conns=${CONNS:-4}
printf 'bench-passphrase\n' >pass
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rate() { "$bin" bench ocsp --addr "$1" --request "$2" --connections "$conns" --seconds "$secs" | grep -oE '^[0-9]+'; }

echo "| CA | request | claimlink responses/s | openssl ocsp -multi 2 responses/s | ratio |"
echo "|---|---|---:|---:|---:|"
for alg in p256 sm2; do
  "$bin" ca init --algorithm $alg --subject "CN=Bench $alg CA,O=claimlink" --out ca-$alg --passphrase-file pass >/dev/null
  if [ $alg = sm2 ]; then
    openssl genpkey -algorithm SM2 -out leaf-$alg.key
    openssl req -new -key leaf-$alg.key -subj /CN=leaf -sm3 -sigopt distid:1234567812345678 -out leaf-$alg.csr
    digest=-sm3
  else
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf-$alg.key
    openssl req -new -key leaf-$alg.key -subj /CN=leaf -out leaf-$alg.csr
    digest=-sha1
  fi
  "$bin" ca sign-csr --ca ca-$alg --passphrase-file pass --csr leaf-$alg.csr --profile claim-thing --out leaf-$alg.pem >/dev/null
  openssl ocsp $digest -issuer ca-$alg/issuing-ca.pem -cert leaf-$alg.pem -reqout nonce-$alg.der >/dev/null
  openssl ocsp $digest -issuer ca-$alg/issuing-ca.pem -cert leaf-$alg.pem -no_nonce -reqout plain-$alg.der >/dev/null
  ours=$(port)
  "$bin" ca ocsp-responder --ca ca-$alg --passphrase-file pass --listen 127.0.0.1:$ours >ours-$alg.log 2>&1 &
  pids+=($!)
  # OpenSSL signs with the same delegated responder certificate, from an index holding the leaf.
  for _ in $(seq 1 50); do [ -f ca-$alg/ocsp-issuing.pem ] && break; sleep 0.1; done
  openssl pkey -in ca-$alg/ocsp-issuing.key -passin file:pass -out rkey-$alg.pem
  serial=$(openssl x509 -in leaf-$alg.pem -noout -serial | cut -d= -f2)
  printf 'V\t491231000000Z\t\t%s\tunknown\t/CN=leaf\n' "$serial" >index-$alg.txt
  theirs=$(port)
  rmd=sha256; [ $alg = sm2 ] && rmd=sm3
  openssl ocsp -index index-$alg.txt -port $theirs -rsigner ca-$alg/ocsp-issuing.pem -rkey rkey-$alg.pem \
    -CA ca-$alg/issuing-ca.pem -rmd $rmd -nmin 60 -multi 2 >theirs-$alg.log 2>&1 &
  pids+=($!)
  sleep 1
  for kind in plain nonce; do
    a=$(rate 127.0.0.1:$ours $kind-$alg.der)
    b=$(rate 127.0.0.1:$theirs $kind-$alg.der)
    label="with a nonce (signed each time)"; [ $kind = plain ] && label="no nonce (ours: cached)"
    echo "| $alg | $label | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }') |"
  done
done
