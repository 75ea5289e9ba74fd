#!/usr/bin/env bash
# Builds the two .deb packages, checks what they hold, installs them on this machine, runs
# the installed programs with the packaged configuration, and purges them again.
# Needs root and cargo-deb (`cargo install --locked cargo-deb`, about 2 minutes). Takes about
# 3-4 minutes (two release builds). Not part of .ci/run for that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "cargo-deb missing: cargo install --locked cargo-deb" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (dpkg -i)" >&2; exit 2; }

fail() { echo "FAIL: $*" >&2; exit 1; }
for pkg in hais-agent hais-control-plane; do
  deb=$(cargo deb -p "$pkg" 2>/dev/null | tail -1)
  [ -f "$deb" ] || fail "$pkg: no package built"
  files=$(dpkg-deb -c "$deb")
  for want in "./usr/bin/$pkg" "./usr/lib/systemd/system/$pkg.service" \
      "./usr/share/doc/$pkg/NOTICE" "./usr/share/doc/$pkg/licenses/Apache-2.0.txt" \
      "./usr/share/doc/$pkg/licenses/FoxIO-1.1.txt" "./usr/share/doc/$pkg/copyright"; do
    grep -q " $want\$" <<<"$files" || fail "$pkg: $want missing"
  done
  conf=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
  grep -q "^/etc/hais/" <<<"$conf" || fail "$pkg: config not a conffile"
  echo "$pkg: $(dpkg-deb -f "$deb" Depends); $(du -h "$deb" | cut -f1)"
  dpkg -i "$deb" >/dev/null
  trap 'dpkg -P hais-agent hais-control-plane >/dev/null 2>&1 || true' EXIT
  "/usr/bin/$pkg" --version
done
# The installed control plane, with the packaged configuration, on loopback ports.
data=$(mktemp -d)
HAIS_LISTEN=127.0.0.1:39300 HAIS_JA4_UPLINK_BIND=127.0.0.1:39301 \
  /usr/bin/hais-control-plane --config /etc/hais/control-plane.toml --data-dir "$data" \
  >"$data/log" 2>&1 &
cp=$!
ok=""
for _ in $(seq 1 50); do
  if curl -sf http://127.0.0.1:39300/ready | grep -q '"ready":true'; then ok=1; break; fi
  sleep 0.2
done
kill "$cp"; wait "$cp" || true
[ -n "$ok" ] || { cat "$data/log" >&2; fail "installed control plane not ready"; }
rm -rf "$data"
echo "ok: both packages build, install, run with their packaged configuration and purge"
