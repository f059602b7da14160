#!/usr/bin/env bash
# Streams against files, and against restic, on the same data and the same
# local S3 server (s3s-fs):
#
#   tests/bench_stream.sh [--gib N] [--quick]
#
# The data is a tar of /usr cut to N GiB (default 4; --quick: 256 MiB), as
# `tar -c /usr | ...` would stream it. Measured with /usr/bin/time (wall
# seconds, peak RSS), caches dropped (when root) before each step:
#   - vaultik: a backup of the tar as a file (`path =`), as a stream
#     (`--stdin`, piped from cat), and of the next day's stream (1% of it
#     rewritten in 40 places: bytes uploaded, and the dedup ratio); a restore
#     of the file into a directory and of the stream to standard output;
#   - restic: `backup --stdin` of both streams, `dump` of the first.
# Each backup starts from a fresh bucket and index, but the second stream
# (which is the point). Prints a table. Not part of the test run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export PATH="$HOME/.cargo/bin:$PATH"

GIB=4 QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gib) GIB="$2"; shift ;;
    --quick) QUICK=1 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
BYTES=$((GIB << 30))
[ "$QUICK" = 1 ] && BYTES=$((256 << 20))

need() { command -v "$1" >/dev/null 2>&1; }
need restic || { apt-get update -qq && apt-get install -y -qq restic >/dev/null; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
need s3s-fs || cargo install s3s-fs --version 0.14.1 --features binary --locked
cargo build --release --locked -q
V="$ROOT/target/release/vaultik"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/vaultik-bench-stream.XXXXXX")"
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

ACCESS=bench-access SECRET=bench-secret-key-123
export AWS_ACCESS_KEY_ID=$ACCESS AWS_SECRET_ACCESS_KEY=$SECRET
mkdir -p "$WORK/s3"
RUST_LOG=info s3s-fs --host 127.0.0.1 --port 0 --access-key "$ACCESS" --secret-key "$SECRET" \
  "$WORK/s3" > "$WORK/s3.log" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 100); do
  PORT=$(sed -n 's#.*http://127\.0\.0\.1:\([0-9][0-9]*\).*#\1#p' "$WORK/s3.log" | head -1)
  [ -n "$PORT" ] && break
  sleep 0.1
done
ENDPOINT="http://127.0.0.1:$PORT"

echo "making the data: a tar of /usr cut to $BYTES bytes" >&2
mkdir -p "$WORK/file"
{ tar -cf - -C / usr 2>/dev/null || true; } | head -c "$BYTES" > "$WORK/file/usr.tar"
cp "$WORK/file/usr.tar" "$WORK/next.tar"
# The next day: 1% rewritten, in 40 places.
piece=$((BYTES / 100 / 40))
for i in $(seq 0 39); do
  dd if=/dev/urandom of="$WORK/next.tar" bs="$piece" count=1 seek=$((i * 97 + 13)) \
    conv=notrunc status=none 2>/dev/null || true
done

drop_caches() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
: > "$WORK/results"
timed() {  # LABEL cmd...  (stdin and stdout as the caller sets them)
  local label=$1; shift
  drop_caches
  /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" 2> "$WORK/cmd.err" || {
    echo "FAILED: $label" >&2; cat "$WORK/cmd.err" >&2; exit 1; }
  read -r wall rss < <(tail -1 "$WORK/time.out")
  echo "$label $wall $rss" >> "$WORK/results"
}

conf() {  # NAME BUCKET [snapshot section lines...]
  local name=$1 bucket=$2; shift 2
  mkdir -p "$WORK/s3/$bucket"
  {
    echo "age_recipient = $(cat "$WORK/pub")"
    echo "index_path = $WORK/state-$name/index.sqlite"
    echo "hostname = bench"
    echo "[s3]"
    echo "endpoint = $ENDPOINT"
    echo "bucket = $bucket"
    for l in "$@"; do echo "$l"; done
  } > "$WORK/$name.conf"
}
"$V" keygen -o "$WORK/key" > "$WORK/pub"
export VAULTIK_PRIVATE_KEY="$(grep AGE-SECRET "$WORK/key")"

# vaultik: the tar as a file, then as a stream (each into a bucket of its own).
conf file bfile "[snapshot f]" "path = $WORK/file"
VAULTIK_CONFIG="$WORK/file.conf" timed "vaultik backup of a file" "$V" snapshot create > "$WORK/file.out"
conf stream bstream
VAULTIK_CONFIG="$WORK/stream.conf" timed "vaultik backup of a stream" \
  sh -c "cat '$WORK/file/usr.tar' | '$V' snapshot create --stdin usr" > "$WORK/s1.out"
VAULTIK_CONFIG="$WORK/stream.conf" timed "vaultik backup of the next stream" \
  sh -c "cat '$WORK/next.tar' | '$V' snapshot create --stdin usr" > "$WORK/s2.out"
VAULTIK_CONFIG="$WORK/file.conf" timed "vaultik restore of the file" \
  "$V" restore latest --target "$WORK/restored" > /dev/null
