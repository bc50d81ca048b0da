"""SecretService: proto requests in, backend calls, proto responses out.

No try/except here: errors travel to the ErrorInterceptor. Secret values are
never logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.common.config import Config
from services.common.errors import ServiceError
from services.common.libvirt_connection import LibvirtConnection
from services.common.servicer import DriverServicer, optional_bools
from services.secret import convert
from services.secret.backend import SecretBackend
from virtmesh.secret.v1 import secret_service_pb2 as pb
from virtmesh.secret.v1 import secret_service_pb2_grpc as pb_grpc

Ctx = grpc.ServicerContext


class SecretServicer(DriverServicer[SecretBackend, pb.WatchSecretEventsResponse],
                     pb_grpc.SecretServiceServicer):
    def __init__(self, connection: LibvirtConnection, config: Config) -> None:
        backend = SecretBackend(connection, config.state_dir.absolute())
        super().__init__(backend, config, backend.register_events, convert.secret_event)

    async def WatchSecretEvents(self, request: pb.WatchSecretEventsRequest,
                               context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[pb.WatchSecretEventsResponse]:
        async for event in self.watch(request, context, pb.WatchSecretEventsResponse):
            yield event

    # -- secrets --------------------------------------------------------------

    def ListSecrets(self, request: pb.ListSecretsRequest, context: Ctx) -> pb.ListSecretsResponse:
        filters = optional_bools(request, "ephemeral", "private")
        secrets = self.backend.list_secrets(**filters)
        if request.usage_types:
            secrets = convert.of_usage_types(secrets, request.usage_types)
        summaries, token = self.page(secrets, convert.secret_uuid, convert.secret, request,
                                     sorted(filters.items()), sorted(request.usage_types))
        return pb.ListSecretsResponse(secrets=summaries, next_page_token=token)

    def GetSecret(self, request: pb.GetSecretRequest, context: Ctx) -> pb.GetSecretResponse:
        by = request.WhichOneof("secret")
        if by is None:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "name (the secret's UUID) or usage is required", "MISSING_FIELD")
        secret = (self.backend.lookup_usage(convert.libvirt_usage_type(request.usage.type),
                                            request.usage.id) if by == "usage"
                  else self.backend.lookup(request.name))
        return pb.GetSecretResponse(secret=convert.secret(secret))

    def GetSecretXML(self, request: pb.GetSecretXMLRequest,
                     context: Ctx) -> pb.GetSecretXMLResponse:
        return pb.GetSecretXMLResponse(xml=self.backend.xml(request.name))

    def DefineSecret(self, request: pb.DefineSecretRequest,
                     context: Ctx) -> pb.DefineSecretResponse:
        secret = self.backend.define(request.xml)
        return pb.DefineSecretResponse(secret=convert.secret(secret))

    def SetSecretValue(self, request: pb.SetSecretValueRequest,
                       context: Ctx) -> pb.SetSecretValueResponse:
        self.backend.set_value(request.name, request.value)
        return pb.SetSecretValueResponse()

    def GetSecretValue(self, request: pb.GetSecretValueRequest,
                       context: Ctx) -> pb.GetSecretValueResponse:
        return pb.GetSecretValueResponse(value=self.backend.value(request.name))

    def UndefineSecret(self, request: pb.UndefineSecretRequest,
                       context: Ctx) -> pb.UndefineSecretResponse:
        self.backend.undefine(request.name)
        return pb.UndefineSecretResponse()
