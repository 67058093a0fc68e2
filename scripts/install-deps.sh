#!/usr/bin/env bash
# Installs the Debian 12 packages shardq needs to build, test and run, if any is
# missing. Idempotent and quick when everything is there. Run as root.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config clang-format
  mariadb-server libmariadb-dev libmysqlcppconn-dev  # the latter for bench/ only
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  libboost-all-dev libgtest-dev libgmock-dev libbenchmark-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libjemalloc-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages: ${missing[*]}; run as root (or sudo) to install them" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's own service start is not wanted (no systemd here, and shardq starts
# a private server); policy-rc.d refusals are expected and harmless.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
