#!/usr/bin/env bash
# Issue 11's soak: the release control plane on a fresh embedded data directory, then
# auth_flood.py against it (500 concurrent bad logins + 2,000 idle connections for 10 minutes;
# /health must stay under 100 ms and RSS under 200 MB). Options are passed to auth_flood.py,
# e.g. `benches/soak/run.sh --duration 60` for a short run. Results go to benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release -p hais-control-plane
DATA=$(mktemp -d)
PORT=${HAIS_SOAK_PORT:-3980}
# The soak's own 2,500 sockets plus the server's: lift the descriptor limit for both.
ulimit -n "$(ulimit -Hn)"
HAIS_ADMIN_PASSWORD=soak-admin-password HAIS_DATA_DIR="$DATA" HAIS_LISTEN="0.0.0.0:$PORT" \
  HAIS_JA4_UPLINK_BIND=127.0.0.1:0 HAIS_LOG_FILTER=warn \
  target/release/hais-control-plane >"$DATA/cp.log" 2>&1 &
CP=$!
trap 'kill $CP 2>/dev/null; wait $CP 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
python3 benches/soak/auth_flood.py --port "$PORT" --pid "$CP" "$@"
