#!/usr/bin/env bash
# Refreshes the map page's copy of Leaflet from the npm registry: the
# package's dist files are compiled into the binary (crates/api/src/page.rs),
# so the page needs no CDN. Pin a version, check the registry's integrity
# hash, copy leaflet.js, leaflet.css and the licence.
#
#   scripts/vendor_leaflet.sh [VERSION]     # default: the version vendored now
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-1.9.4}"
dest=crates/api/assets/vendor/leaflet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "leaflet@$version" >/dev/null 2>&1)
want=$(npm view "leaflet@$version" dist.integrity)
got="sha512-$(openssl dgst -sha512 -binary "$tmp/leaflet-$version.tgz" | base64 -w0)"
[ "$want" = "$got" ] || { echo "integrity mismatch: registry $want, tarball $got" >&2; exit 1; }
tar -xzf "$tmp/leaflet-$version.tgz" -C "$tmp"
cp "$tmp/package/dist/leaflet.js" "$tmp/package/dist/leaflet.css" "$dest/"
cp "$tmp/package/LICENSE" "$dest/LICENSE"
echo "leaflet $version ($want) copied into $dest"
