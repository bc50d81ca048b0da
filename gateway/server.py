"""The gateway process: TLS listener, health, reflection and the forwarding proxy."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.activation import Activator
from gateway.config import GatewayConfig
from gateway.health import GatewayHealth
from gateway.proxy import Backends, ProxyHandler
from gateway.routes import method_paths, proxied_services, route_table
from services.common import metrics
from services.common.config import ConfigError
from services.common.interceptors import AioObserveInterceptor

log = logging.getLogger(__name__)


def server_credentials(config: GatewayConfig) -> grpc.ServerCredentials:
    try:
        key, cert = config.key_file.read_bytes(), config.cert_file.read_bytes()
        ca = config.ca_file.read_bytes()
    except OSError as error:
        raise ConfigError(f"TLS material: {error}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca,
        require_client_auth=config.client_auth == "require")


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.backends = Backends(config.socket_path_dir, config.max_message_bytes)
        self.services = {service.full_name for service in proxied_services()}
        self.health = GatewayHealth(self.backends, self.services)
        self.activator = Activator(config.activation, config.activation_timeout, self.backends,
                                   config.state_dir / "log") if config.activation else None
        self.server: grpc.aio.Server | None = None
        self.metrics: metrics.MetricsEndpoint | None = None
        self.port = 0

    async def start(self) -> None:
        if self.config.metrics_listen:
            self.metrics = metrics.MetricsEndpoint(self.config.metrics_listen,
                                                   metrics.GATEWAY_METRICS)
        options = [("grpc.max_receive_message_length", self.config.max_message_bytes),
                   ("grpc.max_send_message_length", self.config.max_message_bytes)]
        routes = route_table()
        own = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        # The proxy answers any path; only the ones served are metric label values.
        observe = AioObserveInterceptor({*routes, *method_paths(own)})
        server = grpc.aio.server(options=options, interceptors=[observe])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(sorted(self.services) + own, server)
        server.add_generic_rpc_handlers((ProxyHandler(routes, self.backends,
                                                        self.activator),))
        self.port = server.add_secure_port(self.config.listen, server_credentials(self.config))
        if not self.port:
            raise ConfigError(f"cannot listen on {self.config.listen}")
        await server.start()
        self.server = server
        log.info("gateway listening on %s (TLS, client certificates %s), forwarding %s%s",
                 self.config.listen, self.config.client_auth, ", ".join(sorted(self.services)),
                 f"; starting services on demand with `{self.config.activation}`"
                 if self.activator else "")

    async def stop(self) -> None:
        self.health.serving = False
        if self.server is not None:
            await self.server.stop(self.config.grace_period)
        await self.backends.close()
        if self.metrics is not None:
            self.metrics.close()

    async def serve_until_signalled(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping")
        await self.stop()
