#!/usr/bin/env bash
# Longer runs of the fault tests than the test suite affords (issue 6):
#
#   tests/soak.sh [MINUTES]      (default 30)
#
# Splits the time between the seeded mutation fuzzers (config parser,
# manifest reader), restores of random forged metadata, and the kill -9
# crash test, each with a new seed per round, until the time is up. Prints each round's seed: a failure is
# reproduced with the same VAULTIK_FUZZ_SEED / VAULTIK_CRASH_SEED.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
export PATH="$HOME/.cargo/bin:$PATH"
bash tests/run.sh --no-run >/dev/null   # installs what the tests need, builds
end=$(( $(date +%s) + MINUTES * 60 ))
round=0
while [ "$(date +%s)" -lt "$end" ]; do
  round=$((round + 1))
  seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ^ round ))
  echo "round $round: fuzz seed $seed" >&2
  VAULTIK_FUZZ_SEED=$seed VAULTIK_FUZZ_ITERS=500000 \
    cargo test --locked --release --bin vaultik fuzz -- --quiet
  echo "round $round: hostile metadata seed $seed" >&2
  VAULTIK_HOSTILE_SEED=$seed VAULTIK_HOSTILE_ROUNDS=2000 \
    cargo test --locked --release --test cli hostile::fuzzed -- --quiet
  echo "round $round: crash seed $seed" >&2
  VAULTIK_CRASH_SEED=$seed VAULTIK_CRASH_ROUNDS=100 \
    cargo test --locked --release --test cli crash:: -- --quiet
done
echo "soak: $round rounds in $MINUTES minutes, no failure" >&2
