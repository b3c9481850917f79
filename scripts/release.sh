#!/usr/bin/env bash
# The release recipe: static (musl) binaries and Debian packages for x86-64
# (amd64) and 64-bit ARM (arm64, a Raspberry Pi), with their SHA-256 sums,
# in dist/:
#
#   dist/pv3-<version>-x86_64-unknown-linux-musl    static binary
#   dist/pv3-<version>-aarch64-unknown-linux-musl   static binary
#   dist/pv3_<version>-1_amd64.deb
#   dist/pv3_<version>-1_arm64.deb
#   dist/SHA256SUMS                                 sha256sum -c SHA256SUMS
#
# Upload them all to the GitHub release tagged v<version>: that is the layout
# [package.metadata.binstall] in Cargo.toml points `cargo binstall pv3` at.
#
# Needs: rustup targets x86_64-unknown-linux-musl and
# aarch64-unknown-linux-musl, clang (ring's C files; .cargo/config.toml
# points both targets at it and links with rust-lld), cargo-deb.
#
# Usage: scripts/release.sh [TARGET...]   (default: both targets)
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A deb_arch=(
  [x86_64-unknown-linux-musl]=amd64
  [aarch64-unknown-linux-musl]=arm64
)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "release.sh: no version in Cargo.toml" >&2; exit 1; }

# What is missing, all at once, with the command that fixes it.
missing=()
cargo deb --version >/dev/null 2>&1 || missing+=("cargo-deb: cargo install cargo-deb --locked")
command -v clang >/dev/null 2>&1 || missing+=("clang: sudo apt-get install clang")
installed=$(rustup target list --installed 2>/dev/null || true)
for target in "${targets[@]}"; do
  [ -n "${deb_arch[$target]:-}" ] || { echo "release.sh: unknown target $target (known: ${!deb_arch[*]})" >&2; exit 2; }
  grep -qx "$target" <<<"$installed" || missing+=("the $target target: rustup target add $target")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "release.sh: missing:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi

rm -rf dist
mkdir -p dist
for target in "${targets[@]}"; do
  echo "== $target: static binary"
  cargo build --release --locked --target "$target"
  cp "target/$target/release/pv3" "dist/pv3-$version-$target"
  echo "== $target: Debian package (${deb_arch[$target]})"
  # The release profile strips already; cargo-deb's strip would be the
  # host's, which cannot read an aarch64 binary. Its warning "No $auto deps"
  # is right: a static binary depends on nothing.
  cargo deb --no-build --no-strip --target "$target" --output "dist/"
done

(cd dist && sha256sum -- * > SHA256SUMS)
echo "== dist/"
ls -l dist
cat dist/SHA256SUMS
