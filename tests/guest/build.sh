#!/bin/sh
# Builds the test desktop: a tiny BIOS-bootable disk from Debian packages
# only (linux-image-amd64, busybox-static, syslinux, mtools, qemu-utils).
#
#   tests/guest/build.sh OUT.qcow2 [CONTENT]
#
# Layout of the 64 MiB disk (no partition table: syslinux boots the FAT
# volume at sector 0, as on a "superfloppy"):
#   0 .. 40 MiB   FAT16: syslinux, the kernel, a busybox initramfs
#   40 MiB        one sector of "course content" (what a level 1 changes)
#   48 MiB        one sector the guest writes at every boot (the marker)
# The guest prints VOI-CONTENT, VOI-MARKER and VOI-READY on its serial
# console, writes a new marker, syncs, and powers off on the ACPI power
# button (QMP system_powerdown). Content containing "+reboot" or
# "+poweroff" makes it do that by itself 5 s after VOI-READY, as a student
# restarting or shutting down the desktop from inside would.
set -eu
out=$1
content=${2:-course v1}
kver=$(ls /lib/modules | sort -V | tail -n1)
kernel=/boot/vmlinuz-$kver
[ -r "$kernel" ] || { echo "no kernel at $kernel (apt-get install linux-image-amd64)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The initramfs: busybox, the modules for a virtio or SATA disk and the
# power button, and /init.
root=$work/root
mkdir -p "$root/bin" "$root/lib/mod" "$root/proc" "$root/sys" "$root/dev"
cp /bin/busybox "$root/bin/busybox"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
         scsi_common scsi_mod libata libahci ahci crc64 crc64-rocksoft crct10dif_common crc-t10dif t10-pi sd_mod \
         evdev button; do
  f=$(find "/lib/modules/$kver/kernel" -name "$m.ko" | head -n1)
  [ -n "$f" ] && cp "$f" "$root/lib/mod/$m.ko"
done
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
# Ctrl-Alt-Del (the kernel sends init SIGINT): the student restarts the
# desktop from inside.
trap 'echo "VOI-CTRL-ALT-DEL"; sync; reboot -f' INT
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
         scsi_common scsi_mod libata libahci ahci crc64 crc64-rocksoft crct10dif_common crc-t10dif t10-pi sd_mod \
         evdev button; do
  [ -f /lib/mod/$m.ko ] && { insmod /lib/mod/$m.ko || echo "VOI-INSMOD-FAIL $m"; }
done
disk=
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  for d in /dev/vda /dev/sda; do [ -b $d ] && disk=$d; done
  [ -n "$disk" ] && break
  sleep 0.5
done
echo "VOI-DISK: ${disk:-none}"
content=$(dd if=$disk bs=512 skip=81920 count=1 2>/dev/null | tr -d '\000')
echo "VOI-CONTENT: $content"
echo "VOI-MARKER: $(dd if=$disk bs=512 skip=98304 count=1 2>/dev/null | tr -d '\000')"
stamp="written at uptime $(cut -d' ' -f1 /proc/uptime) id $(cat /proc/sys/kernel/random/uuid)"
printf '%s' "$stamp" | dd of=$disk bs=512 seek=98304 count=1 conv=sync,notrunc 2>/dev/null
sync
echo "VOI-WROTE: $stamp"
echo "VOI-READY"
case "$content" in
  *+reboot*) sleep 5; echo "VOI-SELF-REBOOT"; sync; reboot -f ;;
  *+poweroff*) sleep 5; echo "VOI-SELF-POWEROFF"; sync; poweroff -f ;;
esac
# The power button: wait for its input device, then for one event.
ev=
for i in $(seq 1 40); do
  ev=$(awk '/^N: Name="Power Button"/{f=1} f&&/^H: Handlers/{for(i=1;i<=NF;i++) if($i ~ /^event/) {print $i; exit}}' /proc/bus/input/devices)
  [ -n "$ev" ] && break
  sleep 0.25
done
echo "VOI-BUTTON: ${ev:-none}"
# In the background, so that a trapped signal (Ctrl-Alt-Del) interrupts
# the wait and its trap runs at once.
if [ -n "$ev" ]; then
  dd if=/dev/input/$ev bs=24 count=1 >/dev/null 2>&1 &
else
  sleep 2147483647 &
fi
wait $!
echo "VOI-POWERDOWN"
sync
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/initrd.gz"

# The FAT volume with syslinux.
fat=$work/fat.img
truncate -s 40M "$fat"
mformat -i "$fat" -v VOIGUEST -t 40 -h 64 -s 32 ::
cat > "$work/syslinux.cfg" <<'CFG'
DEFAULT voi
PROMPT 0
TIMEOUT 0
LABEL voi
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0,115200 quiet panic=-1 rdinit=/init
CFG
mcopy -i "$fat" "$kernel" ::/vmlinuz
mcopy -i "$fat" "$work/initrd.gz" ::/initrd.gz
mcopy -i "$fat" "$work/syslinux.cfg" ::/syslinux.cfg
mcopy -i "$fat" /usr/lib/syslinux/modules/bios/ldlinux.c32 ::/ldlinux.c32
syslinux --install "$fat"

raw=$work/disk.raw
truncate -s 64M "$raw"
dd if="$fat" of="$raw" conv=notrunc status=none
printf '%s' "$content" | dd of="$raw" bs=512 seek=81920 conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 "$raw" "$out"
