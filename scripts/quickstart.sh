#!/bin/sh
# HaIS quickstart: the control plane on its embedded default (SQLite under ./data, in-process bus)
# and an agent on this host, enrolled with a join token, capturing and streaming over QUIC.
#
#   sudo scripts/quickstart.sh            # capture on all interfaces
#   sudo scripts/quickstart.sh -i lo      # or on chosen ones (any `hais-agent run` options)
#
# Needs root or CAP_NET_RAW for capture, and openssl. Ctrl-C stops both. Re-running reuses ./data
# (the agent stays enrolled, the certificate is kept). The API is served over HTTPS with a
# self-signed certificate made at first run (./data/tls/cert.pem: pass it to curl --cacert).
# Environment: HAIS_DATA_DIR (default ./data), HAIS_ADMIN_PASSWORD (default: generated once and
# kept in ./data/admin-password), HAIS_QUICKSTART_PROFILE (release|debug).
set -eu
cd "$(dirname "$0")/.."
DATA=${HAIS_DATA_DIR:-./data}
PROFILE=${HAIS_QUICKSTART_PROFILE:-release}
# Everything under the data directory (database, password, TLS key) is for this user alone.
umask 077
mkdir -p "$DATA"
chmod 700 "$DATA"
if [ -z "${HAIS_ADMIN_PASSWORD:-}" ]; then
  [ -s "$DATA/admin-password" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DATA/admin-password"
  chmod 600 "$DATA/admin-password"
  HAIS_ADMIN_PASSWORD=$(cat "$DATA/admin-password")
fi

# A self-signed certificate for this host (localhost, 127.0.0.1, ::1 and the host name).
TLS="$DATA/tls"
if [ ! -s "$TLS/cert.pem" ] || [ ! -s "$TLS/key.pem" ]; then
  command -v openssl >/dev/null || { echo "openssl is needed to make the TLS certificate" >&2; exit 1; }
  mkdir -p "$TLS"
  HOST=$(hostname 2>/dev/null || echo localhost)
  SAN="DNS:localhost,IP:127.0.0.1,IP:::1"
  case $HOST in localhost|*[!A-Za-z0-9.-]*) ;; *) SAN="$SAN,DNS:$HOST" ;; esac
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=HaIS quickstart ($HOST)" -addext "subjectAltName=$SAN" \
    -keyout "$TLS/key.pem" -out "$TLS/cert.pem" 2>/dev/null
  chmod 600 "$TLS/key.pem"
fi
CACERT="$TLS/cert.pem"
export HAIS_DATA_DIR="$DATA" HAIS_ADMIN_PASSWORD HAIS_TLS_CERT_FILE="$TLS/cert.pem" HAIS_TLS_KEY_FILE="$TLS/key.pem"

if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p hais-control-plane -p hais-agent
else
  cargo build --locked -p hais-control-plane -p hais-agent
fi
BIN=target/$PROFILE

"$BIN/hais-control-plane" &
CP=$!
AG=
trap 'kill $AG $CP 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
i=0
until curl -sf --cacert "$CACERT" https://127.0.0.1:3000/ready >/dev/null; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "control plane did not become ready" >&2; exit 1; }
  sleep 0.2
done

STATE="$DATA/agent"
if [ ! -s "$STATE/svid.pem" ]; then
  TOKEN=$("$BIN/hais-control-plane" token create --ttl 10m --description quickstart | awk 'END { print $NF }')
  "$BIN/hais-agent" enroll --server 127.0.0.1:3001 --token "$TOKEN" --state-dir "$STATE"
fi
[ $# -gt 0 ] || set -- -i any
"$BIN/hais-agent" run --state-dir "$STATE" --server 127.0.0.1:3001 "$@" &
AG=$!

cat <<MSG

HaIS is running: control plane on https://127.0.0.1:3000 (self-signed certificate
$CACERT; QUIC uplink on UDP 3001), agent capturing ($*). Fingerprints appear as flows finish
(idle 30 s, or at FIN/RST). Try:

  TOKEN=\$(curl -s --cacert $CACERT -XPOST https://127.0.0.1:3000/api/auth/login -H 'content-type: application/json' \\
      -d '{"username":"admin","password":"$HAIS_ADMIN_PASSWORD"}' | sed 's/.*"access_token":"\\([^"]*\\)".*/\\1/')
  curl -s --cacert $CACERT -H "authorization: Bearer \$TOKEN" 'https://127.0.0.1:3000/api/ja4/fingerprints?limit=20'
  curl -s --cacert $CACERT -H "authorization: Bearer \$TOKEN" https://127.0.0.1:3000/api/spire/agents
  $BIN/hais-agent status --state-dir $STATE

Ctrl-C stops both.
MSG
wait $AG
