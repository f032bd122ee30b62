#!/usr/bin/env bash
# `just fuzz [targets…]`: runs each fuzz target (all by default) for
# FUZZ_SECONDS (default 60) with cargo fuzz, then prints how many inputs
# each ran. Exits non-zero if any target found a crash, a timeout or a
# memory blow-up; the input that did it is in fuzz/artifacts/<target>/.
#
# cargo-fuzz is installed from crates.io and cached under ~/.cache/kubestow
# keyed by version; it needs the nightly toolchain. New inputs the fuzzer
# finds go to fuzz/corpus/<target>/ (not committed); fuzz/seeds/<target>/
# is the committed starting corpus (fuzz/make_seeds.py writes it).
set -euo pipefail

CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
ALL=(pack index manifest tree catalogue config envelope)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION/bin"

log() { printf '[fuzz] %s\n' "$*" >&2; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "rustup toolchain install nightly (cargo fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if [ ! -x "$BIN/cargo-fuzz" ]; then
  log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION (a few minutes; cached)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION" --quiet
fi
export PATH="$BIN:$PATH"

cd "$ROOT"
# Release build with debug assertions and overflow checks, and the address
# sanitizer (cargo fuzz's defaults): one build for every target.
log "building the targets"
nice cargo +nightly fuzz build

mkdir -p fuzz/logs
rows=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log "$t: ${FUZZ_SECONDS}s"
  status=0
  nice cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 \
    >"fuzz/logs/$t.log" 2>&1 || status=$?
  done_line=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "fuzz/logs/$t.log" | tail -n1 || true)
  if [ "$status" -eq 0 ] && [ -n "$done_line" ]; then
    read -r _ runs _ _ secs _ <<<"$done_line"
    rows+=("$(printf '%-10s %12s %8s  %s' "$t" "$runs" "$secs" "no crash")")
  else
    failed=1
    artifact=$(grep -Eo 'Test unit written to [^ ]+' "fuzz/logs/$t.log" | tail -n1 | cut -d' ' -f5 || true)
    rows+=("$(printf '%-10s %12s %8s  %s' "$t" "-" "-" "FAILED (exit $status) ${artifact:-see fuzz/logs/$t.log}")")
    grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' "fuzz/logs/$t.log" | head -n5 >&2 || true
  fi
done

printf '\n%-10s %12s %8s  %s\n' target executions seconds result
printf '%s\n' "${rows[@]}"
exit "$failed"
