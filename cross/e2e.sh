#!/usr/bin/env bash
# Agent <-> server end to end with given binaries, optionally through an
# emulator: a server, an agent in a separate process, one operator command.
#   cross/e2e.sh <dir with voi-agent and voi-server> [runner]
set -euo pipefail
BIN=$1
RUN=${2:-}
W=$(mktemp -d)
cleanup() { kill "${AP:-}" "${SP:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
# Port 0: the kernel picks free ports (a random pick can collide with an
# ephemeral port in use); the server prints the ones it got.
$RUN "$BIN/voi-server" run --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --tracker-listen 127.0.0.1:0 --bt-listen-port 0 --data-dir "$W/s" >"$W/server.log" 2>&1 &
SP=$!
for _ in $(seq 300); do grep -q '^voi-server listening on' "$W/server.log" && break; sleep 0.2; done
LINE=$(grep -m1 '^voi-server listening on' "$W/server.log") || { echo "the server did not start"; cat "$W/server.log"; exit 1; }
PORT=$(sed -E 's/^voi-server listening on [0-9.]+:([0-9]+) .*/\1/' <<<"$LINE")
API=$(sed -E 's/.*\(API http:\/\/[0-9.]+:([0-9]+)\)$/\1/' <<<"$LINE")
cat >"$W/agent.toml" <<TOML
server_ip = "127.0.0.1"
server_port = $PORT
mac = "AA:00:00:00:AA:64"
data_dir = "$W/a"
heartbeat_secs = 2
worker_threads = 2
[platform]
power = "recording"
boot = "recording"
hostname = "recording"
network = "recording"
TOML
for _ in $(seq 100); do [ -s "$W/s/api-token" ] && break; sleep 0.2; done
$RUN "$BIN/voi-agent" --config "$W/agent.toml" run >"$W/agent.log" 2>&1 &
AP=$!
ctl() { $RUN "$BIN/voi-server" ctl --json --api "http://127.0.0.1:$API" --data-dir "$W/s" "$@"; }
online() { local t; t=$(ctl terminals 2>/dev/null) && grep -q '"online": true' <<<"$t"; }
for _ in $(seq 150); do online && break; sleep 0.2; done
online || { echo "agent never came online"; cat "$W/agent.log" "$W/server.log"; exit 1; }
REPLY=$(ctl push AA:00:00:00:AA:64 update_name '{"name":"ARM-PC"}' --timeout 20)
echo "$REPLY" | grep -q '"msg": "Success"' || { echo "$REPLY"; exit 1; }
echo "$REPLY" | tr -d ' \n' | grep -q '"reply":{"code":0' || { echo "$REPLY"; exit 1; }
T=$(ctl terminal AA:00:00:00:AA:64); grep -q '"name": "ARM-PC"' <<<"$T"
echo "e2e ok: login, heartbeat, update_name round trip (${RUN:-native})"
