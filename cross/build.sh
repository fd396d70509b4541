#!/usr/bin/env bash
# Static ARM builds without Docker, from Debian's packages.
#   cross/build.sh aarch64            build voi-agent and voi-server for aarch64
#   cross/build.sh aarch64 --test     also run the protocol unit tests and the
#                                     agent<->server end-to-end test under qemu-aarch64-static
# Output: target/cross/aarch64-unknown-linux-gnu/release/{voi-agent,voi-server}
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-aarch64}
MODE=${2:-}
case "$ARCH" in
  aarch64) TARGET=aarch64-unknown-linux-gnu; DEB=arm64; GNU=aarch64-linux-gnu ;;
  *) echo "cross/build.sh: unsupported architecture $ARCH (supported: aarch64)" >&2; exit 2 ;;
esac

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
# cmake is not needed for the host build any more (vendor/qcow); it stays
# here for the cross build, where aws-lc-sys (under librqbit's sha1) may
# choose its cmake builder for a foreign target.
if ! dpkg -s "libstd-rust-web-dev:$DEB" >/dev/null 2>&1 || ! command -v "$GNU-gcc" >/dev/null || ! command -v qemu-$ARCH-static >/dev/null || ! command -v file >/dev/null || ! command -v cmake >/dev/null; then
  $SUDO dpkg --add-architecture "$DEB"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    rustc-web cargo-web "libstd-rust-web-dev:$DEB" "gcc-$GNU" "libc6-dev-$DEB-cross" qemu-user-static cmake file
fi

# Debian's toolchain, not rustup's: it is the one with the $DEB std library.
export CARGO=/usr/bin/cargo RUSTC=/usr/bin/rustc
V=${TARGET^^}; V=${V//-/_}
export "CARGO_TARGET_${V}_LINKER=$GNU-gcc"
export "CARGO_TARGET_${V}_RUSTFLAGS=-C target-feature=+crt-static"
export "CARGO_TARGET_${V}_RUNNER=qemu-$ARCH-static"
export "CC_${TARGET//-/_}=$GNU-gcc" "CXX_${TARGET//-/_}=$GNU-g++" "AR_${TARGET//-/_}=$GNU-ar"
export CARGO_TARGET_DIR=target/cross
# Few jobs: the machines that run this have two cores.
JOBS=${JOBS:-2}

"$CARGO" build --locked --release -j "$JOBS" --target "$TARGET" -p voi-agent --bins
OUT=target/cross/$TARGET/release
for b in voi-agent voi-server; do
  file "$OUT/$b" 2>/dev/null | grep -q "statically linked" || { echo "$b is not static" >&2; exit 1; }
  echo "$OUT/$b: $(stat -c %s "$OUT/$b") bytes"
done

if [ "$MODE" = "--test" ]; then
  # Protocol and self-upgrade unit tests (install layout, the current switch,
  # package signatures, version stamping), built for $ARCH and run through qemu-user.
  "$CARGO" test --locked --release -j "$JOBS" --target "$TARGET" -p voi-agent --lib -- protocol:: upgrade_package:: agent::upgrade:: --test-threads 2
  cross/e2e.sh "$OUT" "qemu-$ARCH-static"
fi
