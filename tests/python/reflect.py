#!/usr/bin/env python3
"""Lists a gateway's gRPC services through server reflection v1alpha, as grpcio-reflection's
client (and the tools built on it) ask, over mutual TLS.

usage: reflect.py ENDPOINT CA CERT KEY
"""
import sys

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main():
    endpoint, ca, cert, key = sys.argv[1:5]
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.secure_channel(endpoint, creds))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for reply in stub.ServerReflectionInfo(iter([request]), timeout=10):
        for service in reply.list_services_response.service:
            print(service.name)


if __name__ == "__main__":
    main()
