#!/usr/bin/env bash
# Builds the agent image with podman and smoke-tests it for real (tests/image/): the demo as the
# Dockerfile runs it, and the DaemonSet's settings against a real libvirt daemon's socket.
#
#   scripts/image-test.sh          (make image-test; CI runs it after make test)
#
# Needs root (podman as root, mmdebstrap, a libvirt daemon whose socket belongs to uid 107) and a
# Debian machine; installs podman, runc and mmdebstrap when missing. No registry is needed: the base
# is a local stand-in for the official slim Python image (scripts/image-standin-base.sh), passed
# through the Dockerfile's PYTHON_IMAGE build argument; the Dockerfile itself is built unchanged.
# What this machine needs from podman (runtime, cgroup manager, ulimits) and the CA bundle the build
# may need live in this run's own temporary files: nothing goes into the image, and the machine's
# global configuration is not touched.
#
# Outside CI a machine that cannot run it (not root, no apt-get) is reported and skipped; with
# CI=true that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/otel-vmi-hv:ci}"
BASE_IMAGE="${BASE_IMAGE:-localhost/otel-vmi-hv-python-base:3.11-bookworm}"
PYTHON="${PYTHON:-.venv/bin/python}"

cannot_run() {
  case "${CI:-}" in
    true | 1 | yes) echo "image-test: FAILED: cannot run: $* (CI=true: this is a failure, not a skip)" >&2; exit 1 ;;
    *) echo "image-test: SKIPPED: cannot run: $*" >&2; exit 0 ;;
  esac
}

[[ $(id -u) -eq 0 ]] || cannot_run "needs root (rootful podman, mmdebstrap, a socket owned by uid 107)"
command -v apt-get >/dev/null || cannot_run "needs a Debian machine (apt-get) to install podman and mmdebstrap"
[[ -x "$PYTHON" ]] || cannot_run "$PYTHON is missing (make .venv/.dev-installed)"

# runc rather than crun: crun refuses hybrid cgroup v1/v2 machines. iptables, netavark and
# aardvark-dns: podman's bridge network for the published port of the demo run.
want=(podman runc netavark aardvark-dns iptables mmdebstrap)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "image-test: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
fi

work="$(mktemp -d /tmp/otel-vmi-hv-image-test.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# This run's podman settings. The ulimits are the machine's own hard limits: podman's defaults
# exceed what an unprivileged-in-a-VM root may set here ("setrlimit RLIMIT_NOFILE: Operation not
# permitted"). The cgroupfs manager and file event log need no systemd; netavark is named because
# Debian's podman otherwise picks CNI, whose plugins it does not install.
nofile="$(ulimit -Hn)"
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
EOF
export CONTAINERS_CONF="$work/containers.conf"

started=$SECONDS
if podman image exists "$BASE_IMAGE"; then
  echo "image-test: reusing the stand-in base $BASE_IMAGE" >&2
else
  scripts/image-standin-base.sh "$BASE_IMAGE"
fi
base_seconds=$((SECONDS - started))

# pip inside the build verifies TLS with the image's CA bundle; where this machine's pip trusts a
# bundle of its own (pip's `cert` setting), lend it to the build read-only, over the file the base
# already has (a mount over a missing path would leave an empty file behind in the image).
build_args=()
cert="$("$PYTHON" -m pip config list 2>/dev/null | sed -n "s/^[^ ]*\.cert='\(.*\)'$/\1/p" | head -n1)"
cert="${PIP_CERT:-$cert}"
if [[ -n "$cert" && -r "$cert" ]]; then
  echo "image-test: the build trusts pip's CA bundle $cert (mounted read-only, not copied)" >&2
  build_args+=(-v "$(readlink -f "$cert"):/etc/ssl/certs/ca-certificates.crt:ro")
fi

started=$SECONDS
IMAGE="$IMAGE" PYTHON_IMAGE="$BASE_IMAGE" ENGINE=podman scripts/image-build.sh "${build_args[@]}"
build_seconds=$((SECONDS - started))

started=$SECONDS
status=0
OTEL_VMI_HV_TEST_IMAGE="$IMAGE" OTEL_VMI_HV_TEST_BASE_IMAGE="$BASE_IMAGE" \
  "$PYTHON" -m pytest tests/image -p no:cacheprovider -rA -q ${PYTEST_ARGS:-} || status=$?
smoke_seconds=$((SECONDS - started))

# The figures BENCHMARKS.md reports: size above the base, where the bytes go, idle memory.
started=$SECONDS
if [[ $status -eq 0 ]]; then
  "$PYTHON" -m bench.image "$IMAGE" "$BASE_IMAGE" || status=$?
fi
report_seconds=$((SECONDS - started))
echo "image-test: base ${base_seconds}s, build ${build_seconds}s, smoke tests ${smoke_seconds}s," \
  "report ${report_seconds}s" >&2
exit "$status"
