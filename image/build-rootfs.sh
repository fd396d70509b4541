#!/usr/bin/env bash
# The full terminal image's root directory: the agent, its units, its config.
# This is the part a terminal image build (debootstrap, mkosi, ...) copies in.
#   image/build-rootfs.sh <root-dir> [voi-agent binary]
set -euo pipefail
ROOT=${1:?usage: build-rootfs.sh <root-dir> [voi-agent]}
AGENT=${2:-target/release/voi-agent}
HERE=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$AGENT" ] || { echo "no agent at $AGENT" >&2; exit 1; }
install -D -m 0755 "$AGENT" "$ROOT/usr/bin/voi-agent"
install -D -m 0644 "$HERE/systemd/voi-agent.service" "$ROOT/usr/lib/systemd/system/voi-agent.service"
install -d "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sf /usr/lib/systemd/system/voi-agent.service "$ROOT/etc/systemd/system/multi-user.target.wants/voi-agent.service"
install -D -m 0644 "$HERE/systemd/voi-screen.service" "$ROOT/usr/lib/systemd/system/voi-screen.service"
ln -sf /usr/lib/systemd/system/voi-screen.service "$ROOT/etc/systemd/system/multi-user.target.wants/voi-screen.service"
install -D -m 0600 "$HERE/systemd/agent.toml" "$ROOT/etc/voi-agent/agent.toml"
install -d -m 0700 "$ROOT/var/lib/voi-agent"
# grub's stock 41_custom includes custom.cfg from the grub directory.
install -D -m 0644 "$HERE/boot/grub-voi.cfg" "$ROOT/boot/grub/custom.cfg"
install -D -m 0644 "$HERE/README.md" "$ROOT/usr/share/doc/voi-agent/README.md"
echo "terminal root in $ROOT"
