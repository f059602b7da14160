#!/usr/bin/env bash
# Side-by-side benchmark: vaultik against restic (and rustic with --rustic) on
# the same data, the same machine and the same local S3 server.
#
#   tests/bench.sh [--rustic] [--garage] [--scale N] [--quick] [--datasets "share lib"]
#                  [--files "100000 1000000"]
#
# Datasets are copies of files already on the machine: `share` (/usr/share,
# ~43k mostly small files) and `lib` (the Rust toolchain's lib/, large
# binaries). --scale N makes N copies of each (to show memory stays flat).
# --quick uses small datasets (the smoke version the test suite runs).
# --files "N M..." measures generated trees of N, M... small unique text
# files instead (0-4 KiB, 1000 to a directory, the same tree for a given N):
# time and peak RSS per phase, how each grows from one size to the next,
# and the file system's floor for the tree (one process per core doing
# nothing but read every file, then create and write it afresh: what no
# backup or restore of it can beat on this machine).
# Every tool gets a fresh copy of the dataset and a fresh bucket; caches are
# dropped (when root) and the inputs read back before each timed step.
# Nothing is deleted between tools: on ext4 without a journal (this
# machine's root), creating a file skips every inode freed in the last 60 s
# (300 s while its inode table is dirty) with one lookup each, so a restore
# started soon after deleting a 43k-file tree spends seconds in the kernel.
# Trees are deleted once a dataset is done, then the next waits that out.
# Measured with /usr/bin/time: initial backup, backup with no change (the
# median of 3 runs, 1 with --quick: the shortest step, so the most exposed
# to the machine's noise; the issue's own peer figures are medians), backup
# after changing 1% of the files, full restore (checked with diff -r),
# restore of one ~10 MB file (bytes fetched counted by a proxy), peak RSS,
# and objects/bytes in the bucket. Prints one table with peer/vaultik ratios.
#
# The S3 server is s3s-fs (caps GET at ~140 MiB/s); --garage runs against
# Garage instead (`cargo install garage --version 2.5.0 --locked`, ~12 min).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export PATH="$HOME/.cargo/bin:$PATH"

RUSTIC=0 GARAGE=0 SCALE=1 QUICK=0 DATASETS="share lib" NOCHANGE_RUNS=3 FILES=
while [ $# -gt 0 ]; do
  case "$1" in
    --rustic) RUSTIC=1 ;;
    --garage) GARAGE=1 ;;
    --scale) SCALE="$2"; shift ;;
    --quick) QUICK=1; NOCHANGE_RUNS=1 ;;
    --datasets) DATASETS="$2"; shift ;;
    --files) FILES="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "$FILES" ]; then
  DATASETS=""
  for n in $FILES; do DATASETS="$DATASETS files$n"; done
fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need restic; then
  echo "installing restic (Debian package)" >&2
  apt-get update -qq && apt-get install -y -qq restic >/dev/null
fi
if [ "$RUSTIC" = 1 ] && ! need rustic; then
  cargo install rustic-rs --locked
fi
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
need s3s-fs || cargo install s3s-fs --version 0.14.1 --features binary --locked
if [ -n "${VAULTIK_BIN:-}" ]; then
  VAULTIK="$VAULTIK_BIN"           # the smoke test passes its own build
else
  cargo build --release --locked -q
  VAULTIK="$ROOT/target/release/vaultik"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/vaultik-bench.XXXXXX")"
SERVER_PID=""
PROXY_PID=""
cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ACCESS=bench-access SECRET=bench-secret-key-123
export AWS_ACCESS_KEY_ID=$ACCESS AWS_SECRET_ACCESS_KEY=$SECRET

# --- the S3 server -----------------------------------------------------------
if [ "$GARAGE" = 1 ]; then
  need garage || cargo install garage --version 2.5.0 --locked
  mkdir -p "$WORK/garage/meta" "$WORK/garage/data"
  cat > "$WORK/garage.toml" <<EOF
