#!/usr/bin/env bash
# Installs the Debian packages the agent (or its tests) need, skipping what is already there.
#   scripts/install-system-deps.sh run    libvirt's library and headers, to build libvirt-python
#   scripts/install-system-deps.sh test   plus a libvirt daemon, QEMU, tini, Prometheus (promtool), ss (iproute2), curl
#                                         and ab (apache2-utils, the C client of the distance-to-the-limit benchmark)
set -euo pipefail

want=(libvirt-dev pkg-config gcc)
if [[ "${1:-run}" == "test" ]]; then
  # libvirt-daemon-system is left out on purpose: it pulls polkit and service start-up, and the
  # tests start their own daemon.
  want+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 tini prometheus iproute2 curl apache2-utils)
fi

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "install-system-deps: no apt-get here; install these packages yourself: ${missing[*]}" >&2
  exit 1
fi
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3; do
  if "${sudo[@]}" apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null; then break; fi
  echo "install-system-deps: apt-get update failed (attempt $attempt), retrying" >&2
  sleep $((attempt * 5))
done
"${sudo[@]}" apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
