"""A small Python client for virtmesh.

It reaches the services either through the gateway (TLS on TCP, the normal
way: a client certificate, a bearer token, or both) or straight through one
service's UNIX socket (no TLS; for tests and local debugging; a token is never
sent there). Failed calls raise ``ClientError``, which carries the gRPC code name
and the libvirt error code from the server's ``google.rpc.ErrorInfo``, so callers
can tell ``VIR_ERR_NO_DOMAIN`` from ``VIR_ERR_NO_DOMAIN_SNAPSHOT`` without
parsing messages.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import grpc
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

DEFAULT_GATEWAY = "127.0.0.1:16514"
#: the gateway's token-only TLS: where a token without a client certificate goes
DEFAULT_TOKEN_GATEWAY = "127.0.0.1:16515"
DEFAULT_STATE_DIR = ".virtmesh"
DEFAULT_TIMEOUT = 30.0
#: the services accept messages this large (capabilities XML can be big)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: the most bytes a session message carries (the services' limit)
SESSION_CHUNK = 64 * 1024


class ConfigError(Exception):
    """The client cannot even try to connect, e.g. a certificate file is missing."""


class ClientError(Exception):
    """A failed call: gRPC code name, message and the server's ErrorInfo reason."""

    def __init__(self, code: str, message: str, reason: str = "",
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        """One line: libvirt's XML errors append a multi-line excerpt we leave out."""
        lines = self.message.strip().splitlines()
        text = f"{self.code}: {lines[0] if lines else self.code}"
        return f"{text} ({self.reason})" if self.reason and self.reason != self.code else text

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ClientError:
        call = cast(grpc.Call, error)
        status = rpc_status.from_call(call)
        for detail in status.details if status else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return cls(call.code().name, call.details() or "", info.reason, info.metadata)
        return cls(call.code().name, call.details() or "")


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """The one place where a grpc.RpcError becomes a ClientError."""
    try:
        yield
    except grpc.RpcError as error:
        raise ClientError.from_rpc_error(error) from None


def _read_token(path: str | os.PathLike[str]) -> str:
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read token file {path}: {error}") from None
    if not token or any(char.isspace() for char in token):
        raise ConfigError(f"token file {path}: expected one token on one line")
    return token


def _read_pem(path: str | os.PathLike[str], what: str, flag: str, env: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror} (run `make run` to "
                          f"create the development PKI, or pass {flag} / set {env})") from None


def default_gateway(environ: Mapping[str, str], token: bool = False,
                    certificate: bool = False) -> str:
    """Where a client goes unless told: ``VIRTMESH_GATEWAY``; else the gateway's
    token-only TLS port when there is a token (``token``, ``VIRTMESH_TOKEN``,
    ``VIRTMESH_TOKEN_FILE``) and no client certificate (``certificate``,
    ``VIRTMESH_CERT``, ``VIRTMESH_KEY``); else its mutual TLS port."""
    if environ.get("VIRTMESH_GATEWAY"):
        return environ["VIRTMESH_GATEWAY"]
    token = token or bool(environ.get("VIRTMESH_TOKEN") or environ.get("VIRTMESH_TOKEN_FILE"))
    certificate = certificate or bool(environ.get("VIRTMESH_CERT") or environ.get("VIRTMESH_KEY"))
    return DEFAULT_TOKEN_GATEWAY if token and not certificate else DEFAULT_GATEWAY


#: the response header a Watch… call starts with: where its service's sequence stands
EVENT_POSITION_KEY = "x-virtmesh-event-position"
#: seconds between attempts to reopen an interrupted event stream (doubling up to the last)
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


class EventStream:
    """An open Watch… call that follows its service across restarts.

    Construction waits for the server's headers, which it sends once it has
    subscribed us: an operation started afterwards cannot slip past unseen.

    When the stream breaks with UNAVAILABLE (the gateway or the service restarted,
    or the service lost libvirt) and ``reconnect`` is set, iteration reopens it
    after the last event it saw (``resume_after``): the service sends exactly the
    events missed meanwhile, or, when it no longer has them, an event whose ``gap``
    is set, which iteration yields like any event. ``notice`` hears about each
    reconnection.
    """

    def __init__(self, open_call: Callable[[Any], Any], request: Any, reconnect: bool = False,
                 notice: Callable[[str], None] | None = None) -> None:
        self._open = open_call
        self._request = request
        self._reconnect = reconnect
        self._notice = notice or (lambda _text: None)
        self._closed = False
        #: the position of the last event seen (or where the stream started)
        self.position: Any = None
        self._call = self._start()

    def _start(self) -> Any:
        if self.position is not None:
            self._request.resume_after.CopyFrom(self.position)
        call = self._open(self._request)
        with rpc_errors():
            headers = dict(call.initial_metadata() or ())
        if self.position is None and EVENT_POSITION_KEY in headers:
            epoch, _, sequence = str(headers[EVENT_POSITION_KEY]).rpartition("/")
            self.position = type(self._request.resume_after)(epoch=epoch,
                                                             sequence=int(sequence or 0))
        return call

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                for event in self._call:
                    if event.position.epoch:
                        self.position = event.position
                    yield event
                return
            except grpc.RpcError as error:
                if (self._closed or not self._reconnect or self.position is None
                        or error.code() != grpc.StatusCode.UNAVAILABLE):
                    raise ClientError.from_rpc_error(error) from None
                self._notice(f"event stream interrupted ({error.details()}); reconnecting")
                self._call = self._reopen()

    def _reopen(self) -> Any:
        """The stream again, after the last event seen; waits while it is unavailable."""
        for attempt in itertools.count():
            time.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            try:
                call = self._start()
            except ClientError as error:
                if error.code != "UNAVAILABLE" or self._closed:
                    raise
                continue
            self._notice(f"reconnected; resuming after event {self.position.sequence}")
            return call
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """A byte session with a guest (OpenDomainConsole, OpenDomainChannel,
    OpenDomainGraphics): ``send`` bytes, iterate the bytes that come back.

    Construction returns once the service has opened the device (its first
    response, kept in ``opened``), and raises ClientError if it cannot. ``close``
    ends the session from our side (a half-close: the service ends it, status OK);
    ``cancel`` abandons it. At most a few messages wait to be sent: ``send``
    blocks while the service is slower, so the source is read no faster than the
    session carries it.
    """

    def __init__(self, method: Any, first: Any) -> None:
        self._request_type = type(first)
        self._outgoing: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        #: set once the session is cancelled: nothing more is sent
        self.cancelled = threading.Event()
        self.call = method(self._requests(first), timeout=None)
        try:
            with rpc_errors():
                self.opened = next(self.call)
        except StopIteration:
            self.cancel()
            raise ClientError("UNAVAILABLE", "the session ended before it opened") from None
        except BaseException:
            self.cancel()
            raise

    def _requests(self, first: Any) -> Iterator[Any]:
        yield first
        while (data := self._outgoing.get()) is not None and not self.cancelled.is_set():
            yield self._request_type(data=data)

    def _put(self, item: bytes | None) -> bool:
        while not self.cancelled.is_set():
            with contextlib.suppress(queue.Full):
                self._outgoing.put(item, timeout=0.5)
                return True
        return False

    def send(self, data: bytes) -> bool:
        """Queue bytes for the guest; False once the session is cancelled."""
        return all(self._put(data[start:start + SESSION_CHUNK])
                   for start in range(0, len(data), SESSION_CHUNK))

    def close(self) -> None:
        self._put(None)

    def cancel(self) -> None:
        """Cancel the call (nothing if it has ended) and end the thread grpc runs the
        requests on."""
        self.cancelled.set()
        self.call.cancel()
        while True:
            try:
                self._outgoing.put_nowait(None)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._outgoing.get_nowait()

    def __iter__(self) -> Iterator[bytes]:
        """The guest's bytes until the session ends; a failure is a ClientError."""
        if self.opened.data:
            yield self.opened.data
        with rpc_errors():
            for response in self.call:
                if response.data:
                    yield response.data

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client:
    """A channel to virtmesh and the compute stub on it; use it as a context manager.

    ``target`` is ``host:port`` of the gateway (TLS with a client certificate
    and/or a bearer token) or ``unix:/path`` of a service socket (insecure; a
    token is refused there). Unset arguments come from ``VIRTMESH_GATEWAY``,
    ``VIRTMESH_STATE_DIR``, ``VIRTMESH_CA``, ``VIRTMESH_CERT``, ``VIRTMESH_KEY``,
    ``VIRTMESH_TOKEN``, ``VIRTMESH_TOKEN_FILE`` and ``VIRTMESH_TLS_SERVER_NAME`` (the
    name to expect in the server certificate), then from the defaults (the
    gateway on 127.0.0.1:16514 and the PKI under ``<state_dir>/pki``). A token
    without a certificate (no ``cert``/``key``, no ``VIRTMESH_CERT``/``VIRTMESH_KEY``)
    is sent alone: no client certificate, and by default to the gateway's token-only
    port 127.0.0.1:16515. A token with a certificate goes with it to mutual TLS.
    """

    def __init__(self, target: str | None = None, *,
                 state_dir: str | os.PathLike[str] | None = None,
                 ca: str | os.PathLike[str] | None = None,
                 cert: str | os.PathLike[str] | None = None,
                 key: str | os.PathLike[str] | None = None,
                 token: str | None = None,
                 token_file: str | os.PathLike[str] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT,
                 environ: Mapping[str, str] | None = None,
                 server_name: str | None = None) -> None:
        env = os.environ if environ is None else environ
        self.target = target or default_gateway(env, bool(token or token_file),
                                                bool(cert or key))
        #: deadline of each unary call in seconds; None waits forever
        self.timeout = timeout
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        token_file = token_file or env.get("VIRTMESH_TOKEN_FILE")
        token = token or env.get("VIRTMESH_TOKEN") or (
            _read_token(token_file) if token_file else None)
        if self.target.startswith("unix:"):
            if token:
                raise ConfigError(f"refusing to send a bearer token over the plaintext channel "
                                  f"{self.target}: tokens go to the gateway over TLS only "
                                  "(unset VIRTMESH_TOKEN/VIRTMESH_TOKEN_FILE for sockets)")
            self.channel = grpc.insecure_channel(self.target, options)
        else:
            pki = Path(state_dir or env.get("VIRTMESH_STATE_DIR") or DEFAULT_STATE_DIR) / "pki"
            cert = cert or env.get("VIRTMESH_CERT")
            key = key or env.get("VIRTMESH_KEY")
            # never the default (admin) certificate with a token: the token alone
            with_certificate = not token or bool(cert or key)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(ca or env.get("VIRTMESH_CA") or pki / "ca.crt",
                                            "CA certificate", "--ca", "VIRTMESH_CA"),
                private_key=_read_pem(key or pki / "client.key", "client key", "--key",
                                      "VIRTMESH_KEY") if with_certificate else None,
                certificate_chain=_read_pem(
                    cert or pki / "client.crt", "client certificate", "--cert",
                    "VIRTMESH_CERT") if with_certificate else None)
            if token:
                credentials = grpc.composite_channel_credentials(
                    credentials, grpc.access_token_call_credentials(token))
            # the name the server certificate must carry, when it is not the address's
            # host (a node dialled by IP, a tunnel, a Kubernetes Service)
            server_name = server_name or env.get("VIRTMESH_TLS_SERVER_NAME")
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.secure_channel(self.target, credentials, options)
        self.compute = pb_grpc.ComputeServiceStub(self.channel)
        self._methods: dict[tuple[str, str], Any] = {}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def method(self, name: str, request_type: Any) -> Any:
        """The multi-callable for RPC ``name`` of the service whose .proto file
        defines ``request_type``: any virtmesh service, without a stub per service."""
        key = (request_type.DESCRIPTOR.full_name, name)
        callable_ = self._methods.get(key)
        if callable_ is None:
            file = request_type.DESCRIPTOR.file
            service, = file.services_by_name.values()
            descriptor = service.methods_by_name[name]
            kind = {(False, False): self.channel.unary_unary,
                    (False, True): self.channel.unary_stream,
                    (True, False): self.channel.stream_unary,
                    (True, True): self.channel.stream_stream}[
                        (descriptor.client_streaming, descriptor.server_streaming)]
            callable_ = kind(f"/{service.full_name}/{name}",
                             request_serializer=request_type.SerializeToString,
                             response_deserializer=message_factory.GetMessageClass(
                                 descriptor.output_type).FromString)
            self._methods[key] = callable_
        return callable_

    def call(self, method: str, request: Any) -> Any:
        """Call a unary RPC of any virtmesh service by name, with the client's deadline."""
        with rpc_errors():
            return self.method(method, type(request))(request, timeout=self.timeout)

    def stream(self, method: str, request: Any, timeout: float | None = None) -> Iterator[Any]:
        """Iterate a server-streaming RPC's responses; the call is cancelled as soon as
        the iteration stops (a break, an error, Ctrl-C), not when it is collected."""
        call = self.method(method, type(request))(request, timeout=timeout)
        try:
            with rpc_errors():
                yield from call
        finally:
            call.cancel()

    def upload(self, method: str, requests: Iterator[Any], request_type: Any) -> Any:
        """Make a client-streaming call from an iterator of requests; Ctrl-C (or any
        exception) while it runs cancels it, which also stops grpc reading ``requests``."""
        call = self.method(method, request_type).future(requests, timeout=None)
        try:
            with rpc_errors():
                return call.result()
        finally:
            call.cancel()

    def session(self, method: str, first: Any) -> Session:
        """Open a console, channel or graphics session; ``first`` names the domain."""
        return Session(self.method(method, type(first)), first)

    def console(self, name: str, device: str = "", force: bool = False) -> Session:
        return self.session("OpenDomainConsole", pb.OpenDomainConsoleRequest(
            name=name, device=device, force=force))

    def all_pages(self, method: str, request: Any, field: str) -> list[Any]:
        """The items in ``field`` of every page of a List RPC, following next_page_token."""
        items: list[Any] = []
        while True:
            response = self.call(method, request)
            items.extend(getattr(response, field))
            if not response.next_page_token:
                return items
            request.page_token = response.next_page_token

    def domains(self, *, active: bool | None = None, persistent: bool | None = None,
                states: Sequence[Any] = (), page_size: int = 0) -> list[Any]:
        """Every matching domain, following next_page_token to the last page."""
        request = pb.ListDomainsRequest(active=active, persistent=persistent, states=states,
                                        page_size=page_size)
        return self.all_pages("ListDomains", request, "domains")

    def snapshots(self, name: str, page_size: int = 0) -> list[Any]:
        request = pb.ListSnapshotsRequest(name=name, page_size=page_size)
        return self.all_pages("ListSnapshots", request, "snapshots")

    def domain(self, name: str) -> Any:
        return self.call("GetDomain", pb.GetDomainRequest(name=name)).domain

    def watch(self, names: Sequence[str] = (), timeout: float | None = None,
              notice: Callable[[str], None] | None = None) -> EventStream:
        """Subscribe to domain events; returns once the server has subscribed us. Without
        a timeout the stream reconnects and resumes (EventStream)."""
        return self.events("WatchDomainEvents", pb.WatchDomainEventsRequest(names=names),
                           timeout, notice)

    def events(self, method: str, request: Any, timeout: float | None = None,
               notice: Callable[[str], None] | None = None) -> EventStream:
        """Any service's Watch… stream; without a timeout it reconnects and resumes."""
        call = self.method(method, type(request))
        return EventStream(lambda request: call(request, timeout=timeout), request,
                           reconnect=timeout is None, notice=notice)

    def shutdown(self, name: str, wait: float | None = None) -> None:
        """Ask the guest to shut down; with ``wait`` (seconds), return once it is off."""
        request = pb.ShutdownDomainRequest(name=name)
        if wait is None:
            self.call("ShutdownDomain", request)
            return
        with self.watch([name], timeout=wait) as events:
            self.call("ShutdownDomain", request)
            if self.domain(name).state == pb.DOMAIN_STATE_SHUTOFF:
                return
            try:
                for event in events:
                    if event.lifecycle.type == pb.LIFECYCLE_EVENT_TYPE_STOPPED:
                        return
            except ClientError as error:
                if error.code != "DEADLINE_EXCEEDED":
                    raise
                raise ClientError(error.code, f"domain '{name}' did not shut off within "
                                  f"{wait:g} s") from None
        raise ClientError("UNAVAILABLE", "the event stream ended before the domain shut off")
