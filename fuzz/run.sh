#!/usr/bin/env bash
# Runs one fuzz target (built by fuzz/build.sh) on its committed corpus:
#   fuzz/run.sh TARGET [SECONDS] [more libFuzzer flags, e.g. -runs=N]
# New inputs go to fuzz/corpus-work/TARGET (not committed; fold them into
# the corpus with fuzz/minimize.sh); a crash lands in
# fuzz/artifacts/TARGET/ and makes the run exit non-zero.
set -euo pipefail
cd "$(dirname "$0")"
target=$1
seconds=${2:-60}
shift $(($# < 2 ? $# : 2))
host=$(rustc -vV | sed -n 's/^host: //p')
bin=${FUZZ_BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/$host/${FUZZ_PROFILE:-release}}/$target
mkdir -p "corpus-work/$target" "artifacts/$target" "corpus/$target"
# -rss_limit_mb: a decoder that lets a small input claim much memory is a
# finding (every frame's decoder is bounded).
exec nice -n 10 "$bin" "corpus-work/$target" "corpus/$target" \
    -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" \
    -rss_limit_mb=1024 -print_final_stats=1 "$@"
