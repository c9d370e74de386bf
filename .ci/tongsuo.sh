#!/usr/bin/env bash
# Builds Tongsuo's CLI (the reference GM TLS stack, the interop peer for TLS 1.3 with SM and
# TLCP) from the source tree that the `tongsuo-src` crate ships in the Rust crate registry, once:
# the result is kept in $CLAIMLINK_CACHE (default ~/.cache/claimlink) and reused while the
# version is the same. Prints the path of the `tongsuo` binary on its last line.
set -euo pipefail
version="850.1.1+8.5.0"
cache="${CLAIMLINK_CACHE:-$HOME/.cache/claimlink}"
prefix="$cache/tongsuo-$version"
if [ -x "$prefix/bin/tongsuo" ]; then
  echo "$prefix/bin/tongsuo"
  exit 0
fi
# The source: fetched through cargo from crates.io like every other dependency of ours.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/fetch/src"
printf '[package]\nname = "tongsuo-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ntongsuo-src = "=%s"\n' \
  "$version" >"$work/fetch/Cargo.toml"
echo 'fn main() {}' >"$work/fetch/src/main.rs"
(cd "$work/fetch" && cargo fetch --quiet)
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
src="$(ls -d "$registry"/*/tongsuo-src-"$version"/tongsuo | head -n 1)"
[ -d "$src" ] || { echo "tongsuo-src $version not found under $registry" >&2; exit 1; }
cp -r "$src" "$work/tongsuo"
cd "$work/tongsuo"
# The CLI only: no shared libraries, no tests. enable-ntls is TLCP.
./config --prefix="$prefix" --libdir=lib no-shared no-tests enable-ntls >/dev/null
make -j"$(nproc)" >/dev/null 2>&1 || make >/dev/null
make install_sw >/dev/null
"$prefix/bin/tongsuo" version >&2
echo "$prefix/bin/tongsuo"