metadata_dir = "$WORK/garage/meta"
data_dir = "$WORK/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:39011"
rpc_public_addr = "127.0.0.1:39011"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:39010"
root_domain = ".s3.garage.localhost"
EOF
  garage -c "$WORK/garage.toml" server > "$WORK/garage.log" 2>&1 &
  SERVER_PID=$!
  sleep 2
  G="garage -c $WORK/garage.toml"
  NODE=$($G status 2>/dev/null | awk '/127.0.0.1/ {print $1; exit}')
  $G layout assign -z dc1 -c 10G "$NODE" >/dev/null
  $G layout apply --version 1 >/dev/null
  KEYINFO=$($G key create bench-key)
  ACCESS=$(echo "$KEYINFO" | awk '/Key ID/ {print $NF}')
  SECRET=$(echo "$KEYINFO" | awk '/Secret key/ {print $NF}')
  export AWS_ACCESS_KEY_ID=$ACCESS AWS_SECRET_ACCESS_KEY=$SECRET
  UPSTREAM=127.0.0.1:39010 REGION=garage
  make_bucket() { $G bucket create "$1" >/dev/null; $G bucket allow --read --write --owner "$1" --key bench-key >/dev/null; }
  SERVER_NAME="Garage 2.5.0"
else
  mkdir -p "$WORK/s3"
  RUST_LOG=info s3s-fs --host 127.0.0.1 --port 0 --access-key "$ACCESS" --secret-key "$SECRET" \
    "$WORK/s3" > "$WORK/s3.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    PORT=$(sed -n 's#.*http://127\.0\.0\.1:\([0-9][0-9]*\).*#\1#p' "$WORK/s3.log" | head -1)
    [ -n "$PORT" ] && break
    sleep 0.1
  done
  UPSTREAM=127.0.0.1:$PORT REGION=us-east-1
  make_bucket() { mkdir -p "$WORK/s3/$1"; }
  SERVER_NAME="s3s-fs 0.14.1"
fi

# A byte-counting proxy in front of the server, for "bytes fetched".
cat > "$WORK/proxy.py" <<'EOF'
import socket, sys, threading
up_host, up_port = sys.argv[1].split(":"); up_port = int(up_port)
count_file = sys.argv[2]
lock = threading.Lock(); total = [0]
def pipe(src, dst, counted):
    try:
        while True:
            b = src.recv(65536)
            if not b: break
            if counted:
                with lock:
                    total[0] += len(b)
                    open(count_file, "w").write(str(total[0]))
            dst.sendall(b)
    except OSError: pass
    finally:
        try: dst.shutdown(socket.SHUT_WR)
        except OSError: pass
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(64)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    u = socket.create_connection((up_host, up_port))
    threading.Thread(target=pipe, args=(c, u, False), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c, True), daemon=True).start()
EOF
echo 0 > "$WORK/fetched"
python3 "$WORK/proxy.py" "$UPSTREAM" "$WORK/fetched" > "$WORK/proxy.port" &
PROXY_PID=$!
for _ in $(seq 50); do [ -s "$WORK/proxy.port" ] && break; sleep 0.1; done
# Only the one-file restores go through the proxy (a Python thread copying
# bytes would cap the other steps, for every tool alike).
PROXY="http://127.0.0.1:$(cat "$WORK/proxy.port")"
ENDPOINT="http://$UPSTREAM"

