#!/usr/bin/env bash
# Longer runs of the fault tests than the test suite affords (issue 6):
#
#   tests/soak.sh [MINUTES]      (default 30)
#
# Splits the time between the fuzzers of the readers of untrusted input
# (config parser, manifest reader, deletion marks), restores of random
# forged metadata, and the kill -9 crash test, each with a new seed per
# round, until the time is up. Prints each round's seed: a failure is
# reproduced with the same VAULTIK_FUZZ_SEED / VAULTIK_CRASH_SEED.
#
# The fuzzers: the seeded mutation fuzzers of src/fuzz.rs (stable Rust), and,
# when a nightly toolchain is installed, the cargo-fuzz (libFuzzer) targets
# in tests/fuzz for FUZZ_SECONDS each per round (default 60; cargo-fuzz is
# installed when missing). Their corpus grows in tests/fuzz/corpus; a crash
# is saved in tests/fuzz/artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
export PATH="$HOME/.cargo/bin:$PATH"
bash tests/run.sh --no-run >/dev/null   # installs what the tests need, builds
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
LIBFUZZER=0
if rustup run nightly rustc --version >/dev/null 2>&1; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
  LIBFUZZER=1
  for t in config manifest mark; do
    mkdir -p "tests/fuzz/corpus/$t"
    cp -n tests/fuzz/seeds/$t/* "tests/fuzz/corpus/$t/"
  done
  cargo +nightly fuzz build --fuzz-dir tests/fuzz >/dev/null
else
  echo "no nightly toolchain: cargo-fuzz targets skipped (the stable fuzzers still run)" >&2
fi
end=$(( $(date +%s) + MINUTES * 60 ))
round=0
while [ "$(date +%s)" -lt "$end" ]; do
  round=$((round + 1))
  seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ^ round ))
  echo "round $round: fuzz seed $seed" >&2
  VAULTIK_FUZZ_SEED=$seed VAULTIK_FUZZ_ITERS=500000 \
    cargo test --locked --release --lib fuzz -- --quiet
  if [ "$LIBFUZZER" = 1 ]; then
    for t in config manifest mark; do
      echo "round $round: cargo fuzz $t for ${FUZZ_SECONDS}s" >&2
      cargo +nightly fuzz run --fuzz-dir tests/fuzz "$t" "tests/fuzz/corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -seed="$((seed % 4294967295))" -print_final_stats=1 2>&1 |
        grep -E "^stat::number_of_executed_units|^Done|ERROR|panicked" >&2
    done
  fi
  echo "round $round: hostile metadata seed $seed" >&2
  VAULTIK_HOSTILE_SEED=$seed VAULTIK_HOSTILE_ROUNDS=2000 \
    cargo test --locked --release --test cli hostile::fuzzed -- --quiet
  echo "round $round: crash seed $seed" >&2
  VAULTIK_CRASH_SEED=$seed VAULTIK_CRASH_ROUNDS=100 \
    cargo test --locked --release --test cli crash:: -- --quiet
done
echo "soak: $round rounds in $MINUTES minutes, no failure" >&2
