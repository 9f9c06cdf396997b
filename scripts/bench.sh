#!/usr/bin/env bash
# Runs every bench in one go and prints one table: each figure, the limit it is measured
# against in the same run, the ratio, the target, and how it compares with the last run of
# the same form recorded in BENCHMARKS.md (flagged when worse by more than the noise).
#
#   scripts/bench.sh [--quick] [--runs N] [--write] [--only NAME[,NAME...]]
#
#   --quick   small sizes in the dev profile: a smoke run that every bench still runs
#             (CI runs this after the tests; its figures say nothing about speed). It
#             relinks target/debug/gridgate without the tests' fail points: run
#             `cargo build --workspace` before the end-to-end tests again.
#   --runs N  each bench N times (default 1; 3 for figures to record): medians, and the
#             spread (max - min) / median as the noise
#   --write   append the table to BENCHMARKS.md as a dated section with the commit
#   --only    only these benches (ingest, polling, dr_latency, ledger, pull, consensus, market)
#
# Needs what the tests need (Mosquitto, the Python venv of scripts/test.sh for the ingest
# bench's paho publisher). The full form builds in the release profile first (about ten
# minutes from nothing here); the whole of it has not been timed yet.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
runs=1
write=0
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --runs) runs="$2"; shift ;;
        --write) write=1 ;;
        --only) only="$2"; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# name, package, arguments (full), arguments (quick)
benches=(
    "ingest|gridgate|1000000|20000"
    "polling|gridgate|20|3"
    "dr_latency|gridgate|40|5"
    "ledger|gridgate|100000|2000"
    "pull|gridgate|500|20"
    "consensus|gridgate-node|20 10000|4 500"
    "market|gridgate-ledger||--participants 1000"
)
profile=()
form="full"
if [ "$quick" = 1 ]; then
    # The dev profile: CI has built every target in it already.
    profile=(--profile dev)
    form="quick"
fi
[ -d target/pyenv/bin ] && export PATH="$PWD/target/pyenv/bin:$PATH"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
commit=$(git rev-parse --short HEAD)
[ -n "$(git status --porcelain --untracked-files=no)" ] && commit="$commit+changes"
started=$SECONDS
for spec in "${benches[@]}"; do
    IFS='|' read -r name package full small <<<"$spec"
    if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
    args=$full
    [ "$quick" = 1 ] && args=$small
    for run in $(seq 1 "$runs"); do
        printf '==> %s (%s, run %d of %d, at %dm%02ds)\n' "$name" "$form" "$run" "$runs" \
            $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)) >&2
        # shellcheck disable=SC2086 # $args is a list of words
        if ! cargo bench --locked -q "${profile[@]}" -p "$package" --bench "$name" -- $args \
            >"$out/$name.$run.txt" 2>"$out/$name.$run.err"; then
            cat "$out/$name.$run.txt" "$out/$name.$run.err" >&2
            echo "bench.sh: the $name bench failed" >&2
            exit 1
        fi
        grep -v '^result' "$out/$name.$run.txt" >&2 || true
        grep '^result' "$out/$name.$run.txt" | sed "s/^/$run\t/" >>"$out/results.tsv" || true
        if ! grep -q '^result' "$out/$name.$run.txt"; then
            echo "bench.sh: the $name bench printed no result line" >&2
            exit 1
        fi
    done
done

report=(python3 scripts/bench_report.py --form "$form" --runs "$runs" --commit "$commit"
    --history BENCHMARKS.md "$out/results.tsv")
[ "$write" = 1 ] && report+=(--write)
"${report[@]}"
