#!/usr/bin/env bash
# Release build of the gateway for an ARM Linux box with the distribution's cross toolchain,
# stripped, checked (ELF machine, size budget) and run once under qemu-user.
#
#   scripts/cross-build.sh aarch64     # in .ci/run
#   scripts/cross-build.sh armv7       # the slower job (hard float, e.g. i.MX6, AM335x)
#
# Installs what it needs first: the Rust target (rustup), the cross gcc (it links, and builds
# ring's C and assembly) and qemu-user (apt-get). The stripped binary is written to
# target/<triple>/dist/gridgate.stripped; the build fails if it is over the budget, so
# that the size cannot grow unnoticed (budgets and measured sizes are in BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-aarch64}"
case "$arch" in
    aarch64)
        triple=aarch64-unknown-linux-gnu
        gnu=aarch64-linux-gnu
        machine="ARM aarch64"
        qemu=qemu-aarch64
        libc=libc6-dev-arm64-cross
        budget_mib=20
        ;;
    armv7)
        triple=armv7-unknown-linux-gnueabihf
        gnu=arm-linux-gnueabihf
        machine="ARM, EABI5"
        qemu=qemu-arm
        libc=libc6-dev-armhf-cross
        budget_mib=20
        ;;
    *)
        echo "usage: $0 aarch64|armv7" >&2
        exit 2
        ;;
esac

step() { printf '\n==> %s\n' "$*"; }

step "$arch: toolchain"
if command -v rustup >/dev/null 2>&1; then
    rustup target add "$triple" >/dev/null
fi
need=""
command -v "$gnu-gcc" >/dev/null 2>&1 || need="$need gcc-$gnu"
# The target's C library headers are only a recommendation of the cross gcc, which
# apt-install.sh leaves out: without them ring's C does not compile.
[ -f "/usr/$gnu/include/stdio.h" ] || need="$need $libc"
command -v "$qemu" >/dev/null 2>&1 || need="$need qemu-user"
command -v file >/dev/null 2>&1 || need="$need file"
# shellcheck disable=SC2086 # $need is a list of package names
./scripts/apt-install.sh $need

step "$arch: dist build ($triple)"
upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
lower=$(echo "$triple" | tr '-' '_')
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
export "CC_${lower}=$gnu-gcc"
export "AR_${lower}=$gnu-ar"
# The production binary: without the demo and the simulators, in the dist profile (fat LTO,
# one codegen unit) that the size budget is set for.
cargo build --profile dist --locked -p gridgate --no-default-features --target "$triple"

bin="target/$triple/dist/gridgate"
out="$bin.stripped"
"$gnu-strip" -o "$out" "$bin"

step "$arch: checks"
file "$out"
file "$out" | grep -q "$machine" || { echo "$out is not an $machine binary" >&2; exit 1; }
bytes=$(stat -c %s "$out")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "gridgate $arch: $bytes bytes stripped ($mib MiB; budget $budget_mib MiB)"
if [ "$bytes" -gt $((budget_mib * 1048576)) ]; then
    echo "over the size budget: see BENCHMARKS.md (Binary sizes) before raising it" >&2
    exit 1
fi
# It runs: the command line and the config checker, under user-mode emulation.
QEMU_LD_PREFIX="/usr/$gnu" "$qemu" "$out" --version
QEMU_LD_PREFIX="/usr/$gnu" "$qemu" "$out" check-config --no-files --config deploy/example.toml >/dev/null
if QEMU_LD_PREFIX="/usr/$gnu" "$qemu" "$out" demo --help >/dev/null 2>&1; then
    echo "the production binary carries the demo: build it without default features" >&2
    exit 1
fi
echo "$arch binary runs (qemu-user): --version and check-config deploy/example.toml; no demo in it"
