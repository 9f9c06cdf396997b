#!/usr/bin/env bash
# Four validators on this machine, by hand: keys, the consortium's CA, member certificates
# and one config per validator (docs/ledger.md, Consensus), then each started with
# gridgate-node. On real machines each member runs only its own part: its keygen, its
# config (deploy/validator.toml) and its gridgate-node.
#
#   deploy/consortium/local.sh DIR [CUT_INTERVAL]     # e.g. /tmp/consortium 1s
#
# Stop them with Ctrl-C. Then: gridgate ledger cuts --config DIR/v0/gridgate.toml
set -euo pipefail
dir=${1:?usage: local.sh DIR [CUT_INTERVAL]}
interval=${2:-1s}
bin=${GRIDGATE_BIN:-target/debug}
mkdir -p "$dir"
"$bin/gridgate" keygen --out "$dir/consortium" --pki --id consortium >/dev/null
for i in 0 1 2 3; do
    "$bin/gridgate" keygen --out "$dir/v$i" >/dev/null
    [ -f "$dir/v$i/member.pem" ] || "$bin/gridgate" ledger member-cert --pki "$dir/consortium/pki" \
        --public-key "$dir/v$i/identity.pub" --id "v$i" --out "$dir/v$i/member.pem"
done
members=""
for i in 0 1 2 3; do
    members+="  { id = \"v$i\", role = \"validator\", public_key = \"$dir/v$i/identity.pub\", endpoint = \"https://localhost:$((7440 + i))\", consensus = \"127.0.0.1:$((7450 + i))\" },
"
done
for i in 0 1 2 3; do
    cat > "$dir/v$i/gridgate.toml" <<TOML
[gateway]
id = "v$i"
data_dir = "$dir/v$i/data"
identity = "$dir/v$i/identity.key"

[grpc]
listen = "127.0.0.1:$((7440 + i))"
cert_file = "$dir/consortium/pki/server.pem"
key_file = "$dir/consortium/pki/server.key"
client_ca_file = "$dir/consortium/pki/ca.pem"

[ledger]
role = "validator"
ca_file = "$dir/consortium/pki/ca.pem"
cert_file = "$dir/v$i/member.pem"
key_file = "$dir/v$i/identity.key"
members = [
$members]

[ledger.consensus]
listen = "127.0.0.1:$((7450 + i))"
cut_interval = "$interval"
TOML
done
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 0 1 2 3; do
    "$bin/gridgate-node" --config "$dir/v$i/gridgate.toml" 2>"$dir/v$i/node.log" &
    pids+=($!)
done
echo "4 validators running (logs: $dir/v*/node.log); Ctrl-C stops them"
wait
