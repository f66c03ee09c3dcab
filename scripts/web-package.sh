#!/usr/bin/env bash
# Builds the npm package omex-web: the wasm (scripts/web-build.sh), its wasm-bindgen glue and the package's
# JavaScript and TypeScript types (examples/web/package/) into one folder, then `npm pack` beside it.
#
#   scripts/web-package.sh     # prints the package folder, then the tarball, as the last two stdout lines
#
# The folder (default target/web/package) is what examples/web/serve.py serves at /pkg/; the tarball
# (target/web/omex-web-VERSION.tgz) installs with `npm install PATH/omex-web-VERSION.tgz`.
#
# Environment: OMEX_WEB_PKG (the wasm-bindgen output, default target/web/pkg), OMEX_WEB_PACKAGE (the folder).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "web-package.sh: error: $*" >&2; exit 1; }
log() { echo "web-package.sh: $*" >&2; }

command -v npm >/dev/null || die "npm is missing (apt-get install npm, or Node.js from nodejs.org)"
pkg="$(scripts/web-build.sh | tail -n 1)"
out="${OMEX_WEB_PACKAGE:-target/web/package}"
[ ! -e "$out" ] || [ -f "$out/package.json" ] || die "$out exists and is not a package folder: not overwriting it"
rm -rf "$out"
mkdir -p "$out"
cp examples/web/package/*.js examples/web/package/*.d.ts examples/web/package/package.json examples/web/package/README.md "$out/"
cp "$pkg/omex_web.js" "$pkg/omex_web_bg.wasm" "$out/"
tarball="$(cd "$out" && npm pack --silent --pack-destination .. 2>/dev/null | tail -n 1)"
[ -f "$(dirname "$out")/$tarball" ] || die "npm pack wrote no tarball"
log "$(du -h "$(dirname "$out")/$tarball" | cut -f1) tarball"
echo "$out"
echo "$(dirname "$out")/$tarball"
