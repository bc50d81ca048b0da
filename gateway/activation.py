"""Start a driver service on its first call: libvirt's socket activation, our way.

systemd cannot activate our gRPC servers through their sockets (grpcio has no API
to serve an inherited descriptor; see deploy/systemd/README.md), so the gateway
does it: when a call finds its service unreachable, it runs the configured
command with ``{service}`` replaced by the driver's name (only names from the
route table, never one a caller chose), waits until the service's health says
SERVING, and the call is made again. Concurrent first calls share one activation.

The command either starts the service and exits (``systemctl start
virtmesh@{service}.service``: a non-zero status is a failure), or is the service
itself (``virtmesh-service {service} --idle-timeout 600 ...``), which then runs detached
in a session of its own and outlives the gateway. Its output is appended to
``<state_dir>/log/<service>.log``, or goes where the gateway's own output goes
when that file cannot be written (under systemd: the journal).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import subprocess
from pathlib import Path
from typing import IO

from gateway.backends import Backends
from services.common import metrics

log = logging.getLogger(__name__)


class ActivationError(Exception):
    """The service could not be started; the message says why."""


class Activator:
    def __init__(self, command: str, timeout: float, backends: Backends, log_dir: Path,
                 poll: float = 0.2) -> None:
        self.argv = shlex.split(command)
        self.timeout = timeout
        self.backends = backends
        self.log_dir = log_dir
        self.poll = poll
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._children: list[subprocess.Popen[bytes]] = []

    async def activate(self, driver: str) -> None:
        """Make sure ``driver`` serves: start it, or wait for the start already under
        way. Raises ActivationError."""
        task = self._pending.get(driver)
        if task is None:
            task = asyncio.create_task(self._start(driver))
            self._pending[driver] = task
            task.add_done_callback(lambda _: self._pending.pop(driver, None))
        # A caller that gives up (deadline, cancel) does not end the start for the others.
        await asyncio.shield(task)

    async def serving(self, driver: str) -> bool:
        return (await self.backends.health(driver)).serving

    def _spawn(self, driver: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # Reap the services started earlier that have exited since (idle, say).
        self._children = [child for child in self._children if child.poll() is None]
        output: IO[bytes] | None
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{driver}.log", "ab")  # noqa: SIM115
        except OSError:
            output = None  # the gateway's own stdout (under systemd: the journal)
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            raise ActivationError(f"cannot run {argv[0]}: {error.strerror}") from None
        finally:
            if output is not None:
                output.close()
        self._children.append(child)
        return child

    async def _start(self, driver: str) -> None:
        if await self.serving(driver):  # started meanwhile, e.g. by an earlier activation
            return
        argv = [arg.replace("{service}", driver) for arg in self.argv]
        command = shlex.join(argv)
        metrics.ACTIVATIONS.labels(driver).inc()
        log.info("starting the %s service: %s", driver, command)
        child = self._spawn(driver, argv)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not await self.serving(driver):
            status = child.poll()
            if status:
                raise ActivationError(f"`{command}` exited with status {status}")
            if loop.time() > deadline:
                raise ActivationError(f"not serving {self.timeout:g} s after `{command}`")
            await asyncio.sleep(self.poll)
        log.info("the %s service is serving", driver)
