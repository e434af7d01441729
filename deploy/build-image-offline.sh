#!/usr/bin/env bash
# Build the dunning image on a machine with no Docker engine and no container registry, only
# Debian's packages and PyPI: debootstrap a minimal Debian bookworm with Python into a folder,
# import that folder as a local base image, and build the Dockerfile on it with podman.
#
#   deploy/build-image-offline.sh [WORK_DIR]
#
# Needs root and Debian's podman, buildah, runc and debootstrap:
#   apt-get install -y podman buildah runc debootstrap fuse-overlayfs slirp4netns uidmap
#
# Settings (environment):
#   WORK_DIR / DUNNING_BUILD_DIR  where the base's root filesystem is unpacked
#                                 (default /var/tmp/dunning-image-build; removed after import)
#   DUNNING_IMAGE                 the image to build (default localhost/dunning:latest; it is
#                                 also tagged with the version in pyproject.toml)
#   DUNNING_BASE_IMAGE            the local base (default localhost/dunning-base:bookworm)
#   DEBIAN_MIRROR                 (default http://deb.debian.org/debian)
#   REBUILD_BASE=1                debootstrap the base again even if it exists
#   DUNNING_BUILD_CA_BUNDLE       the CA bundle pip trusts while building, mounted over the
#                                 build stage's (default: this host's, so a TLS-inspecting
#                                 proxy that the host trusts works; never copied into the image)
#
# Run the result:
#   podman run --rm --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
#     --network host localhost/dunning:latest
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work_dir=${1:-${DUNNING_BUILD_DIR:-/var/tmp/dunning-image-build}}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo_root/pyproject.toml" | head -n 1)
image=${DUNNING_IMAGE:-localhost/dunning:latest}
base_image=${DUNNING_BASE_IMAGE:-localhost/dunning-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
rebuild_base=${REBUILD_BASE:-0}
ca_bundle=${DUNNING_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'build-image-offline: %s\n' "$*" >&2; exit 1; }

check_tools() {
  [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and podman's root storage need it)"
  local tool missing=()
  for tool in debootstrap podman buildah runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}; apt-get install -y ${missing[*]}"
}

# A minimal Debian with Python from Debian's packages, as a folder, then as a local image.
build_base() {
  local rootfs="$work_dir/rootfs"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  log "debootstrap $suite into $rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$work_dir/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $work_dir/debootstrap.log"
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
  # Like Debian's slim images: no manuals, docs or translations, now or from later installs
  # (copyright files stay).
  printf '%s\n' \
    'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/01-slim"
  find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  log "importing the base as $base_image"
  tar --numeric-owner -C "$rootfs" -c . \
    | podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$base_image" >/dev/null
  rm -rf "$rootfs"
}

main() {
  check_tools
  mkdir -p "$work_dir"
  local started=$SECONDS
  if [ "$rebuild_base" = 1 ] || ! podman image exists "$base_image"; then
    build_base
  else
    log "reusing the base $base_image (REBUILD_BASE=1 to make it again)"
  fi
  local base_done=$SECONDS
  local mounts=()
  [ -f "$ca_bundle" ] && mounts+=(--volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")
  log "podman build $image from $repo_root"
  podman build \
    "${mounts[@]}" \
    --isolation=chroot \
    --format docker \
    --pull=never \
    --build-arg "BASE=$base_image" \
    --tag "$image" \
    --tag "${image%:*}:$version" \
    --file "$repo_root/Dockerfile" \
    "$repo_root"
  local size
  size=$(podman image inspect --format '{{.Size}}' "$image")
  log "built $image and ${image%:*}:$version: $((size / 1000000)) MB;" \
    "base $((base_done - started)) s, image $((SECONDS - base_done)) s"
}

main "$@"
