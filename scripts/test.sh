#!/usr/bin/env bash
# Runs every check and test of the project on a fresh machine: installs what the tests
# need first, then formatting, lints, the build and the tests. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# The end-to-end tests need nothing outside cargo yet: simulators run in-process, serial
# lines are pseudo-terminals. Packages that later tests need (a broker, a browser) are
# installed here with apt-get.

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (the end-to-end tests run the real binary)"
cargo build --workspace --all-targets --locked

step "tests"
cargo test --workspace --locked -- --test-threads="${GRIDGATE_TEST_THREADS:-2}"

step "benchmarks compile"
cargo bench --workspace --locked --no-run

step "all green"
