#!/usr/bin/env bash
# Run the whole test suite: installs the test S3 server (s3s-fs) when it is
# missing, then runs every unit and integration test. The integration tests
# start their own s3s-fs on 127.0.0.1 (one per test binary, a bucket per test).
set -euo pipefail
cd "$(dirname "$0")/.."

S3SFS_VERSION=0.14.1   # 0.15+ needs rustc >= 1.96
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(s3s-fs --version 2>/dev/null)" != "s3s-fs $S3SFS_VERSION" ]; then
  echo "installing s3s-fs $S3SFS_VERSION (about 2 minutes, once)" >&2
  cargo install s3s-fs --version "$S3SFS_VERSION" --features binary --locked
fi

# The benchmark's smoke test compares with restic (a Debian package).
if ! command -v restic >/dev/null 2>&1; then
  echo "installing restic (for the benchmark smoke test)" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq restic >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq restic >/dev/null
  fi
fi

cargo test --locked "$@"
