#!/usr/bin/env bash
# Folds what fuzz/run.sh found into the committed corpus, keeping a small
# set of inputs that covers every edge they cover (hit counts and compared
# values are not kept apart, or the TOML targets keep ~1,600 files each):
# fuzz/minimize.sh TARGET
set -euo pipefail
cd "$(dirname "$0")"
target=$1
host=$(rustc -vV | sed -n 's/^host: //p')
bin=${FUZZ_BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/$host/${FUZZ_PROFILE:-release}}/$target
rm -rf "corpus/$target.min"
mkdir -p "corpus/$target.min" "corpus-work/$target"
nice -n 10 "$bin" -set_cover_merge=1 -use_counters=0 -use_cmp=0 "corpus/$target.min" "corpus/$target" "corpus-work/$target"
rm -rf "corpus/$target"
mv "corpus/$target.min" "corpus/$target"
echo "$target: $(ls "corpus/$target" | wc -l) inputs in fuzz/corpus/$target"
