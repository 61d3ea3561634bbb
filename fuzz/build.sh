#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer (from the libfuzzer-sys crate) and
# SanitizerCoverage instrumentation, on the stable toolchain: every flag
# below is a stable rustc flag (see docs/design-notes.md, "Fuzzing").
# Binaries land in $CARGO_TARGET_DIR (default fuzz/target)/<host>/$FUZZ_PROFILE
# (default release; CI builds the cheaper `ci` profile).
set -euo pipefail
cd "$(dirname "$0")"
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing \
 -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares"
# --target keeps RUSTFLAGS off build scripts and proc macros.
cargo build --profile "${FUZZ_PROFILE:-release}" --target "$host" --bins "$@"
