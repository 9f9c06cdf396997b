#!/usr/bin/env python3
"""A master station written against gridgate's .proto files alone (no Rust types).

Generates Python stubs from proto/ with grpcio-tools, connects over mutual TLS, asks the
gateway who it is, pulls batches, checks every Ed25519 signature and the SHA-256 hash chain,
acknowledges, and checks that the cursor moved.

usage: pull_client.py PROTO_DIR ENDPOINT CA CERT KEY CONSUMER COUNT
"""
import hashlib
import importlib
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

    prev = b"\0" * 32
    seqs = []
    readings = 0
    for item in tel.PullBatches(tel_pb2.PullBatchesRequest(consumer=consumer, from_seq=0, max=count), timeout=20):
        signed = batch_pb2.SignedBatch.FromString(item.signed_batch)
        key_.verify(signed.signature, signed.batch)  # raises on a bad signature
        batch = batch_pb2.Batch.FromString(signed.batch)
        assert batch.seq == item.seq, (batch.seq, item.seq)
        assert batch.gateway_id == ident.gateway_id
        assert batch.prev_hash == prev, f"chain broken at {batch.seq}"
        prev = hashlib.sha256(signed.batch).digest()
        seqs.append(batch.seq)
        readings += len(batch.readings)
    assert seqs == list(range(count)), seqs

    ack = tel.Ack(tel_pb2.AckRequest(consumer=consumer, seq=seqs[-1]), timeout=10)
    assert ack.cursor == count, ack
    status = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
    assert status.cursors[consumer] == count, dict(status.cursors)
    print(f"python client: {len(seqs)} batches, {readings} readings, signatures and chain OK, cursor {ack.cursor}")


if __name__ == "__main__":
    main()
