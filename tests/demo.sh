#!/usr/bin/env bash
# Build vaultik and run a real backup and restore of DIR (default
# /usr/share/doc) with nothing but this repository: a freshly generated age
# key, a local-directory store and an index in a scratch directory. Checks the
# restore with `diff -r` and prints the figures.
#   usage: tests/demo.sh [DIR] [SCRATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
src="$(realpath "${1:-/usr/share/doc}")"
work="${2:-$(mktemp -d "${TMPDIR:-/tmp}/vaultik-demo.XXXXXX")}"
mkdir -p "$work"

cargo build --release --locked
bin="$PWD/target/release/vaultik"

"$bin" keygen --output "$work/identity.txt" > "$work/recipient.txt"
cat > "$work/vaultik.conf" <<CONF
age_recipient = $(cat "$work/recipient.txt")
index_path = $work/state/index.sqlite
[local]
path = $work/store
[snapshot demo]
path = $src
CONF

timed() {  # run a command, report wall time and peak memory when /usr/bin/time exists
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "  -> %e s wall, %M KiB peak RSS" "$@"
  else
    "$@"
  fi
}

echo "== backup of $src (store: $work/store)"
timed "$bin" --config "$work/vaultik.conf" snapshot create
echo "== second backup (nothing changed)"
timed "$bin" --config "$work/vaultik.conf" snapshot create
"$bin" --config "$work/vaultik.conf" snapshot list
echo "== restore into $work/restore"
VAULTIK_PRIVATE_KEY="$(grep '^AGE-SECRET-KEY-' "$work/identity.txt")" \
  timed "$bin" --config "$work/vaultik.conf" restore latest --target "$work/restore"
diff -r --no-dereference "$src" "$work/restore$src"
echo "== identical: $(find "$src" | wc -l) entries, $(du -sh "$src" | cut -f1) restored byte for byte"
echo "   store size: $(du -sh "$work/store" | cut -f1) in $(find "$work/store" -type f | wc -l) objects"
echo "   (scratch directory $work; remove it when done)"
