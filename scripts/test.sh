#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (GoogleTest under
# CTest). Tests that need MySQL start their own private MariaDB in a temp directory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j"${JOBS:-2}" "$@"