# --- datasets --------------------------------------------------------------
SYSROOT_LIB="$(rustc --print sysroot)/lib"
# N small unique text files, 1000 to a directory: the same tree for a given N.
make_files() {  # dir n
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
x = 0x9E3779B97F4A7C15
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:05d}")
    if i % 1000 == 0:
        os.makedirs(d)
    x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
    size = (x >> 33) % 4097
    line = f"{i:08d} {x:016x} a small unique text file\n".encode()
    with open(os.path.join(d, f"f{i % 1000:03d}.txt"), "wb") as f:
        f.write((line * (size // len(line) + 1))[:size])
PY
}

# The file system's floor for a generated tree, nothing but the kernel's work,
# with as many processes as the machine has cores: every file opened, read
# and closed (warm; the least an initial backup does), and the same tree
# created and written afresh (the least a restore does). Appends
# "DS floor read WALL 0" and "DS floor create WALL 0" to the results.
floor() {  # ds dir
  local ds=$1 dir=$2 n t0 t1 out="$WORK/floor-$1" pids
  n=$(nproc)
  warm "$dir"
  cat > "$WORK/floor.py" <<'PY'
import os, sys
mode, src, dst, part, parts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
for i, d in enumerate(sorted(os.listdir(src))):
    if i % parts != part:
        continue
    sd = os.path.join(src, d)
    if mode == "create":
        os.mkdir(os.path.join(dst, d))
    for f in sorted(os.listdir(sd)):
        fd = os.open(os.path.join(sd, f), os.O_RDONLY)
        data = os.read(fd, 1 << 20)
        os.close(fd)
        if mode == "create":
            fd = os.open(os.path.join(dst, d, f), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            if data:
                os.pwrite(fd, data, 0)
            os.close(fd)
PY
  for mode in read create; do
    rm -rf "$out"; mkdir -p "$out"
    # (The read pass left the source in the cache; only its tree's writes
    # are flushed, so that they are not timed as part of the creation.)
    [ "$mode" = create ] && sync
    t0=$(date +%s.%N)
    pids=()
    for p in $(seq 0 $((n - 1))); do
      python3 "$WORK/floor.py" "$mode" "$dir" "$out" "$p" "$n" & pids+=($!)
    done
    wait "${pids[@]}"   # (not the servers, also children of this shell)
    t1=$(date +%s.%N)
    echo "$ds floor $mode $(python3 -c "print(f'{$t1 - $t0:.2f}')") 0" >> "$WORK/results"
  done
  # Left for the end of the dataset, with its other trees (see above).
}

make_dataset() {  # name dir
  local name=$1 dir=$2 src
  case "$name" in
    files*) make_files "$dir" "${name#files}"; return ;;
    share) src=/usr/share ;;
    lib) src=$SYSROOT_LIB ;;
  esac
  mkdir -p "$dir"
  if [ "$QUICK" = 1 ]; then
    # Smoke size: a small slice of the same kind of files.
    case "$name" in
      share) cp -a /usr/share/doc "$dir/copy0" 2>/dev/null || true ;;
      lib) mkdir -p "$dir/copy0"; find "$src" -maxdepth 3 -type f -size +1M | head -5 | xargs -I{} cp {} "$dir/copy0/" ;;
    esac
    return
  fi
  for i in $(seq 0 $((SCALE - 1))); do cp -a "$src" "$dir/copy$i" 2>/dev/null || true; done
}

drop_caches() {
  [ "$QUICK" = 1 ] && return 0   # the smoke run shares the machine with other tests
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}
warm() { find "$1" -type f -print0 | xargs -0 cat > /dev/null 2>&1 || true; }

# run LABEL cmd... : appends "LABEL wall maxrss" to $WORK/results.
timed() {
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" > "$WORK/cmd.out" 2> "$WORK/cmd.err" || {
    echo "FAILED: $label: $*" >&2; cat "$WORK/cmd.err" >&2; exit 1; }
  read -r wall rss < <(tail -1 "$WORK/time.out")
  echo "$label $wall $rss" >> "$WORK/results"
}

change_one_percent() {  # dir
  local n=0
  while IFS= read -r -d '' f; do
    n=$((n + 1))
    if [ $((n % 100)) = 0 ]; then printf 'changed %s\n' "$n" >> "$f"; fi
  done < <(find "$1" -type f -writable -print0 | sort -z)
}

pick_file() {  # dir: a regular file of about 10 MB (the closest)
  find "$1" -type f -size +1M -printf '%s %p\n' | awk '
    { d = $1 - 10485760; if (d < 0) d = -d; if (best == "" || d < bd) { bd = d; best = $0 } }
    END { sub(/^[0-9]+ /, "", best); print best }'
}

fetched_since() { echo $(( $(cat "$WORK/fetched") - $1 )); }

