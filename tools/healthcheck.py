"""Probe a virtmesh process with grpc.health.v1 (the Kubernetes exec probes).

    healthcheck.py unix:/var/lib/virtmesh/run/compute.sock [--service NAME]
    healthcheck.py 127.0.0.1:16514 --tls-ca CA --tls-cert CERT --tls-key KEY

Exit status: 0 when the service reports SERVING (with ``--any-status``: when the
process answers at all, whatever its status), 1 when it answers another status,
2 for bad usage or unreadable TLS files, 3 when it cannot be reached. A UNIX
socket target is plaintext; a TCP target is TLS, with a client certificate when
``--tls-cert``/``--tls-key`` are given (the gateway requires one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.target.startswith("unix:"):
        return grpc.insecure_channel(args.target)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    key = Path(args.tls_key).read_bytes() if args.tls_key else None
    cert = Path(args.tls_cert).read_bytes() if args.tls_cert else None
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.target, grpc.ssl_channel_credentials(ca, key, cert), options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="unix:PATH (plaintext) or HOST:PORT (TLS)")
    parser.add_argument("--service", default="", help="service name; default: the process")
    parser.add_argument("--any-status", action="store_true",
                        help="healthy when the process answers at all (liveness)")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--tls-ca", help="CA of the server certificate (PEM)")
    parser.add_argument("--tls-cert", help="client certificate (PEM)")
    parser.add_argument("--tls-key", help="client key (PEM)")
    parser.add_argument("--server-name", help="name to verify in the server certificate")
    args = parser.parse_args(argv)
    try:
        channel = _channel(args)
    except (OSError, ValueError) as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return 2
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"healthcheck: {args.target} {args.service or '(process)'}: "
                  f"{error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 3
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target} {args.service or '(process)'}: {status}")
    return 0 if args.any_status or reply.status == SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
