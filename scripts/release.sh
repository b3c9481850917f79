#!/usr/bin/env bash
# The release recipe: static (musl) binaries and Debian packages for x86-64
# (amd64) and 64-bit ARM (arm64, a Raspberry Pi), with their SHA-256 sums,
# in dist/:
#
#   dist/pv3-<version>-x86_64-unknown-linux-musl    static binary
#   dist/pv3-<version>-aarch64-unknown-linux-musl   static binary
#   dist/pv3_<version>-1_amd64.deb
#   dist/pv3_<version>-1_arm64.deb
#   dist/pv3-<version>-amd64.oci.tar               container image (Docker, Podman)
#   dist/pv3-<version>-arm64.oci.tar
#   dist/pv3-addon-<version>-amd64.oci.tar         the Home Assistant add-on's image
#   dist/pv3-addon-<version>-arm64.oci.tar
#   dist/SHA256SUMS                                 sha256sum -c SHA256SUMS
#
# Upload the files to the GitHub release tagged v<version>: that is the
# layout [package.metadata.binstall] in Cargo.toml points `cargo binstall
# pv3` at. Push the images to the registry (docs/container.md, "Publishing").
#
# Needs: rustup targets x86_64-unknown-linux-musl and
# aarch64-unknown-linux-musl, clang (ring's C files; .cargo/config.toml
# points both targets at it and links with rust-lld), cargo-deb, podman (the
# images: FROM scratch with no RUN step, so no registry and no emulation) and
# the CA roots in /etc/ssl/certs/ca-certificates.crt (ca-certificates).
# PODMAN="podman --runtime runc --cgroup-manager cgroupfs" picks podman's
# options where its defaults do not work.
#
# Usage: scripts/release.sh [TARGET...]   (default: both targets)
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A deb_arch=(
  [x86_64-unknown-linux-musl]=amd64
  [aarch64-unknown-linux-musl]=arm64
)
# Home Assistant names arm64 aarch64 (the add-on's config.yaml, its images).
declare -A hass_arch=(
  [x86_64-unknown-linux-musl]=amd64
  [aarch64-unknown-linux-musl]=aarch64
)
podman=${PODMAN:-podman}
ca_roots=/etc/ssl/certs/ca-certificates.crt
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
$podman --version >/dev/null 2>&1 || missing+=("podman: sudo apt-get install podman")
[ -s "$ca_roots" ] || missing+=("the CA roots $ca_roots: sudo apt-get install ca-certificates")
changelog_version=$(sed -n '1s/^pv3 (\([^)]*\)).*/\1/p' debian/changelog 2>/dev/null || true)
[ "$changelog_version" = "$version-1" ] || missing+=("debian/changelog's first entry for $version-1 (it has '${changelog_version}')")
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
# Both targets in one cargo run: each binary's final step (fat LTO, one
# codegen unit) uses one core, so two side by side use two.
echo "== static binaries: ${targets[*]}"
cargo build --release --locked $(printf -- '--target %s ' "${targets[@]}")
for target in "${targets[@]}"; do
  cp "target/$target/release/pv3" "dist/pv3-$version-$target"
  echo "== $target: Debian package (${deb_arch[$target]})"
  # The release profile strips already; cargo-deb's strip would be the
  # host's, which cannot read an aarch64 binary. Its warning "No $auto deps"
  # is right: a static binary depends on nothing.
  cargo deb --no-build --no-strip --target "$target" --output "dist/"
done

# The images (docs/container.md): the same layers, two users. Stamped with the
# last commit's time, so the same commit gives the same image digests.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
for target in "${targets[@]}"; do
  arch=${deb_arch[$target]}
  echo "== $target: container images ($arch)"
  context=target/container/$arch
  rm -rf "$context"
  mkdir -p "$context/data"
  cp "target/$target/release/pv3" "$context/pv3"
  cp "$ca_roots" "$context/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\npv3:x:10001:10001:pv3:/data:/sbin/nologin\n' > "$context/passwd"
  printf 'root:x:0:\npv3:x:10001:\n' > "$context/group"
  for image in "pv3 ghcr.io/pv3-project/pv3:$version-$arch" \
               "pv3-addon ghcr.io/pv3-project/${hass_arch[$target]}-pv3-addon:$version"; do
    read -r stage name <<<"$image"
    $podman build --quiet --platform "linux/$arch" --target "$stage" --timestamp "$epoch" \
      --build-arg "VERSION=$version" --build-arg "HASS_ARCH=${hass_arch[$target]}" \
      --file container/Containerfile --tag "$name" "$context" >/dev/null
    rm -f "dist/$stage-$version-$arch.oci.tar"
    $podman save --quiet --format oci-archive --output "dist/$stage-$version-$arch.oci.tar" "$name"
  done
done

(cd dist && sha256sum -- * > SHA256SUMS)
echo "== dist/"
ls -l dist
cat dist/SHA256SUMS
