"""The gateway process: TLS listener, health, reflection and the forwarding proxy.

There is no plaintext listener. One server listens on two TLS ports: mutual TLS
(``listen``, a client certificate required, tokens on top) and token-only TLS
(``token_listen``, no client certificate asked for, so every call there needs a
bearer token); either can be off. gRPC Python cannot ask for a certificate without
requiring it, hence two ports. A gateway without its certificate, key and CA
refuses to start. The TLS files and the identities file
are read again when they change (checked every ``reload_interval``) and on
SIGHUP; new connections use the new certificates, existing ones go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2_grpc

from gateway import limits
from gateway.activation import Activator
from gateway.admin_service import GatewayAdmin, GatewayControl, WorkerAdmin
from gateway.admission import Access
from gateway.api import GatewayApi
from gateway.audit import AUDIT_SUPPRESSED, AuditLog
from gateway.authn import Authenticator
from gateway.authz import Authorizer
from gateway.backends import Backends
from gateway.config import GatewayConfig, file_stamp
from gateway.health import GATEWAY_SERVICE, GatewayHealth
from gateway.observe import CallLog
from gateway.pki import is_dev_ca
from gateway.proxy import ProxyHandler
from gateway.routes import method_paths, proxied_services, route_table
from gateway.workers import Changes, Place, worker_socket, worker_sockets
from services.common import admin, metrics, reflection
from services.common.clients import ClientRegistry
from services.common.config import ConfigError
from services.common.interceptors import AioCheckInterceptor, AioObserveInterceptor
from virtmesh.gateway.v1.gateway_service_pb2_grpc import add_GatewayServiceServicer_to_server

log = logging.getLogger(__name__)


def _checked_tls_files(config: GatewayConfig) -> tuple[bytes, bytes, bytes]:
    """Key, certificate chain and CA, checked to belong together; ConfigError if not.
    A half-written or mismatched file never reaches the TLS layer."""
    try:
        key, cert = config.key_file.read_bytes(), config.cert_file.read_bytes()
        ca = config.ca_file.read_bytes()
    except OSError as error:
        raise ConfigError(f"TLS material: {error}") from None
    try:
        private = serialization.load_pem_private_key(key, None)
        leaf = x509.load_pem_x509_certificate(cert)
        x509.load_pem_x509_certificates(ca)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"TLS material: {error}") from None
    if leaf.public_key() != private.public_key():
        raise ConfigError(f"TLS material: {config.key_file} is not the key of "
                          f"{config.cert_file}")
    return key, cert, ca


def preflight(config: GatewayConfig) -> None:
    """What a gateway checks as it starts, without starting: its TLS files and policy
    (ConfigError)."""
    _checked_tls_files(config)
    Authorizer.from_file(config.policy_path)


class TlsFiles:
    """The server certificate, key and client CA, handed to gRPC again once changed."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._stamp = self._stamps()
        key, cert, ca = _checked_tls_files(config)
        self.initial = grpc.ssl_server_certificate_configuration([(key, cert)], ca)
        #: the configuration in use and how often it changed; each listener fetches it
        #: once per change
        self._current = self.initial
        self._generation = 0

    def _stamps(self) -> tuple[int | None, ...]:
        config = self.config
        return tuple(map(file_stamp, (config.key_file, config.cert_file, config.ca_file)))

    def reload(self, force: bool = False) -> str:
        """Read the files again if they changed; on an error keep serving the old ones
        and return why ("" when all is well)."""
        stamp = self._stamps()
        if stamp == self._stamp and not force:
            return ""
        self._stamp = stamp
        try:
            key, cert, ca = _checked_tls_files(self.config)
        except ConfigError as error:
            log.error("keeping the TLS certificates in use: %s", error)
            return str(error)
        self._current = grpc.ssl_server_certificate_configuration([(key, cert)], ca)
        self._generation += 1
        log.info("TLS certificates reloaded; new connections use them")
        return ""

    def credentials(self, require_client_certificate: bool) -> grpc.ServerCredentials:
        """Credentials of one listener, each with its own view of what changed."""
        seen = [self._generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            """gRPC asks before every handshake: a new configuration once, else None."""
            if seen[0] == self._generation:
                return None
            seen[0] = self._generation
            return self._current

        return grpc.dynamic_ssl_server_credentials(
            self._current, fetch,  # type: ignore[arg-type]  # None: keep the current one
            require_client_authentication=require_client_certificate)


class _Collected(grpc.aio.Server):
    """Stands in for the server while the add_*_to_server functions register the
    gateway's own services (health, its API, reflection), so that their handlers can
    be wrapped in the shared interceptors once, at start (see _own_handlers)."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self.handlers.extend(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self.handlers.append(grpc.method_handlers_generic_handler(service_name,
                                                                  method_handlers))

    def add_insecure_port(self, address: str) -> int:
        raise NotImplementedError

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self, grace: float | None) -> None:
        raise NotImplementedError

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class Handlers(grpc.GenericRpcHandler):
    """Method handlers by path."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = handlers

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(handler_call_details.method)  # type: ignore[attr-defined]


async def _own_handlers(collected: _Collected, paths: set[str],
                        interceptors: list[grpc.aio.ServerInterceptor]
                        ) -> dict[str, grpc.RpcMethodHandler]:
    """The handler of each path, wrapped by ``interceptors`` as a grpc.aio server would
    on every call (the first outermost), here once. The server itself has none: the
    proxy's calls, nearly all the gateway serves, record themselves
    (gateway/observe.py) and skip the interceptors' cost."""
    table = {}
    for path in paths:
        details: Any = _Details(path)
        handler: Any = next((found for generic in collected.handlers
                             if (found := generic.service(details)) is not None), None)
        if handler is None:
            continue
        for interceptor in reversed(interceptors):
            async def inner(_details: Any, handler: Any = handler) -> Any:
                return handler

            handler = await interceptor.intercept_service(inner, details)  # type: ignore[arg-type]
        table[path] = handler
    return table


class Gateway:
    """One gateway process. ``place``: which worker it is among how many (gateway/
    workers.py; None: the only one); ``shared``: the calls in flight of all workers."""

    def __init__(self, config: GatewayConfig, place: Place | None = None,
                 shared: limits.SharedCounts | None = None, changes: Changes | None = None
                 ) -> None:
        self.config = config
        self.place = place or Place(0, 1)
        self.changes = changes
        self._changes_seen = changes.count() if changes else 0
        self.backends = Backends(config.socket_path_dir, config.max_message_bytes)
        self.services = {service.full_name for service in proxied_services()}
        self.health = GatewayHealth(self.backends, self.services,
                                    max_watchers=config.max_health_watchers, shared=shared)
        self.activator = Activator(config.activation, config.activation_timeout, self.backends,
                                   config.state_dir / "log") if config.activation else None
        self.authenticator = Authenticator(config.identities_path,
                                           dev_fallback=is_dev_ca(config.ca_file))
        self.limiter = limits.Limiter(config.max_client_requests, shared)
        self.authorizer = Authorizer.from_file(config.policy_path)
        self.audit = AuditLog(config.audit_path, anonymous_rate=config.audit_anonymous_rate)
        # A disconnected connection stays refused until gRPC has surely closed it (its
        # maximum age and grace); an idle one is listed until gRPC closes it for idleness.
        clients = ClientRegistry(keep_idle=config.max_connection_idle,
                                 refuse_for=config.max_connection_age
                                 + config.max_connection_age_grace)
        self.access = Access(self.authenticator, self.limiter, self.authorizer, self.audit,
                             clients=clients, call_log=CallLog(),
                             before_call=self._reload_if_changed if changes else None)
        self.tls: TlsFiles | None = None
        self._reloading: asyncio.Task[None] | None = None
        self.server: grpc.aio.Server | None = None
        #: the worker's private server (gateway/workers.py: worker_sockets)
        self.private: grpc.aio.Server | None = None
        self.metrics: metrics.MetricsEndpoint | None = None
        #: the ports of mutual TLS and of token-only TLS; 0: off
        self.port = 0
        self.token_port = 0

    async def start(self) -> None:
        if self.config.metrics_listen:
            self.metrics = metrics.MetricsEndpoint(
                self.config.metrics_listen, (*metrics.GATEWAY_METRICS, limits.CALLS_REJECTED,
                                             AUDIT_SUPPRESSED))
        self.tls = TlsFiles(self.config)
        options = limits.server_options(self.config)
        routes = route_table(self.backends)
        own = [GATEWAY_SERVICE, admin.SERVICE.full_name, health.SERVICE_NAME,
               *reflection.SERVICE_NAMES]
        collected = _Collected()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, collected)
        add_GatewayServiceServicer_to_server(
            GatewayApi(routes, self.backends, self.access, self.config.fanout_timeout,
                       self.config.node_name), collected)
        self.admin = admin.AdminServicer(GatewayControl(self))
        own_socket = worker_socket(self.config, self.place.index)
        peers = [path for path in worker_sockets(self.config) if path != own_socket]
        admin.add_to_server(GatewayAdmin(self.admin, self.backends, self.access, peers),
                            collected)
        reflection.enable([*self.services, *own], collected)
        # The proxy answers any path; only the ones served are metric label values.
        own_handlers = await _own_handlers(
            collected, method_paths(own),
            [AioObserveInterceptor({*routes, *method_paths(own)}), AioCheckInterceptor()])
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((Handlers(own_handlers),
                                         ProxyHandler(routes, self.backends, self.access,
                                                      self.activator)))
        listening = []
        if self.config.mtls_address:
            self.port = self._add_port(server, self.config.mtls_address,
                                       self.config.client_auth == "require")
            listening.append(f"{self.config.mtls_address} (TLS, client certificates "
                             f"{self.config.client_auth})")
        if self.config.token_address:
            # Never asks for a certificate: a call here is its bearer token's or nobody's.
            self.token_port = self._add_port(server, self.config.token_address, False)
            listening.append(f"{self.config.token_address} (TLS, bearer tokens only)")
        await server.start()
        self.server = server
        # After the ports: a worker whose private socket answers serves on them too.
        self.private = await self._serve_privately(own_handlers)
        self._reloading = asyncio.create_task(self._poll_for_changes())
        log.info("gateway listening on %s, forwarding %s%s", " and ".join(listening),
                 ", ".join(sorted(self.services)),
                 f"; starting services on demand with `{self.config.activation}`"
                 if self.activator else "")

    async def _serve_privately(self, own: dict[str, grpc.RpcMethodHandler]) -> grpc.aio.Server:
        """This worker's private socket (mode 0600, in the gateway's run directory):
        grpc.health.v1, and the AdminService with this worker's own answers, which the
        worker a caller reached gathers (gateway/admin_service.py)."""
        path = worker_socket(self.config, self.place.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        server = grpc.aio.server()
        health_only = {path: handler for path, handler in own.items()
                       if path.startswith(f"/{health.SERVICE_NAME}/")}
        server.add_generic_rpc_handlers((Handlers(health_only),))
        # the other workers' admin API asks this one for its part
        admin.add_to_server(WorkerAdmin(self.admin), server)
        umask = os.umask(0o077)  # never reachable by others, not even for an instant
        try:
            bound = server.add_insecure_port(f"unix:{path}")
        finally:
            os.umask(umask)
        if not bound:
            raise ConfigError(f"cannot listen on {path}")
        os.chmod(path, 0o600)
        await server.start()
        return server

    def _add_port(self, server: grpc.aio.Server, address: str, require: bool) -> int:
        assert self.tls is not None
        port = server.add_secure_port(address, self.tls.credentials(require))
        if not port:
            raise ConfigError(f"cannot listen on {address}")
        return port

    def _reload_if_changed(self) -> None:
        """Before every call of a worker: reload when the supervisor saw the files change."""
        assert self.changes is not None
        count = self.changes.count()
        if count != self._changes_seen:
            self._changes_seen = count
            self.reload()

    def reload(self, force: bool = False) -> dict[str, str]:
        """Pick up changed TLS files and identities (all of them with ``force``: SIGHUP,
        the admin API); what was looked at -> "" or why it is not used."""
        return {"tls": self.tls.reload(force) if self.tls is not None else "",
                "identities": self.authenticator.reload(force),
                "policy": self.authorizer.reload(force)}

    async def _poll_for_changes(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval)
            self.reload()

    async def stop(self) -> None:
        self.health.serving = False
        if self._reloading is not None:
            self._reloading.cancel()
        if self.server is not None:
            await self.server.stop(self.config.grace_period)
        if self.private is not None:
            await self.private.stop(0)
            worker_socket(self.config, self.place.index).unlink(missing_ok=True)
        await self.backends.close()
        self.audit.close()
        if self.metrics is not None:
            self.metrics.close()

    async def serve_until_signalled(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload, True)
        await stop.wait()
        log.info("stopping")
        await self.stop()
