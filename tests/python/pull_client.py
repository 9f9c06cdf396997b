#!/usr/bin/env python3
"""A master station written against gridgate's .proto files alone (no Rust types).

Generates Python stubs from proto/ with grpcio-tools, connects over mutual TLS, asks the
gateway who it is, pulls batches from its consumer's cursor, checks every Ed25519 signature
and the SHA-256 hash chain, acknowledges, and checks that the cursor moved.

A gateway keeps a batch only until every required consumer has it, so the chain a master
station sees need not start at batch 0. The last verified (seq, hash) is kept in STATE (a
JSON file): a later run checks its first batch's link against it. Without one, a chain that
starts mid-way is anchored at its first batch, whose signature is checked; a batch with
`dropped_before` > 0 says that the batches before it are gone (the gap is known), and the
chain is anchored there again.

usage: pull_client.py PROTO_DIR ENDPOINT CA CERT KEY CONSUMER COUNT [STATE]
"""
import hashlib
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def stubs(proto_dir):
    out = tempfile.mkdtemp()
    files = [os.path.join("gridgate", "v1", f) for f in ("batch.proto", "telemetry.proto", "admin.proto")]
    import grpc_tools
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    return (
        importlib.import_module("gridgate.v1.batch_pb2"),
        importlib.import_module("gridgate.v1.telemetry_pb2"),
        importlib.import_module("gridgate.v1.telemetry_pb2_grpc"),
        importlib.import_module("gridgate.v1.admin_pb2"),
        importlib.import_module("gridgate.v1.admin_pb2_grpc"),
    )


def main():
    proto_dir, endpoint, ca, cert, key, consumer, count = sys.argv[1:8]
    count = int(count)
    batch_pb2, tel_pb2, tel_grpc, admin_pb2, admin_grpc = stubs(proto_dir)
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    channel = grpc.secure_channel(endpoint, creds)
    admin = admin_grpc.AdminStub(channel)
    tel = tel_grpc.TelemetryStub(channel)

    ident = admin.GetIdentity(admin_pb2.GetIdentityRequest(), timeout=10)
    assert ident.caller_role == "master", ident
    key_ = Ed25519PublicKey.from_public_bytes(ident.public_key)

    # Where the chain stands: (seq, SHA-256 of its batch bytes) of the last verified batch.
    state_file = sys.argv[8] if len(sys.argv) > 8 else None
    last = None
    if state_file and os.path.exists(state_file):
        with open(state_file) as f:
            saved = json.load(f)
        last = (saved["seq"], bytes.fromhex(saved["hash"]))

    seqs = []
    readings = 0
    request = tel_pb2.PullBatchesRequest(consumer=consumer, from_cursor=True, max=count)
    for item in tel.PullBatches(request, timeout=20):
        signed = batch_pb2.SignedBatch.FromString(item.signed_batch)
        key_.verify(signed.signature, signed.batch)  # raises on a bad signature
        batch = batch_pb2.Batch.FromString(signed.batch)
        assert batch.seq == item.seq, (batch.seq, item.seq)
        assert batch.gateway_id == ident.gateway_id
        if last is not None and batch.seq <= last[0]:
            continue  # delivered before (at least once): already verified and stored
        if item.dropped_before > 0:
            print(f"note: {item.dropped_before} batch(es) before {batch.seq} are gone from the gateway; chain anchored at {batch.seq}")
        elif last is not None:
            assert batch.seq == last[0] + 1, f"batch {batch.seq} after {last[0]}"
            assert batch.prev_hash == last[1], f"chain broken at {batch.seq}"
        elif batch.seq == 0:
            assert batch.prev_hash == b"\0" * 32, "batch 0 does not start the chain"
        else:
            print(f"starting mid-chain at batch {batch.seq}: its signature verified; its link to {batch.seq - 1} was verified by whoever had {batch.seq - 1}")
        last = (batch.seq, hashlib.sha256(signed.batch).digest())
        seqs.append(batch.seq)
        readings += len(batch.readings)
    assert len(seqs) == count, seqs
    assert seqs == list(range(seqs[0], seqs[0] + count)), seqs

    ack = tel.Ack(tel_pb2.AckRequest(consumer=consumer, seq=seqs[-1]), timeout=10)
    assert ack.cursor == seqs[-1] + 1, ack
    status = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
    assert status.cursors[consumer] == seqs[-1] + 1, dict(status.cursors)
    if state_file:
        with open(state_file, "w") as f:
            json.dump({"seq": last[0], "hash": last[1].hex()}, f)
    print(f"python client: {len(seqs)} batches ({seqs[0]}..{seqs[-1]}), {readings} readings, signatures and chain OK, cursor {ack.cursor}")


if __name__ == "__main__":
    main()
