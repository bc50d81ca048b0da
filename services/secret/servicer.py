"""SecretService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor. Secret values are
never logged.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import libvirt

from services.common import paging
from services.common.backend import summaries
from services.common.config import Config
from services.common.errors import ServiceError
from services.common.events import EventHub, now
from services.common.libvirt_connection import LibvirtConnection
from services.secret import convert
from services.secret.backend import SecretBackend
from virtmesh.secret.v1 import secret_service_pb2 as pb
from virtmesh.secret.v1 import secret_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class SecretServicer(pb_grpc.SecretServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        self.backend = SecretBackend(connection)
        self.events: EventHub[pb.WatchSecretEventsResponse] = EventHub.fed_by(
            connection, config.max_event_watchers, self._register_events)

    def close(self) -> None:
        """The service is stopping: end event streams now rather than after the grace."""
        self.events.close_all("the service is shutting down")

    def _summary(self, secret: libvirt.virSecret) -> pb.Secret:
        return convert.secret(secret, secret.XMLDesc())

    # -- events ---------------------------------------------------------------

    def _register_events(self, conn: libvirt.virConnect) -> None:
        def publish(secret: libvirt.virSecret, **event: object) -> None:
            self.events.publish(pb.WatchSecretEventsResponse(
                name=secret.UUIDString(), usage=convert.usage(secret), time=now(),
                **event))  # type: ignore[arg-type]

        conn.secretEventRegisterAny(
            None, libvirt.VIR_SECRET_EVENT_ID_LIFECYCLE,
            lambda _c, secret, event, _detail, _o: publish(secret, lifecycle=pb.LifecycleEvent(
                type=convert.LIFECYCLE_EVENT_TYPES.get(
                    event, pb.LIFECYCLE_EVENT_TYPE_UNSPECIFIED))), None)
        conn.secretEventRegisterAny(
            None, libvirt.VIR_SECRET_EVENT_ID_VALUE_CHANGED,
            lambda _c, secret, _o: publish(secret, value_changed=pb.ValueChangedEvent()), None)

    def WatchSecretEvents(self, request: pb.WatchSecretEventsRequest,
                          context: Ctx) -> Iterator[pb.WatchSecretEventsResponse]:
        yield from self.events.watch(context, request.names, lambda: self.backend.conn)

    # -- secrets --------------------------------------------------------------

    def ListSecrets(self, request: pb.ListSecretsRequest, context: Ctx) -> pb.ListSecretsResponse:
        filters = {name: getattr(request, name) if request.HasField(name) else None
                   for name in ("ephemeral", "private")}
        secrets = self.backend.list_secrets(**filters)
        if request.usage_types:
            wanted = {convert.libvirt_usage_type(usage) for usage in request.usage_types}
            secrets = [secret for secret in secrets if secret.usageType() in wanted]
        fingerprint = paging.fingerprint(sorted(filters.items()), sorted(request.usage_types))
        chunk, token = paging.page(secrets, lambda secret: secret.UUIDString(),
                                   request.page_size, request.page_token, fingerprint)
        return pb.ListSecretsResponse(secrets=summaries(chunk, self._summary),
                                      next_page_token=token)

    def GetSecret(self, request: pb.GetSecretRequest, context: Ctx) -> pb.GetSecretResponse:
        by = request.WhichOneof("secret")
        if by is None:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "name (the secret's UUID) or usage is required", "MISSING_FIELD")
        secret = (self.backend.lookup_usage(request.usage) if by == "usage"
                  else self.backend.lookup(request.name))
        return pb.GetSecretResponse(secret=self._summary(secret))

    def GetSecretXML(self, request: pb.GetSecretXMLRequest,
                     context: Ctx) -> pb.GetSecretXMLResponse:
        return pb.GetSecretXMLResponse(xml=self.backend.lookup(request.name).XMLDesc())

    def DefineSecret(self, request: pb.DefineSecretRequest,
                     context: Ctx) -> pb.DefineSecretResponse:
        secret = self.backend.define(request.xml)
        return pb.DefineSecretResponse(secret=self._summary(secret))

    def SetSecretValue(self, request: pb.SetSecretValueRequest,
                       context: Ctx) -> pb.SetSecretValueResponse:
        self.backend.set_value(self.backend.lookup(request.name), request.value)
        return pb.SetSecretValueResponse()

    def GetSecretValue(self, request: pb.GetSecretValueRequest,
                       context: Ctx) -> pb.GetSecretValueResponse:
        return pb.GetSecretValueResponse(
            value=self.backend.value(self.backend.lookup(request.name)))

    def UndefineSecret(self, request: pb.UndefineSecretRequest,
                       context: Ctx) -> pb.UndefineSecretResponse:
        self.backend.undefine(self.backend.lookup(request.name))
        return pb.UndefineSecretResponse()