cmp "$WORK/restored$WORK/file/usr.tar" "$WORK/file/usr.tar"
rm -rf "$WORK/restored"
FIRST=$(VAULTIK_CONFIG="$WORK/stream.conf" "$V" snapshot list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
# Timed into a pipe that only reads (sha256sum runs at ~400 MB/s here and
# would be what is measured); checked in a second, untimed run.
VAULTIK_CONFIG="$WORK/stream.conf" timed "vaultik restore of the stream to stdout" \
  sh -c "'$V' restore $FIRST --stdout | cat > /dev/null"
SUM=$(sha256sum < "$WORK/file/usr.tar" | cut -d' ' -f1)
[ "$(VAULTIK_CONFIG="$WORK/stream.conf" "$V" restore "$FIRST" --stdout 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$SUM" ] || {
  echo "the stream came back different" >&2; exit 1; }

# The machine's limit for this data, from what one core does per second:
# zstd at the configured level (3) on the data, the chunker and SHA-256 (a
# pass of the stream that deduplicates every chunk: cut and hashed, nothing
# compressed or uploaded), and sealing what zstd leaves (ChaCha20-Poly1305,
# then SHA-256 of the blob). A backup can do no better than all of that
# spread over every core.
VAULTIK_CONFIG="$WORK/stream.conf" timed "vaultik deduplicated pass of the stream (cut and hash only)" \
  sh -c "cat '$WORK/file/usr.tar' | '$V' snapshot create --stdin usr" > /dev/null
ZSTD_MBS=$(zstd -b3 -i2 "$WORK/file/usr.tar" 2>&1 | tr '\r' '\n' | sed -n 's/.*(x\([0-9.]*\)), *\([0-9.]*\) MB\/s.*/\1 \2/p' | tail -1)
RATIO=${ZSTD_MBS% *}; ZSTD_MBS=${ZSTD_MBS#* }
CIPHER_KBS=$(openssl speed -evp chacha20-poly1305 -bytes 65536 -seconds 1 2>/dev/null | awk '/^ChaCha20-Poly1305/ { sub("k", "", $2); print $2 }')
SHA_KBS=$(openssl speed -evp sha256 -bytes 65536 -seconds 1 2>/dev/null | awk '/^sha256/ { sub("k", "", $2); print $2 }')

# restic, the same streams.
mkdir -p "$WORK/s3/brestic"
export RESTIC_REPOSITORY="s3:$ENDPOINT/brestic" RESTIC_PASSWORD=bench
restic init -q >/dev/null
timed "restic backup of a stream" \
  sh -c "cat '$WORK/file/usr.tar' | restic backup -q --stdin --stdin-filename usr.tar" > /dev/null
timed "restic backup of the next stream" \
  sh -c "cat '$WORK/next.tar' | restic backup -q --stdin --stdin-filename usr.tar" > /dev/null
RFIRST=$(restic snapshots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["short_id"])')
timed "restic dump of the stream to stdout" \
  sh -c "restic dump $RFIRST usr.tar | cat > /dev/null"
[ "$(restic dump "$RFIRST" usr.tar | sha256sum | cut -d' ' -f1)" = "$SUM" ] || {
  echo "restic's stream came back different" >&2; exit 1; }

MB=$(awk -v b="$BYTES" 'BEGIN { printf "%.0f", b / 1e6 }')
echo
echo "data: a tar of /usr, $MB MB; the next stream rewrites 1% of it in 40 places; s3s-fs 0.14.1"
echo
echo "| step | seconds | MB/s | peak RSS |"
echo "|---|---|---|---|"
while read -r line; do
  rss=${line##* }; rest=${line% *}; wall=${rest##* }; label=${rest% *}
  awk -v l="$label" -v w="$wall" -v r="$rss" -v b="$BYTES" \
    'BEGIN { printf "| %s | %.2f | %.0f | %.0f MB |\n", l, w, (w > 0 ? b / 1e6 / w : 0), r / 1024 }'
done < "$WORK/results"
CUT_S=$(awk '/^vaultik deduplicated pass/ { print $(NF-1) }' "$WORK/results")
awk -v b="$BYTES" -v z="$ZSTD_MBS" -v r="$RATIO" -v c="$CIPHER_KBS" -v h="$SHA_KBS" -v t="$CUT_S" \
  -v cores="$(nproc)" 'BEGIN {
    mb = b / 1e6; cut = (t > 0 ? mb / t : 0); ck = c * 1.024 / 1000; sh = h * 1.024 / 1000;
    per = 1 / z + (cut > 0 ? 1 / cut : 0) + (1 / r) * (1 / ck + 1 / sh);
    printf "\nlimit for this data on %d cores: %.0f MB/s (per core: zstd-3 %.0f MB/s at %.2fx, cut and hash %.0f MB/s, ChaCha20-Poly1305 %.0f MB/s, SHA-256 %.0f MB/s)\n",
      cores, cores / per, z, r, cut, ck, sh }'
echo
for f in file s1 s2; do
  case $f in file) what="the file" ;; s1) what="the stream" ;; s2) what="the next stream" ;; esac
  echo "vaultik, $what: $(sed -n 's/^snapshot [^:]*: //p' "$WORK/$f.out")"
done
restic stats --mode raw-data 2>/dev/null | sed -n 's/^ *Total Size: */restic, both streams stored: /p'
