#!/usr/bin/env bash
# Run the whole test suite: installs what the tests need when it is missing
# (the test S3 servers s3s-fs and moto, a few Debian packages, the musl target), builds
# the static binary, then runs every unit and integration test. The integration tests
# start their own s3s-fs on 127.0.0.1 (one per test binary, a bucket per test).
set -euo pipefail
cd "$(dirname "$0")/.."

S3SFS_VERSION=0.14.1   # 0.15+ needs rustc >= 1.96
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(s3s-fs --version 2>/dev/null)" != "s3s-fs $S3SFS_VERSION" ]; then
  echo "installing s3s-fs $S3SFS_VERSION (about 5 minutes on 2 cores, once)" >&2
  cargo install s3s-fs --version "$S3SFS_VERSION" --features binary --locked
fi

# moto's S3 server (storage classes, thaws, checksums: the cold-storage
# tests), pinned, in a virtualenv of its own.
MOTO_VERSION=5.2.5
MOTO_VENV="${VAULTIK_MOTO_VENV:-$HOME/.cache/vaultik/moto-$MOTO_VERSION}"
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  echo "installing moto[server] $MOTO_VERSION into $MOTO_VENV (about 30 seconds, once)" >&2
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION"
fi
export VAULTIK_MOTO_SERVER="$MOTO_VENV/bin/moto_server"

# Debian packages the tests use: restic (the benchmark's smoke test), socat
# and openssl (a TLS endpoint with a test CA), musl-tools (the static build),
# GNU time (peak memory of a run); and what the extended attribute tests set
# and compare with: setcap/getcap (libcap2-bin), setfacl/getfacl (acl),
# setfattr/getfattr (attr), chattr/lsattr (e2fsprogs), rsync; promtool
# (prometheus: the metrics textfile is checked with it).
missing=()
command -v restic >/dev/null 2>&1 || missing+=(restic)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
[ -x /usr/bin/time ] || missing+=(time)
command -v setcap >/dev/null 2>&1 || missing+=(libcap2-bin)
command -v setfacl >/dev/null 2>&1 || missing+=(acl)
command -v setfattr >/dev/null 2>&1 || missing+=(attr)
command -v chattr >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The static binary (issue: ship it): its target once, then the build.
MUSL=x86_64-unknown-linux-musl
rustup target list --installed 2>/dev/null | grep -qx "$MUSL" || rustup target add "$MUSL"
cargo build --release --locked --target "$MUSL"

cargo test --locked "$@"
