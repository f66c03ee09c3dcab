#!/usr/bin/env bash
# Builds the browser package: omex-web for wasm32-unknown-unknown (release), then wasm-bindgen --target web
# into target/web/pkg, which examples/web/serve.py serves at /pkg/.
#
#   scripts/web-build.sh            # prints the package folder as the last stdout line
#   scripts/web-build.sh --tools    # only makes sure of wasm-bindgen-cli; prints the folder of its binaries
#
# wasm-bindgen-cli must be exactly the wasm-bindgen version in Cargo.lock. The script uses ~/.cargo/bin's
# when it is that version, else the one cached in $OMEX_CACHE (default ~/.cache/omex), and installs that
# version there when neither is (once per machine: ~15 minutes on 2 cores).
#
# Environment: OMEX_CACHE (cache root), OMEX_WEB_PKG (output folder, default target/web/pkg).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "web-build.sh: error: $*" >&2; exit 1; }
log() { echo "web-build.sh: $*" >&2; }

version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)"
[ -n "$version" ] || die "no wasm-bindgen in Cargo.lock"
cache="${OMEX_CACHE:-${HOME:?HOME is not set and OMEX_CACHE is not given}/.cache/omex}"
cached_root="$cache/wasm-bindgen-$version"

has_version() { [ -x "$1" ] && [ "$("$1" --version 2>/dev/null | awk '{print $2}')" = "$version" ]; }

wbg=""
for candidate in "$HOME/.cargo/bin/wasm-bindgen" "$cached_root/bin/wasm-bindgen"; do
    if has_version "$candidate"; then wbg="$candidate"; break; fi
done
if [ -z "$wbg" ]; then
    log "installing wasm-bindgen-cli $version into $cached_root (once per machine)"
    # --locked first (the versions its authors tested); a registry mirror may lack one of them, then resolve.
    cargo install --quiet wasm-bindgen-cli --version "=$version" --locked --root "$cached_root" >&2 \
        || cargo install --quiet wasm-bindgen-cli --version "=$version" --root "$cached_root" >&2 \
        || die "could not install wasm-bindgen-cli $version"
    wbg="$cached_root/bin/wasm-bindgen"
    has_version "$wbg" || die "$wbg is not version $version"
fi

if [ "${1:-}" = "--tools" ]; then
    dirname "$wbg"
    exit 0
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown >&2
fi

# No debug info in the browser build: the release profile's line tables would only be stripped again.
CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --target wasm32-unknown-unknown --release -p omex-web >&2

pkg="${OMEX_WEB_PKG:-target/web/pkg}"
mkdir -p "$pkg"
"$wbg" --target web --no-typescript --out-dir "$pkg" target/wasm32-unknown-unknown/release/omex_web.wasm >&2
log "$(du -h "$pkg/omex_web_bg.wasm" | cut -f1) of WebAssembly in $pkg (wasm-bindgen $version)"
echo "$pkg"
