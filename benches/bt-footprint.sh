#!/usr/bin/env bash
# The agent's memory while it downloads and then seeds a real layer.
#   benches/bt-footprint.sh [MiB]     (default 256; needs qemu-img)
# Starts a release voi-server with the layer in its image library and a
# release voi-agent, both on loopback in a temporary directory, and prints
# the agent's RSS and thread count while downloading and 5 s after the
# layer is in its chain (seeding).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-256}
cargo build --release --locked --bins -q
B=$PWD/target/release
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
U=91f9d1ba-cb4a-41ba-971a-618f9e306571
G=f15a1759-789e-4e17-a3e1-e723121e9314
P=$((40000 + RANDOM % 20000))
mkdir -p "$W/s/images" "$W/a"
head -c "${MIB}M" /dev/urandom >"$W/raw"
qemu-img convert -q -f raw -O qcow2 "$W/raw" "$W/s/images/voi_0_$U"
rm "$W/raw"
"$B/voi-server" run --listen 127.0.0.1:$P --api-listen 127.0.0.1:$((P + 1)) \
  --tracker-listen 127.0.0.1:$((P + 2)) --bt-listen-port 0 --data-dir "$W/s" >"$W/server.log" 2>&1 &
for _ in $(seq 50); do [ -s "$W/s/api-token" ] && break; sleep 0.2; done
export VOI_API=http://127.0.0.1:$((P + 1)) VOI_API_TOKEN=$(cat "$W/s/api-token")
echo "{\"desktop_group_uuid\":\"$G\",\"desktop_group_name\":\"g\",\"disks\":[{\"uuid\":\"$U\",\"type\":0,\"dif_level\":0,\"prefix\":\"voi\",\"max_dif\":0}]}" >"$W/g.json"
for _ in $(seq 50); do "$B/voi-server" ctl group-put "$W/g.json" >/dev/null 2>&1 && break; sleep 0.2; done
cat >"$W/agent.toml" <<T
server_ip = "127.0.0.1"
server_port = $P
mac = "AA:00:00:00:09:01"
data_dir = "$W/a"
[bt]
listen_port = 0
[platform]
power = "recording"
boot = "recording"
hostname = "recording"
network = "recording"
T
"$B/voi-agent" --config "$W/agent.toml" run >"$W/agent.log" 2>&1 &
AP=$!
rss() { grep -E 'VmRSS|Threads' /proc/$AP/status | tr -s ' \t\n' ' '; }
start=$(date +%s.%N)
for i in $(seq 3000); do
  grep -q "verified and in its chain" "$W/agent.log" && break
  [ $((i % 10)) = 0 ] && echo "downloading: $(rss)"
  sleep 0.1
done
grep -q "verified and in its chain" "$W/agent.log" || { echo "no download"; tail "$W/agent.log"; exit 1; }
echo "layer of $MIB MiB in its chain after $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
sleep 5
echo "seeding: $(rss)"
