#!/usr/bin/env bash
# The maintenance image: a busybox initramfs with the agent, booted over PXE.
#   image/build-initramfs.sh <out-dir> [voi-agent binary]
# Writes <out-dir>/vmlinuz (Debian's linux-image-amd64) and <out-dir>/initrd.gz.
# The agent may be static, or dynamic: then the libraries it needs are copied in.
# Needs: busybox-static, linux-image-amd64, cpio (apt-get install busybox-static linux-image-amd64 cpio).
set -euo pipefail
OUT=${1:?usage: build-initramfs.sh <out-dir> [voi-agent]}
AGENT=${2:-target/release/voi-agent}
HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=$(command -v busybox)
file -L "$BUSYBOX" | grep -q "statically linked" || { echo "busybox is not static: apt-get install busybox-static" >&2; exit 1; }
KVER=$(ls /lib/modules | sort -V | tail -n1)
KERNEL=/boot/vmlinuz-$KVER
[ -r "$KERNEL" ] || { echo "no kernel: apt-get install linux-image-amd64" >&2; exit 1; }
[ -x "$AGENT" ] || { echo "no agent at $AGENT: cargo build --release" >&2; exit 1; }

mkdir -p "$OUT"
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,usr/share/udhcpc,proc,sys,dev,run,tmp,etc/voi-agent,var/lib/voi-agent,lib/modules}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for app in $("$BUSYBOX" --list); do [ "$app" = busybox ] || ln -sf /bin/busybox "$ROOT/bin/$app"; done
install -m 0755 "$AGENT" "$ROOT/usr/bin/voi-agent"
# A dynamic agent brings its loader and libraries.
if ! file -L "$AGENT" | grep -q "statically linked"; then
  for lib in $(ldd "$AGENT" | grep -oE '/[^ ]+'); do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
  done
fi
# NIC drivers the maintenance kernel may need (QEMU's e1000, virtio-net).
for m in kernel/drivers/net/ethernet/intel/e1000/e1000.ko kernel/net/core/failover.ko \
         kernel/drivers/net/net_failover.ko kernel/drivers/net/virtio_net.ko; do
  [ -f "/lib/modules/$KVER/$m" ] && cp "/lib/modules/$KVER/$m" "$ROOT/lib/modules/"
done
install -m 0755 "$HERE/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/usr/share/udhcpc/default.script"
(cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet | gzip -9) > "$OUT/initrd.gz"
cp "$KERNEL" "$OUT/vmlinuz"
echo "$OUT/vmlinuz ($KVER), $OUT/initrd.gz ($(stat -c %s "$OUT/initrd.gz") bytes)"
