#!/usr/bin/env bash
# Builds the Debian package and checks it installs: the binary runs, the unit verifies, the
# service user exists, and nothing is enabled. Run by CI after the tests (it installs the
# package on the machine it runs on: meant for CI and throwaway machines).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo-deb"
if ! command -v cargo-deb >/dev/null 2>&1; then
    # A debug build of the tool, as for cargo-deny: 52 s to install here against 92 s
    # optimised, and the package still takes 22 s to make against 20 s.
    cargo install cargo-deb --locked --debug --version 3.8.0
fi

step "build the .deb (the dist profile: fat LTO, one codegen unit)"
cargo deb -p gridgate --locked --profile dist
deb=$(ls -t target/debian/gridgate_*.deb | head -1)
ls -l "$deb"

step "install it"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO dpkg -i "$deb"
/usr/bin/gridgate --version
# The production binary: built without the demo feature (the simulators are not in it).
if /usr/bin/gridgate demo --help >/dev/null 2>&1; then
    echo "the packaged binary carries the demo: build it without default features" >&2
    exit 1
fi
systemd-analyze verify /lib/systemd/system/gridgate.service
id gridgate
state=$(systemctl is-enabled gridgate 2>/dev/null || true)
if [ "$state" = "enabled" ]; then
    echo "the package must not enable the service" >&2
    exit 1
fi
for example in /usr/share/doc/gridgate/examples/*.toml /etc/gridgate/gridgate.toml.example; do
    /usr/bin/gridgate check-config --no-files --config "$example" >/dev/null
done
echo "installed; service is ${state:-not enabled}; the shipped examples check"
