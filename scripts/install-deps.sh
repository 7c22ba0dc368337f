#!/usr/bin/env bash
# Installs the system libraries MILAN in Swift links against (Debian/Ubuntu), only if some are missing.
# Runs as root on a fresh Debian 12 (empty apt lists, no sudo); elsewhere it tells you what to install.
set -euo pipefail
# openmpi-bin + libopenmpi3: mpirun and the library `milan` loads at run time for data parallelism (no -dev:
# it would pull a Fortran compiler; nothing MPI is needed to build).
PKGS=(libopenblas-dev libjpeg62-turbo-dev libpng-dev zlib1g-dev pkg-config dataset-fashion-mnist openmpi-bin libopenmpi3)
# Extra packages named on the command line (scripts/test.sh adds chromium, for the report's browser check).
PKGS+=("$@")
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-deps: missing ${missing[*]}; install them with your package manager (needs root)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
