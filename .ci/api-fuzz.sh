#!/usr/bin/env bash
# Runs schemathesis (every check) against the admin API, the staging API and the CA system of a fresh
# `claimlink up`, and fails on any finding. Usage: bash .ci/api-fuzz.sh PATH/TO/claimlink
set -euo pipefail
bin="$(realpath "$1")"
cfg="$(cd "$(dirname "$0")" && pwd)/schemathesis.toml"
st="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/schemathesis"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
admin=$(port); sapi=$(port); ca=$(port)
(cd "$work" && exec "$bin" up --data "$work/data" --devices 2 --staging-mqtt "127.0.0.1:$(port)" \
    --staging-api "127.0.0.1:$sapi" --account-mqtt "127.0.0.1:$(port)" --admin-api "127.0.0.1:$admin" \
    --portal "127.0.0.1:$(port)" --ca-system "127.0.0.1:$ca" >"$work/up.log" 2>&1) &
pid=$!
for _ in $(seq 1 120); do grep -q '^Stop with Ctrl-C' "$work/up.log" 2>/dev/null && break; sleep 0.5; done
grep -q '^Stop with Ctrl-C' "$work/up.log" || { cat "$work/up.log"; echo "claimlink up did not start" >&2; exit 1; }
common=(--config-file "$cfg" run --checks all --max-examples 50 --no-color --seed 1)
echo "schemathesis: admin API"
"$st" "${common[@]}" "http://127.0.0.1:$admin/openapi.json" \
    --header "Authorization: Bearer $(cat "$work/data/account-token")"
echo "schemathesis: staging API (administrator token and claim-thing certificate)"
"$st" "${common[@]}" "https://127.0.0.1:$sapi/openapi.json" \
    --header "Authorization: Bearer $(cat "$work/data/staging-admin-token")" \
    --tls-verify "$work/data/endpoint-ca.pem" \
    --request-cert "$work/data/oem/claim-thing.pem" --request-cert-key "$work/data/oem/claim-thing.key"
echo "schemathesis: CA system (the super administrator's token)"
"$st" "${common[@]}" "http://127.0.0.1:$ca/openapi.json" \
    --header "Authorization: Bearer $(cat "$work/data/manufacturer-ca-sm2/super-admin.token")"
