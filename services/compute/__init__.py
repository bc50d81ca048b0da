"""The compute service: libvirt's QEMU driver (virtqemud) as virtmesh.compute.v1."""

from prometheus_client.registry import Collector

from services.common.config import Config
from services.common.daemon import ServiceSpec
from services.compute.backend import prepare_embedded_root
from services.compute.metrics import GuestStatsCollector
from services.compute.servicer import ComputeServicer
from virtmesh.compute.v1 import compute_service_pb2, compute_service_pb2_grpc


def _stop_guests(servicer: ComputeServicer, config: Config) -> None:
    if config.guests_on_exit != "keep":
        servicer.backend.stop_guests(config.guests_on_exit, config.shutdown_timeout)


def _busy(servicer: ComputeServicer) -> bool:
    """Never idle out while guests run or anyone watches their events."""
    return servicer.events.subscriber_count > 0 or bool(
        servicer.backend.list_domains(active=True, persistent=None, autostart=None))


def _collectors(servicer: ComputeServicer, config: Config) -> list[Collector]:
    return [GuestStatsCollector(servicer.backend.connection, config.scrape_budget)]


SPEC = ServiceSpec(
    name="compute",
    default_uri="qemu:///embed?root={state_dir}/qemu",
    descriptor=compute_service_pb2.DESCRIPTOR.services_by_name["ComputeService"],
    add_to_server=compute_service_pb2_grpc.add_ComputeServiceServicer_to_server,
    servicer_factory=ComputeServicer,
    prepare=prepare_embedded_root,
    on_exit=_stop_guests,
    collectors=_collectors,
    busy=_busy,
)
