#!/usr/bin/env bash
# Configures and builds shardq into build/ (or $BUILD_DIR). -j2 suits this 2-core
# machine; override with JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" >/dev/null
cmake --build "$BUILD_DIR" -j"${JOBS:-2}"