bucket_stats() {  # bucket -> "objects bytes"
  if [ "$GARAGE" = 1 ]; then
    local out
    out=$(garage -c "$WORK/garage.toml" bucket info "$1")
    echo "$(echo "$out" | awk '/Objects:/ {print $2; exit}') $(echo "$out" | awk '/Size:/ {print $2$3; exit}')"
  else
    local d="$WORK/s3/$1"
    echo "$(find "$d" -type f | wc -l) $(du -sb "$d" | cut -f1)"
  fi
}

TOOLS="vaultik restic"
[ "$RUSTIC" = 1 ] && TOOLS="$TOOLS rustic"

for ds in $DATASETS; do
  make_dataset "$ds" "$WORK/pristine-$ds"
  files=$(find "$WORK/pristine-$ds" -type f | wc -l)
  size=$(du -sh "$WORK/pristine-$ds" | cut -f1)
  echo "dataset $ds: $files files, $size" >> "$WORK/datasets"
  echo "$ds - bytes $(du -sb "$WORK/pristine-$ds" | cut -f1)" >> "$WORK/results"
  case "$ds" in files*) floor "$ds" "$WORK/pristine-$ds" ;; esac
  for tool in $TOOLS; do
    src="$WORK/src-$ds-$tool"
    rdir="$WORK/restore-$ds-$tool"   # full restore
    rdir1="$WORK/one-$ds-$tool"      # one-file restore
    cp -a "$WORK/pristine-$ds" "$src"
    bucket="b-$tool-$ds"
    make_bucket "$bucket"
    st="$WORK/state-$tool-$ds"
    mkdir -p -m 700 "$st"   # it holds the index: vaultik wants it private
    case "$tool" in
      vaultik)
        "$VAULTIK" keygen --output "$st/key" > "$st/pub"
        cat > "$st/conf" <<EOF
age_recipient = $(cat "$st/pub")
index_path = $st/index.sqlite
hostname = bench
[s3]
endpoint = $ENDPOINT
bucket = $bucket
region = $REGION
[snapshot data]
path = $src
EOF
        export VAULTIK_PRIVATE_KEY="$(grep AGE-SECRET "$st/key")"
        backup="exec $VAULTIK --config $st/conf snapshot create --cron"
        restore_all="exec $VAULTIK --config $st/conf restore latest --target $rdir >/dev/null"
        restore_one="exec $VAULTIK --config $st/conf --endpoint $PROXY restore latest --target $rdir1 \"\$1\" >/dev/null"
        ;;
      restic|rustic)
        export RESTIC_REPOSITORY="s3:$ENDPOINT/$bucket" RESTIC_PASSWORD=bench-password
        export RUSTIC_REPOSITORY="opendal:s3" RUSTIC_PASSWORD=bench-password
        if [ "$tool" = restic ]; then
          restic init -q > /dev/null
          backup="exec restic backup -q $src >/dev/null"
          restore_all="exec restic restore -q latest --target $rdir >/dev/null"
          restore_one="RESTIC_REPOSITORY=s3:$PROXY/$bucket exec restic restore -q latest --target $rdir1 --include \"\$1\" >/dev/null"
        else
          cat > "$st/rustic.toml" <<EOF
