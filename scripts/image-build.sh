#!/usr/bin/env bash
# Builds the agent image from the Dockerfile: with docker where its daemon answers, else with podman.
#
#   scripts/image-build.sh [extra build arguments...]
#
# Environment:
#   IMAGE          tag to build (default otel-vmi-hv:local)
#   PYTHON_IMAGE   base image (default: the Dockerfile's, the official python:3.11-slim-bookworm)
#   ENGINE         docker or podman, to choose instead of probing
# Extra arguments go to the build command as they are (scripts/image-test.sh uses them to lend the
# build a CA bundle for podman; docker users can pass --network, --progress, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-otel-vmi-hv:local}"

engine="${ENGINE:-}"
if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null; then
    engine=podman
  else
    echo "image-build: neither a docker daemon that answers nor podman; install one (Debian: apt-get install podman)" >&2
    exit 1
  fi
fi

args=(build -t "$image")
[[ -n "${PYTHON_IMAGE:-}" ]] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
case "$engine" in
  docker) ;;
  # podman writes OCI images by default, and the OCI format has no HEALTHCHECK: it would be dropped.
  podman) args+=(--format docker) ;;
  *) echo "image-build: ENGINE must be docker or podman, not '$engine'" >&2; exit 2 ;;
esac

echo "image-build: $engine ${args[*]} $* ." >&2
exec "$engine" "${args[@]}" "$@" .
