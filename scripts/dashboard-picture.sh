#!/bin/bash
# Renders docs/grafana/dashboard-run.png from a real run: voi-server and four
# voi-agent processes on loopback, a 96 MiB layer sent to all four, commands,
# one terminal cut off. Both programs' /metrics are scraped once a second
# (the server's with a read-only named token, as a Prometheus would) and the
# series the dashboard shows are plotted with gnuplot: no Grafana package is
# in Debian's archive, so the picture is a plot of the scraped series, panel
# for panel with docs/grafana/voi-dashboard.json.
#
# Everything stays on 127.0.0.1. Needs gnuplot (Debian: gnuplot-nox), curl,
# qemu-img. Usage: scripts/dashboard-picture.sh [OUT.png]   (BIN=target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/grafana/dashboard-run.png}
BIN=${BIN:-target/debug}
for tool in gnuplot curl qemu-img; do
	command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ -x "$BIN/voi-server" ] && [ -x "$BIN/voi-agent" ] || cargo build --bins
D=$(mktemp -d /tmp/voi-dashboard.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$D"
}
trap cleanup EXIT

port() { # a free TCP port on loopback
	while :; do
		p=$((20000 + RANDOM % 30000))
		ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}
TERM_PORT=$(port); API_PORT=$(port); TRACKER_PORT=$(port)
TOKEN=dashboard-scraper-token-0001
DISK=7d9e0f1a-2b3c-4d5e-8f6a-7b8c9d0e1f2a
GROUP=3f1c2b9e-5a8d-4e7f-9b6a-1c2d3e4f5a6b
mkdir -p "$D/s/images" "$D/scrape"
head -c 96M /dev/urandom > "$D/base.raw"
qemu-img convert -q -f raw -O qcow2 "$D/base.raw" "$D/s/images/voi_0_$DISK"
rm "$D/base.raw"
cat > "$D/server.toml" <<EOF
listen = "127.0.0.1:$TERM_PORT"
api_listen = "127.0.0.1:$API_PORT"
tracker_listen = "127.0.0.1:$TRACKER_PORT"
bt_listen_port = 0
bt_upload_limit = 3145728
heartbeat_secs = 2
data_dir = "$D/s"
[[api_tokens]]
name = "prometheus"
token = "$TOKEN"
read_only = true
EOF
"$BIN/voi-server" run --config "$D/server.toml" > "$D/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/readyz" >/dev/null && break; sleep 0.2; done
export VOI_API="http://127.0.0.1:$API_PORT" VOI_API_TOKEN
VOI_API_TOKEN=$(cat "$D/s/api-token")

MACS=() AGENT_PORTS=()
for i in 1 2 3 4; do
	mac=52:54:00:64:00:0$i
	mp=$(port)
	MACS+=("$mac"); AGENT_PORTS+=("$mp")
	cat > "$D/agent$i.toml" <<EOF
server_ip = "127.0.0.1"
server_port = $TERM_PORT
mac = "$mac"
heartbeat_secs = 2
data_dir = "$D/a$i"
metrics_listen = "127.0.0.1:$mp"
[platform]
power = "recording"
boot = "recording"
hostname = "recording"
network = "recording"
[bt]
listen_port = 0
EOF
done

START=$(date +%s.%N)
scrape() { # one scrape of every exporter, each line prefixed with the time
	while :; do
		t=$(awk -v a="$(date +%s.%N)" -v b="$START" 'BEGIN { printf "%.1f", a - b }')
		curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$API_PORT/metrics" |
			sed "s/^/$t server /" >> "$D/scrape/all" || true
		for i in 0 1 2 3; do
			curl -sf "http://127.0.0.1:${AGENT_PORTS[$i]}/metrics" |
				sed "s/^/$t agent$((i + 1)) /" >> "$D/scrape/all" || true
		done
		sleep 1
	done
}
scrape &
PIDS+=($!)

AGENT_PIDS=()
for i in 1 2 3 4; do
	"$BIN/voi-agent" --config "$D/agent$i.toml" run > "$D/agent$i.log" 2>&1 &
	PIDS+=($!); AGENT_PIDS+=($!)
	sleep 1
done
sleep 3
cat > "$D/group.json" <<EOF
{"desktop_group_name": "Room 101", "desktop_group_uuid": "$GROUP", "default_desktop_group": true,
 "os_sys_type": 3, "disks": [{"uuid": "$DISK", "type": 0, "dif_level": 0, "prefix": "voi",
 "max_dif": 2, "real_size": "2097152", "reserve_size": "0"}]}
EOF
"$BIN/voi-server" ctl group-put "$D/group.json" > /dev/null
IFS=, ; ALL="${MACS[*]}"; unset IFS
"$BIN/voi-server" ctl download-desktop "$ALL" "$GROUP" --wait --wait-secs 240 > "$D/download.log" 2>&1 || {
	echo "the download did not finish; see $D" >&2; tail "$D/download.log" >&2; trap - EXIT; exit 1; }
sleep 3
for round in 1 2 3; do
	for mac in "${MACS[@]}"; do
		"$BIN/voi-server" ctl push "$mac" watermark_switch "{\"switch\": $((round % 2))}" > /dev/null || true
	done
	sleep 1