[repository]
repository = "opendal:s3"
password = "bench-password"
[repository.options]
endpoint = "$ENDPOINT"
bucket = "$bucket"
region = "$REGION"
access_key_id = "$ACCESS"
secret_access_key = "$SECRET"
EOF
          sed "s#^endpoint = .*#endpoint = \"$PROXY\"#" "$st/rustic.toml" > "$st/rustic-proxy.toml"
          R="rustic -P $st/rustic"
          $R init > /dev/null 2>&1
          backup="exec $R backup $src >/dev/null 2>&1"
          restore_all="exec $R restore latest $rdir >/dev/null 2>&1"
          restore_one="mkdir -p $rdir1; exec rustic -P $st/rustic-proxy restore \"latest:\$1\" $rdir1/one >/dev/null 2>&1"
        fi
        ;;
    esac
    drop_caches; warm "$src"
    timed "$ds $tool initial" bash -c "$backup"
    # The shortest measurement, and the most exposed to the machine's
    # noise: the median of $NOCHANGE_RUNS runs, each from dropped caches.
    for i in $(seq "$NOCHANGE_RUNS"); do
      drop_caches; warm "$src"
      timed "$ds $tool nochange.$i" bash -c "$backup"
    done
    change_one_percent "$src"
    drop_caches; warm "$src"
    timed "$ds $tool change1" bash -c "$backup"
    read -r objects bytes < <(bucket_stats "$bucket")
    echo "$ds $tool objects $objects $bytes" >> "$WORK/results"
    drop_caches
    timed "$ds $tool restore" bash -c "$restore_all"
    restored="$rdir$src"
    [ -d "$restored" ] || restored="$rdir"
    diff -r --no-dereference "$src" "$restored" > /dev/null || { echo "RESTORE DIFFERS: $tool $ds" >&2; exit 1; }
    one=$(pick_file "$src")
    if [ -n "$one" ]; then
      before=$(cat "$WORK/fetched")
      drop_caches
      timed "$ds $tool one" bash -c "$restore_one" _ "$one"
      echo "$ds $tool fetched $(fetched_since "$before") $(stat -c %s "$one")" >> "$WORK/results"
    fi
  done
  rm -rf "$WORK/pristine-$ds" "$WORK/src-$ds-"* "$WORK/restore-$ds-"* "$WORK/one-$ds-"* "$WORK/floor-$ds"
  sync
  if [ "$QUICK" = 0 ] && [ "$ds" != "${DATASETS##* }" ]; then sleep 61; fi
done

