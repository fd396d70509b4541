#!/usr/bin/env bash
# End-to-end boot test: QEMU (TCG) net-boots the maintenance image through
# its built-in TFTP and iPXE ROM with boot/maintenance.ipxe; the guest's agent
# logs in to a voi-server on the host's loopback (10.0.2.2 from the guest),
# heartbeats, and answers an operator command.
#   image/test-pxe-boot.sh        (installs qemu-system-x86, ipxe-qemu, busybox-static, linux-image-amd64, cpio if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
need=()
if ! command -v qemu-system-x86_64 >/dev/null; then
  # qemu-system-x86 depends on the qemu-utils of its own version, and a machine
  # may carry a newer qemu-utils from backports that no source still lists
  # (apt then answers "held broken packages"). Take qemu-utils at the version
  # of the qemu-system-x86 we are about to install, downgrading if need be.
  $SUDO apt-get update -qq
  sysver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  [ -n "$sysver" ] && [ "$sysver" != "(none)" ] || { echo "no qemu-system-x86 package is available"; exit 1; }
  need+=(qemu-system-x86 "qemu-utils=$sysver")
fi
[ -e /usr/lib/ipxe/qemu/efi-e1000.rom ] || need+=(ipxe-qemu)
{ command -v busybox >/dev/null && file -L "$(command -v busybox)" | grep -q static; } || need+=(busybox-static)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
command -v cpio >/dev/null || need+=(cpio)
command -v file >/dev/null || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --allow-downgrades "${need[@]}"
fi

cargo build --release --locked --bins
W=$(mktemp -d)
cleanup() { kill "${QP:-}" "${SP:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
image/build-initramfs.sh "$W/tftp" target/release/voi-agent
# Port 0: the kernel picks free ports (a random pick can collide with an
# ephemeral port in use); the server prints the ones it got.
target/release/voi-server run --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --tracker-listen 127.0.0.1:0 --data-dir "$W/server" >"$W/server.log" 2>&1 &
SP=$!
for _ in $(seq 300); do grep -q '^voi-server listening on' "$W/server.log" && break; sleep 0.2; done
LINE=$(grep -m1 '^voi-server listening on' "$W/server.log") || { echo "the server did not start"; cat "$W/server.log"; exit 1; }
PORT=$(sed -E 's/^voi-server listening on [0-9.]+:([0-9]+) .*/\1/' <<<"$LINE")
API=$(sed -E 's/.*\(API http:\/\/[0-9.]+:([0-9]+)\)$/\1/' <<<"$LINE")
sed "s/^isset \${server_port} || set server_port 50007$/set server_port $PORT/" boot/maintenance.ipxe > "$W/tftp/boot.ipxe"
grep -q "set server_port $PORT" "$W/tftp/boot.ipxe"
ctl() { target/release/voi-server ctl --json --api "http://127.0.0.1:$API" --data-dir "$W/server" "$@"; }

# NAT: the guest reaches us through QEMU's user network, so its socket comes
# from 127.0.0.1 while it reports 10.0.2.15. Give its MAC (QEMU's default) a
# configuration first, so the guest asks 9005 at login: it must not be told
# to move to 127.0.0.1, which would strand it (the checks below see it stay
# online).
GUEST_MAC=52:54:00:12:34:56
cat >"$W/seed.toml" <<TOML
server_ip = "127.0.0.1"
server_port = $PORT
mac = "$GUEST_MAC"
data_dir = "$W/seed"
[bt]
listen_port = 0
[platform]
power = "recording"
boot = "recording"
hostname = "recording"
network = "recording"
TOML
for _ in $(seq 100); do [ -s "$W/server/api-token" ] && break; sleep 0.2; done
target/release/voi-agent --config "$W/seed.toml" run >"$W/seed.log" 2>&1 &
SEED=$!
for _ in $(seq 100); do
  ctl terminal "$GUEST_MAC" 2>/dev/null | tr -d ' \n' | grep -q '"conf_version":0' && break
  sleep 0.2
done
kill "$SEED"; wait "$SEED" 2>/dev/null || true
ctl terminal "$GUEST_MAC" | tr -d ' \n' | grep -q '"conf_version":0' || { echo "could not give $GUEST_MAC a configuration"; cat "$W/seed.log"; exit 1; }

START=$(date +%s)
qemu-system-x86_64 -m 768 -smp 1 -display none -no-reboot \
  -netdev "user,id=n0,tftp=$W/tftp,bootfile=boot.ipxe" -device e1000,netdev=n0 \
  -boot n -serial "file:$W/console.log" -monitor none &
QP=$!

online=""
for _ in $(seq 600); do
  if T=$(ctl terminals 2>/dev/null) && tr -d ' \n' <<<"$T" | grep -q '"client_type":5,.*"online":true'; then online=yes; break; fi
  kill -0 "$QP" 2>/dev/null || break
  sleep 0.5
done
if [ -z "$online" ]; then
  echo "the maintenance terminal never came online; console:"; tail -n 60 "$W/console.log"; tail -n 20 "$W/server.log"; exit 1
fi
echo "maintenance terminal online $(( $(date +%s) - START )) s after QEMU started"
T=$(ctl terminals); MAC=$(tr -d ' \n' <<<"$T" | grep -oE '"mac":"[0-9A-F:]{17}"' | head -n1 | cut -d'"' -f4)
# A second heartbeat proves the session holds.
sleep 12
T=$(ctl terminal "$MAC"); tr -d ' \n' <<<"$T" | grep -q '"online":true'
REPLY=$(ctl push "$MAC" update_name '{"name":"MAINT-1"}' --timeout 30)
echo "$REPLY" | tr -d ' \n' | grep -q '"reply":{"code":0' || { echo "$REPLY"; exit 1; }
echo "pxe boot ok: $MAC logged in as client_type 5, heartbeats, update_name answered"