done
# A terminal loses power.
kill -9 "${AGENT_PIDS[3]}"
sleep 12

# The series, one file per panel: time and value(s).
awk -v dir="$D" '
function flush() {
	if (t == "") return
	printf "%s %d %d %d\n", t, on, off, pend + rej > dir "/terminals.dat"
	printf "%s %.0f\n", t, seeded > dir "/seeded.dat"
	printf "%s %d %d %d\n", t, tr["downloading"], tr["finished"], tr["failed"] > dir "/transfers.dat"
	printf "%s %d %d\n", t, peers, conns > dir "/tracker.dat"
	printf "%s %.0f\n", t, cmds > dir "/commands.dat"
	line = t; for (i = 1; i <= 4; i++) line = line " " (rate[i] + 0); print line > dir "/rate.dat"
	line = t; for (i = 1; i <= 4; i++) line = line " " (held[i] + 0); print line > dir "/held.dat"
	on = off = pend = rej = seeded = peers = conns = cmds = 0
	delete tr; delete rate; delete held
}
$3 ~ /^#/ { next }
$1 != t { flush(); t = $1 }
{
	who = $2; name = $3; value = $NF
	if (who == "server") {
		if (name ~ /^voi_server_terminals\{/) {
			if (name ~ /state="online"/) on += value
			else if (name ~ /state="offline"/) off += value
			else if (name ~ /state="pending"/) pend += value
			else rej += value
		}
		else if (name ~ /^voi_server_seeded_bytes_total/) seeded += value
		else if (name ~ /^voi_server_transfers\{/) {
			match(name, /state="[^"]*"/); st = substr(name, RSTART + 7, RLENGTH - 8)
			if (st ~ /^failed/) st = "failed"
			tr[st] += value
		}
		else if (name ~ /^voi_server_tracker_peers/) peers += value
		else if (name ~ /^voi_server_connections/) conns += value
		else if (name ~ /^voi_server_commands_total/) cmds += value
	} else {
		i = substr(who, 6) + 0
		if (name ~ /^voi_agent_transfer_download_bytes_per_second/) rate[i] += value
		else if (name ~ /^voi_agent_transfer_bytes\{/) held[i] += value
	}
}
END { flush() }' "$D/scrape/all"
# Counters into rates: bytes seeded per second, commands per second.
awk 'NR > 1 && $1 > pt { printf "%s %.1f\n", $1, ($2 - pv) / ($1 - pt) } { pt = $1; pv = $2 }' "$D/seeded.dat" > "$D/seeded_rate.dat"
awk 'NR > 1 && $1 > pt { printf "%s %.2f\n", $1, ($2 - pv) / ($1 - pt) } { pt = $1; pv = $2 }' "$D/commands.dat" > "$D/commands_rate.dat"

mkdir -p "$(dirname "$OUT")"
gnuplot <<EOF
set terminal pngcairo size 1600,900 font "DejaVu Sans,10" background rgb "#181b1f"
set output "$OUT"
set border lc rgb "#8e8e8e"; set key tc rgb "#d8d9da" top left; set grid lc rgb "#2c3235"
set xtics tc rgb "#c7d0d9"; set ytics tc rgb "#c7d0d9"; set xlabel "seconds" tc rgb "#c7d0d9"
set style fill transparent solid 0.25
set multiplot layout 2,3 title "VOI room: voi-server and 4 voi-agent exporters, scraped once a second (scripts/dashboard-picture.sh)" font ",13" tc rgb "#d8d9da"
set title "Terminals by state" tc rgb "#d8d9da"
plot "$D/terminals.dat" u 1:2 w steps lw 2 lc rgb "#73bf69" t "online", "" u 1:3 w steps lw 2 lc rgb "#f2495c" t "offline"
set title "Bytes seeded per second (server)"
set format y "%.1s %cB/s"
plot "$D/seeded_rate.dat" u 1:2 w lines lw 2 lc rgb "#5794f2" t "voi_0_…2a"
set title "Download rate per terminal"
plot for [i=2:5] "$D/rate.dat" u 1:i w lines lw 2 t sprintf("terminal %d", i-1)
set title "Bytes held per terminal"
set format y "%.0s %cB"
plot for [i=2:5] "$D/held.dat" u 1:i w lines lw 2 t sprintf("terminal %d", i-1)
set title "Transfers by state (server's view)"
set format y "%g"
plot "$D/transfers.dat" u 1:2 w steps lw 2 lc rgb "#fade2a" t "downloading", "" u 1:3 w steps lw 2 lc rgb "#73bf69" t "finished", "" u 1:4 w steps lw 2 lc rgb "#f2495c" t "failed"
set title "Tracker peers, connections, commands/s"
plot "$D/tracker.dat" u 1:2 w steps lw 2 t "tracker peers", "" u 1:3 w steps lw 2 t "terminal connections", "$D/commands_rate.dat" u 1:2 w impulses lw 3 t "commands per second"
unset multiplot
EOF
echo "wrote $OUT ($(wc -l < "$D/terminals.dat") scrapes)"
