#!/usr/bin/env bash
# Merge benchmark: the agent's journaled merge of a 512 MiB diff into a 2 GiB
# base, against bare `qemu-img commit` on identical copies of the same files.
# Runs alternate (agent, bare, agent, bare, ...) so machine noise hits both.
#   benches/merge.sh [runs]      (default 3; needs ~8 GB free in $TMPDIR)
set -euo pipefail
RUNS=${1:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin voi-agent
BIN=$PWD/target/release/voi-agent
W=$(mktemp -d "${TMPDIR:-/tmp}/voi-merge-bench.XXXX")
trap 'rm -rf "$W"' EXIT
U=91f9d1ba-cb4a-41ba-971a-618f9e306571
P=$W/pristine; mkdir -p "$P"
qemu-img create -q -f qcow2 "$P/voi_0_$U" 2G
for off in 0 512M 1G 1536M; do qemu-io -f qcow2 -c "write -P 0x10 $off 512M" "$P/voi_0_$U" >/dev/null; done
qemu-img create -q -f qcow2 -b "voi_0_$U" -F qcow2 "$P/voi_1_$U"
qemu-io -f qcow2 -c "write -P 0x11 512M 512M" "$P/voi_1_$U" >/dev/null
qemu-img create -q -f qcow2 -b "voi_1_$U" -F qcow2 "$P/voi_4_$U"
fresh() { rm -rf "$W/run"; mkdir -p "$W/run/data"; cp --sparse=always -r "$P" "$W/run/data/disks"; sync; }
printf 'server_ip = "127.0.0.1"\nmac = "AA:00:00:00:00:01"\ndata_dir = "%s"\ndisk_margin_mb = 0\n' "$W/run/data" > "$W/agent.toml"
now() { date +%s.%N; }
agent=(); bare=()
for i in $(seq "$RUNS"); do
  fresh; t0=$(now); "$BIN" --config "$W/agent.toml" disk merge "voi_1_$U" >/dev/null; t1=$(now)
  agent+=("$(echo "$t1 - $t0" | bc)")
  qemu-img check -q "$W/run/data/disks/voi_4_$U"
  fresh; t0=$(now); qemu-img commit -q -f qcow2 "$W/run/data/disks/voi_1_$U"; sync; t1=$(now)
  bare+=("$(echo "$t1 - $t0" | bc)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ma=$(median "${agent[@]}"); mb=$(median "${bare[@]}")
echo "agent merge (commit -d, rebase, unlink, journal fsyncs): ${agent[*]} s  median $ma s"
echo "bare qemu-img commit (+ sync):                          ${bare[*]} s  median $mb s"
echo "ratio agent/bare: $(echo "scale=2; $ma / $mb" | bc)"
