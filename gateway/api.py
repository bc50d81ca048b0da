"""virtmesh.gateway.v1.GatewayService: what runs behind the gateway, the host, search.

Nothing here names a driver. Everything is read from the descriptors of the
services the gateway routes to (gateway/routes.py):

- health, version and start time: each service's grpc.health.v1 Check, whose
  response headers say the version and start time (services/common/daemon.py);
- objects: a service's unary ``List*`` RPC whose search permission lists a type
  (services.common.acl.listed_object: ``connect:search_domains`` lists domains)
  and whose items have a ``name``. ``connect:search_*`` lists are top-level;
  ``<parent>:search_*`` lists (``storage_pool:search_storage_vols``) are listed
  once per visible parent, the parent's name in the request's first string field;
- node info: the first service (by name) with a ``GetNodeInfo`` RPC.

Every fan-out call is authorised for the caller like a call through the proxy and
carries the caller's identity, so each service's log says who asked; items are
kept only when the caller may see them (``Authorizer.visible``). A service that
is down or slower than ``fanout_timeout`` makes the answer partial, never fail.
Services that are not running are not started: this is an inventory, not a use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import fnmatch
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2

from gateway.admission import Access, admitted
from gateway.authz import Denied
from gateway.backends import Backends, identity_metadata, stamped
from gateway.identity import Identity
from gateway.routes import Route, driver_of, message_class, method_path, proxied_services
from services.common import acl, paging
from services.common.shared import STARTED_KEY, VERSION_KEY, ServiceError
from services.common.version import VERSION
from virtmesh.gateway.v1 import gateway_service_pb2 as pb
from virtmesh.gateway.v1 import gateway_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
#: longest Search pattern: ample for a glob of an object name
MAX_PATTERN = 256

_HEALTH = {
    health_pb2.HealthCheckResponse.SERVING: pb.SERVICE_HEALTH_SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING: pb.SERVICE_HEALTH_NOT_SERVING,
}
#: a child listing that fails so has nothing to list (a volume list of an inactive
#: pool, or of a pool removed since it was listed): not a failure of the answer
_NOTHING_TO_LIST = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


def _string_field(descriptor: Descriptor, name: str) -> bool:
    field = descriptor.fields_by_name.get(name)
    return field is not None and field.type == FieldDescriptor.TYPE_STRING \
        and not field.is_repeated


@dataclasses.dataclass(frozen=True)
class Listing:
    """A List RPC of one object type, read from its descriptor."""

    driver: str
    method: MethodDescriptor
    object_type: str
    #: the repeated field of the response holding the items
    items: str
    #: for a list inside a parent: the parent's object type and the request field
    #: naming it; "" for a top-level list
    parent_type: str = ""
    parent_field: str = ""

    @property
    def path(self) -> str:
        return method_path(self.method)


def listing_of(driver: str, method: MethodDescriptor) -> Listing | None:
    if not method.name.startswith("List") or method.client_streaming \
            or method.server_streaming:
        return None
    searched = [(p, acl.listed_object(str(p))) for p in acl.declared(method)]
    found = [(p, kind) for p, kind in searched if kind]
    items = [f for f in method.output_type.fields if f.is_repeated and f.message_type
             and _string_field(f.message_type, "name")]
    if len(found) != 1 or len(items) != 1:
        return None
    permission, kind = found[0]
    assert kind is not None
    if permission.object == "connect":
        return Listing(driver, method, kind, items[0].name)
    parents = [f.name for f in method.input_type.fields if f.name != "page_token"
               and _string_field(method.input_type, f.name)]
    if not parents:
        return None
    return Listing(driver, method, kind, items[0].name, permission.object, parents[0])


@dataclasses.dataclass(frozen=True)
class Found:
    """An object found in a listing."""

    service: str
    object_type: str
    name: str
    uuid: str = ""
    parent: str = ""


def _search_order(found: Found) -> str:
    """Search results are paged in this order; it names each object uniquely."""
    return "\x00".join((found.service, found.object_type, found.parent, found.name))


@dataclasses.dataclass
class Gathered:
    """Every object of every listing the caller may see, and what could not be listed."""

    found: list[Found] = dataclasses.field(default_factory=list)
    #: (service, object type) -> count, for types listed completely
    counts: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    failures: list[pb.Failure] = dataclasses.field(default_factory=list)

    def fail(self, driver: str, method: MethodDescriptor, error: grpc.aio.AioRpcError,
             prefix: str = "") -> None:
        self.failures.append(_failure(driver, method, error, prefix))


def _failure(driver: str, method: MethodDescriptor, error: grpc.aio.AioRpcError,
             prefix: str = "") -> pb.Failure:
    return pb.Failure(service=driver, method=method.name, code=error.code().name,
                      message=prefix + (error.details() or ""))


def _timestamp(moment: datetime.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class GatewayApi(pb_grpc.GatewayServiceServicer):
    def __init__(self, routes: dict[str, Route], backends: Backends, access: Access,
                 fanout_timeout: float, node_name: str = "") -> None:
        self.node_name = node_name or socket.gethostname()
        self.routes = routes
        self.backends = backends
        self.access = access
        self.fanout_timeout = fanout_timeout
        self.started = datetime.datetime.now(datetime.UTC)
        self.services = sorted(proxied_services(), key=lambda service: service.full_name)
        self.listings = [listing for service in self.services for method in service.methods
                         if (listing := listing_of(driver_of(service.full_name) or "", method))]
        self.node_info = next((method for service in self.services for method in service.methods
                               if method.name == "GetNodeInfo" and not method.input_type.fields
                               and not method.client_streaming
                               and not method.server_streaming), None)
        self._own = pb.DESCRIPTOR.services_by_name["GatewayService"]

    # -- admission and fan-out calls ---------------------------------------------

    async def _admitted(self, context: grpc.aio.ServicerContext, name: str, request: Message,
                        answer: Callable[[Identity], Awaitable[Message]]) -> Message:
        return await admitted(self.access, self._own.methods_by_name[name], context, request,
                              answer)

    def _may_call(self, identity: Identity, method: MethodDescriptor, request: Message) -> bool:
        try:
            self.access.authorizer.authorize(identity, method, request)
        except Denied:
            return False
        return True

    async def _call(self, identity: Identity, method: MethodDescriptor, request: Message,
                    deadline: float) -> Any:
        """One unary call to a service for the caller (on the route the proxy forwards
        it on); raises grpc.aio.AioRpcError."""
        route = self.routes[method_path(method)]
        reply = await route.call(request.SerializeToString(),
                                 timeout=max(deadline - time.monotonic(), 0.001),
                                 metadata=stamped(identity_metadata(identity)))
        return route.response_class.FromString(reply)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """When each service's part must be done: fanout_timeout from now, or before
        the caller's own deadline."""
        remaining = context.time_remaining()
        budget = self.fanout_timeout if remaining is None else min(
            self.fanout_timeout, max(remaining - 0.2, 0.05))
        return time.monotonic() + budget

    # -- listing everything ----------------------------------------------------------

    async def _list_all(self, identity: Identity, listing: Listing, deadline: float,
                        parent: str = "") -> list[Found] | None:
        """Every visible item of one listing, page after page; None when the caller may
        not make this listing (so it is not made, and nothing is counted)."""
        request_class = message_class(listing.method.input_type)
        fields = listing.method.input_type.fields_by_name
        request = request_class(**({listing.parent_field: parent} if parent else {}))
        if "page_size" in fields:
            request.page_size = paging.MAX_PAGE_SIZE  # type: ignore[attr-defined]
        if not self._may_call(identity, listing.method, request):
            return None
        visible = self.access.authorizer.visible
        found: list[Found] = []
        while True:
            reply = await self._call(identity, listing.method, request, deadline)
            for item in getattr(reply, listing.items):
                uuid = getattr(item, "uuid", "")
                full_name = f"{parent}/{item.name}" if parent else item.name
                if visible(identity, listing.object_type, full_name):
                    found.append(Found(listing.driver, listing.object_type, item.name,
                                       uuid if isinstance(uuid, str) else "", parent))
            token = getattr(reply, "next_page_token", "")
            if not token or "page_token" not in fields:
                return found
            request.page_token = token  # type: ignore[attr-defined]

    async def _gather_service(self, identity: Identity, driver: str, deadline: float,
                              gathered: Gathered) -> None:
        """One service's listings: top-level ones at once, then each child listing once
        per parent found."""
        mine = [listing for listing in self.listings if listing.driver == driver]
        top = [listing for listing in mine if not listing.parent_type]
        results = await asyncio.gather(*(self._list_all(identity, listing, deadline)
                                         for listing in top), return_exceptions=True)
        parents: dict[str, list[Found]] = {}
        for listing, result in zip(top, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                gathered.fail(driver, listing.method, result)
                continue
            if isinstance(result, BaseException):
                raise result
            if result is None:
                continue
            gathered.found.extend(result)
            gathered.counts[(driver, listing.object_type)] = len(result)
            parents[listing.object_type] = result
        for child in mine:
            if child.parent_type not in parents:
                continue
            names = [found.name for found in parents[child.parent_type]]
            results = await asyncio.gather(*(self._list_all(identity, child, deadline, name)
                                             for name in names), return_exceptions=True)
            count, complete, allowed = 0, True, not names
            for name, result in zip(names, results, strict=True):
                if isinstance(result, grpc.aio.AioRpcError):
                    if result.code() not in _NOTHING_TO_LIST:
                        complete = False
                        gathered.fail(driver, child.method, result, f"{name}: ")
                    continue
                if isinstance(result, BaseException):
                    raise result
                if result is not None:
                    allowed = True
                    gathered.found.extend(result)
                    count += len(result)
            if complete and allowed:
                gathered.counts[(driver, child.object_type)] = count

    async def _gather(self, identity: Identity, deadline: float) -> Gathered:
        gathered = Gathered()
        drivers = sorted({listing.driver for listing in self.listings})
        await asyncio.gather(*(self._gather_service(identity, driver, deadline, gathered)
                               for driver in drivers))
        return gathered

    # -- the RPCs ----------------------------------------------------------------------

    async def _service(self, descriptor: Any, deadline: float) -> pb.Service:
        driver = driver_of(descriptor.full_name) or ""
        entry = pb.Service(name=driver, grpc_service=descriptor.full_name,
                           socket=str(self.backends.socket(driver)))
        health = await self.backends.health(driver, descriptor.full_name,
                                            max(deadline - time.monotonic(), 0.001))
        if health.error:
            entry.health = pb.SERVICE_HEALTH_UNREACHABLE
            entry.message = health.error
            return entry
        entry.health = _HEALTH.get(health.status, pb.SERVICE_HEALTH_NOT_SERVING)
        entry.version = health.headers.get(VERSION_KEY, "")
        try:
            started = datetime.datetime.fromisoformat(str(health.headers.get(STARTED_KEY)))
        except ValueError:
            return entry  # a service that does not say when it started
        entry.start_time.CopyFrom(_timestamp(started))
        uptime = max(datetime.datetime.now(datetime.UTC) - started, datetime.timedelta())
        entry.uptime.FromTimedelta(uptime)
        return entry

    async def ListServices(self, request: pb.ListServicesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListServicesResponse:
        async def answer(_identity: Identity) -> pb.ListServicesResponse:
            deadline = self._deadline(context)
            services = await asyncio.gather(*(self._service(descriptor, deadline)
                                              for descriptor in self.services))
            return pb.ListServicesResponse(services=services, gateway_version=VERSION,
                                           gateway_start_time=_timestamp(self.started),
                                           node_name=self.node_name)

        return await self._admitted(context, "ListServices", request,  # type: ignore[return-value]
                                    answer)

    async def _node(self, identity: Identity, deadline: float,
                    failures: list[pb.Failure]) -> pb.NodeInfo | None:
        method = self.node_info
        if method is None:
            return None
        driver = driver_of(method.containing_service.full_name) or ""
        request = message_class(method.input_type)()
        if not self._may_call(identity, method, request):
            return None
        try:
            reply = await self._call(identity, method, request, deadline)
        except grpc.aio.AioRpcError as error:
            failures.append(_failure(driver, method, error))
            return None
        node = pb.NodeInfo()
        for field in node.DESCRIPTOR.fields:
            if field.name in reply.DESCRIPTOR.fields_by_name:
                setattr(node, field.name, getattr(reply, field.name))
        return node

    async def GetHostSummary(self, request: pb.GetHostSummaryRequest,
                             context: grpc.aio.ServicerContext) -> pb.GetHostSummaryResponse:
        async def answer(identity: Identity) -> pb.GetHostSummaryResponse:
            deadline = self._deadline(context)
            failures: list[pb.Failure] = []
            node, gathered = await asyncio.gather(self._node(identity, deadline, failures),
                                                  self._gather(identity, deadline))
            counts = [pb.ObjectCount(service=service, object_type=kind, count=count)
                      for (service, kind), count in sorted(gathered.counts.items())]
            return pb.GetHostSummaryResponse(hostname=socket.gethostname(), node=node,
                                             node_name=self.node_name, counts=counts,
                                             failures=failures + gathered.failures)

        return await self._admitted(context, "GetHostSummary", request,  # type: ignore[return-value]
                                    answer)

    async def Search(self, request: pb.SearchRequest,
                     context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        async def answer(identity: Identity) -> pb.SearchResponse:
            if not request.pattern:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pattern is required")
            if len(request.pattern) > MAX_PATTERN:
                # fnmatch compiles a regular expression on the event loop: bound its cost
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"pattern is longer than {MAX_PATTERN} characters")
            gathered = await self._gather(identity, self._deadline(context))
            matcher = re.compile(fnmatch.translate(request.pattern))
            matches = [found for found in gathered.found if matcher.match(found.name)]
            chunk, token = await _paged(context, matches, request)
            results = [pb.SearchResult(service=found.service, object_type=found.object_type,
                                       name=found.name, uuid=found.uuid, parent=found.parent)
                       for found in chunk]
            return pb.SearchResponse(results=results, next_page_token=token,
                                     failures=gathered.failures)

        return await self._admitted(context, "Search", request,  # type: ignore[return-value]
                                    answer)


async def _paged(context: grpc.aio.ServicerContext, matches: list[Found],
                 request: pb.SearchRequest) -> tuple[list[Found], str]:
    """One page of the matches; INVALID_ARGUMENT for a bad page_size or page_token."""
    try:
        return paging.page(matches, _search_order, request.page_size,
                           request.page_token, paging.fingerprint(request.pattern))
    except ServiceError as error:
        await context.abort(error.code, error.message)
        raise AssertionError("abort returned") from None  # abort always raises

