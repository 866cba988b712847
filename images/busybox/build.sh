#!/usr/bin/env bash
# Builds the image cube-busybox:latest (or the tag given) from the host's static busybox, for
# tests and demos: no registry can be reached, so nothing can be pulled.
set -euo pipefail
tag=${1:-cube-busybox:latest}
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  echo "a statically linked $busybox is needed: apt-get install busybox-static" >&2
  exit 1
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$busybox" "$ctx/busybox"
cp "$(dirname "$0")/Dockerfile" "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
