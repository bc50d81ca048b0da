"""The floor the gateway is measured against: the least a grpc.aio TLS proxy can do.

One generic handler forwards every unary call's bytes, unchanged, to one backend
(the compute service's UNIX socket) and hands back the response bytes. No
authentication beyond the mutual TLS handshake, no authorisation, metadata, logs,
metrics or audit: whatever the gateway costs above this is what it adds.

``python -m bench.bare_proxy --listen 127.0.0.1:PORT --pki DIR --target unix:PATH``
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc


class Forward(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = handler_call_details.method  # type: ignore[attr-defined]
        handler = self.handlers.get(path)
        if handler is None:
            call: Any = self.channel.unary_unary(path)

            async def forward(request: bytes, context: grpc.aio.ServicerContext) -> Any:
                return await call(request, timeout=context.time_remaining())

            handler = self.handlers[path] = grpc.unary_unary_rpc_method_handler(forward)
        return handler


async def serve(listen: str, pki: Path, target: str) -> None:
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
        (pki / "ca.crt").read_bytes(), require_client_auth=True)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Forward(grpc.aio.insecure_channel(target)),))
    server.add_secure_port(listen, credentials)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bare_proxy")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.pki, args.target))


if __name__ == "__main__":
    main()
