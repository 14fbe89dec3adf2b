#!/usr/bin/env bash
# Builds a local stand-in for the official python:3.11-slim-bookworm image with mmdebstrap and
# imports it into podman as the given tag (default localhost/otel-vmi-hv-python-base:3.11-bookworm).
#
# Why: machines without a container registry cannot pull the official base, yet the Dockerfile must
# be built and run unchanged; only its PYTHON_IMAGE build argument points here. The stand-in has what
# the slim image offers the Dockerfile: Debian bookworm, Python 3.11 with pip and headers, CA
# certificates, python on PATH, pip allowed to install system-wide, and the slim image's apt
# clean-up settings. Packages come from the same Debian mirror the machine's apt uses (read from its
# sources files), so nothing machine-specific ends up in the repository.
#
#   scripts/image-standin-base.sh [TAG]     needs root, podman and mmdebstrap
set -euo pipefail

tag="${1:-localhost/otel-vmi-hv-python-base:3.11-bookworm}"
suite=bookworm

die() { echo "image-standin-base: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (mmdebstrap --mode=root)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed"
command -v podman >/dev/null || die "podman is not installed"

# The machine's Debian mirrors, the main archive and the security archive, as its apt sources name
# them (deb822 .sources files or one-line .list files): every deb URI there, one a line.
apt_uris() {
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
  local f
  for f in "${files[@]}"; do
    [[ -r "$f" ]] || continue
    awk '
      /^[[:space:]]*#/ { next }
      /^URIs:/ { for (i = 2; i <= NF; i++) print $i }
      /^deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }
    ' "$f"
  done
}
mirror="$(apt_uris | grep -i 'debian' | grep -v -m1 'security' || true)"
[[ -n "$mirror" ]] || die "found no Debian mirror in the apt sources (/etc/apt/sources.list*)"
security="$(apt_uris | grep -i -m1 'debian-security' || true)"
security="${security:-${mirror%/debian}/debian-security}"

work="$(mktemp -d /tmp/otel-vmi-hv-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT

cat >"$work/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF

echo "image-standin-base: building $tag from Debian $suite (mirror: $mirror)" >&2
# dpkg path excludes drop documentation, man pages and translations as the slim image does; the
# customize hooks leave pip free to install system-wide (the official image has its own Python in
# /usr/local, where the same holds) and add the slim image's apt clean-up configuration.
mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
  --include=ca-certificates,python3,python3-dev,python3-pip,python3-venv,python-is-python3 \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
  --customize-hook='printf "%s\n" "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };" "APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" >"$1"/etc/apt/apt.conf.d/docker-clean' \
  --customize-hook='echo "Acquire::Languages \"none\";" >"$1"/etc/apt/apt.conf.d/docker-no-languages' \
  --customize-hook='printf "%s\n" "Acquire::GzipIndexes \"true\";" "Acquire::CompressionTypes::Order:: \"gz\";" >"$1"/etc/apt/apt.conf.d/docker-gzip-indexes' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  "$suite" "$work/base.tar" - <"$work/sources.list"

podman import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
  --change 'CMD ["python3"]' \
  "$work/base.tar" "$tag" >/dev/null
echo "image-standin-base: imported $tag" >&2