# --- the machine's pipeline limit ----------------------------------------------
sha=$(python3 -c '
import hashlib, time
b = bytes(256 << 20); t = time.perf_counter(); hashlib.sha256(b).digest()
print(int(256 / (time.perf_counter() - t)))')
zst=$(find /usr/share/doc -type f -print0 2>/dev/null | head -z -n 3000 | xargs -0 cat 2>/dev/null | head -c 64000000 > "$WORK/sample"; \
      zstd -b3 -i1 "$WORK/sample" 2>&1 | tr '\r' '\n' | sed -n 's/.*), *\([0-9.]*\) MB\/s.*/\1/p' | tail -1)
limit=$(python3 -c "print(int(2 / (1/$sha + 1/${zst:-390})))")

# --- the table -----------------------------------------------------------------
python3 - "$WORK/results" "$WORK/datasets" "$SERVER_NAME" "$sha" "${zst:-?}" "$limit" "$TOOLS" "$SCALE" "$(nproc)" <<'EOF'
import sys, collections
res, dsfile, server, sha, zst, limit, tools, scale, nproc = sys.argv[1:10]
tools = tools.split()
t = collections.defaultdict(dict)
runs = collections.defaultdict(list)
for line in open(res):
    p = line.split()
    ds, tool, what = p[0], p[1], p[2]
    if "." in what:  # one of several runs of a measurement: median wall, max RSS
        runs[(ds, tool, what.split(".")[0])].append((float(p[3]), int(p[4])))
        continue
    t[(ds, tool)][what] = p[3:]
for (ds, tool, what), rs in runs.items():
    walls = sorted(w for w, _ in rs)
    t[(ds, tool)][what] = [str(walls[len(walls) // 2]), str(max(m for _, m in rs))]
    t[(ds, tool)][what + " runs"] = walls
print(f"server: {server}; machine pipeline limit (2 cores x SHA-256 {sha} MB/s + zstd-3 {zst} MB/s): {limit} MB/s")
for l in open(dsfile): print(l.strip())
cols = [("initial", "initial backup"), ("nochange", "no change"), ("change1", "1% change"),
        ("restore", "full restore"), ("one", "one ~10MB file")]
print()
print(f"| dataset | tool | " + " | ".join(c[1] for c in cols) + " | peak RSS | fetched for one file | objects | bytes |")
print("|---" * (len(cols) + 6) + "|")
for (ds, tool), r in sorted(((k, v) for k, v in t.items() if k[1] in tools),
                            key=lambda kv: (kv[0][0], tools.index(kv[0][1]))):
    cells = [f"{float(r[c][0]):.2f} s" if c in r else "-" for c, _ in cols]
    rss = max(int(r[c][1]) for c, _ in cols if c in r) // 1024
    f = r.get("fetched", ["0", "0"])
    o = r.get("objects", ["-", "-"])
    print(f"| {ds} | {tool} | " + " | ".join(cells) + f" | {rss} MB | {int(f[0])/1e6:.1f} MB of a {int(f[1])/1e6:.1f} MB file | {o[0]} | {o[1]} |")
print()
for (ds, tool), r in sorted(t.items()):
    if "nochange runs" in r and len(r["nochange runs"]) > 1:
        print(f"no change, {ds} {tool}: median of " + ", ".join(f"{w:.2f}" for w in r["nochange runs"]) + " s")
print()
print("ratios peer/vaultik (higher is better for vaultik):")
for ds in sorted({k[0] for k in t}):
    v = t.get((ds, "vaultik"))
    for tool in tools[1:]:
        p = t.get((ds, tool))
        if not v or not p: continue
        parts = []
        for c, name in cols:
            if c in v and c in p and float(v[c][0]) > 0:
                parts.append(f"{name} {float(p[c][0]) / float(v[c][0]):.1f}x")
        rv = max(int(v[c][1]) for c, _ in cols if c in v)
        rp = max(int(p[c][1]) for c, _ in cols if c in p)
        parts.append(f"peak RSS {rp / rv:.1f}x")
        print(f"  {ds} {tool}/vaultik: " + ", ".join(parts))
# Generated trees: peak RSS per phase, and growth from one size to the next.
fsets = sorted((ds for ds in {k[0] for k in t} if ds.startswith("files")), key=lambda d: int(d[5:]))
phases = [("initial", "initial"), ("nochange", "no change"), ("restore", "restore")]
if fsets:
    print()
    print("| files | tool | " + " | ".join(f"{n} s / peak RSS" for _, n in phases) + " |")
    print("|---" * (len(phases) + 2) + "|")
    for ds in fsets:
        for tool in tools:
            r = t.get((ds, tool), {})
            cells = [f"{float(r[c][0]):.2f} s / {int(r[c][1]) // 1024} MB" if c in r else "-" for c, _ in phases]
            print(f"| {int(ds[5:]):,} | {tool} | " + " | ".join(cells) + " |")
    for a, b in zip(fsets, fsets[1:]):
        k = int(b[5:]) / int(a[5:])
        print()
        print(f"growth from {int(a[5:]):,} to {int(b[5:]):,} files ({k:.0f}x the files):")
        for tool in tools:
            ra, rb = t.get((a, tool), {}), t.get((b, tool), {})
            parts = [f"{n} {float(rb[c][0]) / max(float(ra[c][0]), 0.01):.1f}x time, "
                     f"{int(rb[c][1]) / max(int(ra[c][1]), 1):.1f}x RSS"
                     for c, n in phases if c in ra and c in rb]
            print(f"  {tool}: " + "; ".join(parts))
    print()
    print(f"the file system's floor ({nproc} Python processes doing nothing but open, read, create, write, close; their start-up included):")
    for ds in fsets:
        fl = t.get((ds, "floor"), {})
        if "read" in fl and "create" in fl:
            line = (f"  {int(ds[5:]):,} files: read every file {float(fl['read'][0]):.2f} s "
                    f"(the least an initial backup takes), create and write every file "
                    f"{float(fl['create'][0]):.2f} s (the least a restore takes)")
            p = t.get((ds, tools[1]), {}) if len(tools) > 1 else {}
            if "restore" in p:
                line += f"; {tools[1]}'s restore / 3 = {float(p['restore'][0]) / 3:.2f} s"
            print(line)
print()
for ds in sorted({k[0] for k in t}):
    v, size = t.get((ds, "vaultik")), t.get((ds, "-"), {}).get("bytes")
    if v and size and "initial" in v:
        mbs = int(size[0]) / 1e6 / float(v["initial"][0])
        print(f"vaultik initial backup of {ds}: {mbs:.0f} MB/s, {100 * mbs / int(limit):.0f}% of the pipeline limit"
              + (f" (but the {scale} copies are deduplicated: only one is compressed)" if scale != "1" else ""))
EOF
