#!/usr/bin/env bash
# Folds what fuzz/run.sh found into the committed corpus, keeping only the
# inputs that add coverage: fuzz/minimize.sh TARGET
set -euo pipefail
cd "$(dirname "$0")"
target=$1
host=$(rustc -vV | sed -n 's/^host: //p')
bin=${FUZZ_BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/$host/${FUZZ_PROFILE:-release}}/$target
rm -rf "corpus/$target.min"
mkdir -p "corpus/$target.min" "corpus-work/$target"
nice -n 10 "$bin" -merge=1 "corpus/$target.min" "corpus/$target" "corpus-work/$target"
rm -rf "corpus/$target"
mv "corpus/$target.min" "corpus/$target"
echo "$target: $(ls "corpus/$target" | wc -l) inputs in fuzz/corpus/$target"
