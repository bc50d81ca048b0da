"""The compute service: libvirt's QEMU driver (virtqemud) as virtmesh.compute.v1."""

from prometheus_client.registry import Collector

from services.common.config import Config
from services.common.daemon import ServiceSpec
from services.compute.backend import prepare_embedded_root
from services.compute.metrics import GuestStatsCollector
from services.compute.servicer import ComputeServicer
from virtmesh.compute.v1 import compute_service_pb2


def _stop_guests(servicer: ComputeServicer, config: Config) -> None:
    if config.guests_on_exit != "keep":
        servicer.backend.stop_guests(config.guests_on_exit, config.shutdown_timeout)


def _busy(servicer: ComputeServicer) -> bool:
    """Never idle out while guests run (a watch of their events is a call in flight,
    which keeps any service)."""
    return bool(servicer.backend.list_domains(active=True, persistent=None, autostart=None))


def _collectors(servicer: ComputeServicer, config: Config) -> list[Collector]:
    return [GuestStatsCollector(servicer.backend.connection, config.scrape_budget)]


SPEC = ServiceSpec(
    name="compute",
    proto=compute_service_pb2,
    driver="qemu",
    embedded=True,
    port_offset=1,
    objects=("DOMAIN", "DOMAIN_SNAPSHOT", "DOMAIN_CHECKPOINT"),
    servicer_factory=ComputeServicer,
    prepare=prepare_embedded_root,
    on_exit=_stop_guests,
    collectors=_collectors,
    busy=_busy,
)
