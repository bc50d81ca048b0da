"""The libvirt connection of a service: event loop, keepalive and reconnect.

libvirt delivers events and keepalives only while an event loop runs, and the
embedded drivers need it before the first open, so the default loop is
registered once per process and driven by one daemon thread. The connection is
reopened with exponential backoff when libvirt reports it closed; while it is
down, ``conn`` raises UNAVAILABLE and listeners hear about it (health goes
NOT_SERVING).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

import grpc
import libvirt

from services.common.errors import ServiceError
from services.common.libvirt_identity import adopt_system_identity
from services.common.metrics import libvirt_call

log = logging.getLogger(__name__)

_loop_lock = threading.Lock()
_loop_started = False


def _ignore_libvirt_error(_ctx: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; we report them as gRPC status."""


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it on a daemon thread, once."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-event-loop", daemon=True).start()
        _loop_started = True


#: libvirt-python's per-connection event callback registries and how to drop an entry.
_EVENT_REGISTRIES = (
    ("domainEventCallbackID", "domainEventDeregisterAny"),
    ("networkEventCallbackID", "networkEventDeregisterAny"),
    ("storagePoolEventCallbackID", "storagePoolEventDeregisterAny"),
    ("nodeDeviceEventCallbackID", "nodeDeviceEventDeregisterAny"),
    ("secretEventCallbackID", "secretEventDeregisterAny"),
)

#: Called with the new connection each time one is opened (events, reattach...).
ConnectHook = Callable[[libvirt.virConnect], None]
#: Called with True when the connection comes up and False when it goes down.
StateListener = Callable[[bool], None]


class LibvirtConnection:
    """One libvirt connection that heals itself."""

    def __init__(self, uri: str, *, keepalive_interval: int = 5, keepalive_count: int = 5,
                 min_delay: float = 0.5, max_delay: float = 30.0) -> None:
        self.uri = uri
        #: an embedded driver runs on our threads, which need a libvirt caller identity
        #: (services/common/libvirt_identity.py)
        self._embedded = urlparse(uri).path == "/embed"
        self._keepalive = (keepalive_interval, keepalive_count)
        self._delays = (min_delay, max_delay)
        self._conn: libvirt.virConnect | None = None
        self._lost: list[libvirt.virConnect] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._hooks: list[ConnectHook] = []
        self._listeners: list[StateListener] = []
        self._thread: threading.Thread | None = None
        self.reconnects = 0

    def on_connect(self, hook: ConnectHook) -> None:
        self._hooks.append(hook)

    def on_state_change(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def conn(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                               f"not connected to libvirt at {self.uri}; reconnecting",
                               "LIBVIRT_DISCONNECTED")
        if self._embedded:
            adopt_system_identity()
        return conn

    def start(self, wait: float = 0.0) -> None:
        """Connect in the background; wait up to ``wait`` seconds for the first open."""
        start_event_loop()
        with self._lock:  # against a close() racing this start (SIGTERM while starting)
            if self._stopping.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="libvirt-connect",
                                            daemon=True)
            self._thread.start()
        deadline = time.monotonic() + wait
        while (not self.connected and not self._stopping.is_set()
               and time.monotonic() < deadline):
            time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            self._stopping.set()
            thread = self._thread
        self._wake.set()
        if thread:
            thread.join(timeout=5)
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._release(conn)
        self._release_lost()

    @staticmethod
    def _release(conn: libvirt.virConnect, lost: bool = False) -> None:
        # Registered event callbacks hold a reference to the connection: without
        # dropping them, close() frees nothing (libvirt drops them locally even when
        # it cannot tell a lost daemon).
        for registry, deregister in _EVENT_REGISTRIES:
            for callback_id in list(getattr(conn, registry, {})):
                with contextlib.suppress(libvirt.libvirtError):
                    getattr(conn, deregister)(callback_id)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        try:
            with libvirt_call("virConnectClose"):
                conn.close()
        except libvirt.libvirtError as error:
            # a lost connection cannot say goodbye to its daemon; that is expected
            (log.debug if lost else log.warning)("closing libvirt connection: %s", error)

    def _release_lost(self) -> None:
        """Close connections libvirt reported closed (not from its event-loop thread);
        otherwise each one, with its close and event callbacks, leaks per reconnect."""
        with self._lock:
            lost, self._lost = self._lost, []
        for conn in lost:
            self._release(conn, lost=True)

    def _run(self) -> None:
        delay = self._delays[0]
        while not self._stopping.is_set():
            self._release_lost()
            if self._conn is None:
                try:
                    self._open()
                    delay = self._delays[0]
                except libvirt.libvirtError as error:
                    log.warning("cannot connect to %s: %s; retrying in %.1fs", self.uri,
                                error.get_error_message(), delay)
                    self._wake.wait(delay)
                    delay = min(delay * 2, self._delays[1])
                    continue
            self._wake.wait()
            self._wake.clear()

    def _open(self) -> None:
        if self._embedded:  # the connect hooks (autostart) run on this thread
            adopt_system_identity()
        with libvirt_call("virConnectOpen"):
            conn = libvirt.open(self.uri)
        # local and embedded drivers have no keepalive; nothing to probe
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(*self._keepalive)
        conn.registerCloseCallback(self._closed, None)
        try:
            for hook in self._hooks:
                hook(conn)
        except libvirt.libvirtError as error:
            # e.g. an event registration refused: say so, and do not leak
            # this connection (with its callbacks) on every retry
            log.error("connected to %s, but setting it up failed: %s", self.uri,
                      error.get_error_message())
            self._release(conn)
            raise
        with self._lock:
            self._conn = conn
        log.info("connected to %s (%s)", self.uri, conn.getType())
        for listener in self._listeners:
            listener(True)

    def _closed(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        log.warning("libvirt connection to %s closed (reason %d)", self.uri, reason)
        with self._lock:
            if self._conn is not conn:
                return
            self._conn = None
            self._lost.append(conn)
            self.reconnects += 1
        for listener in self._listeners:
            listener(False)
        self._wake.set()
