"""The checkpoint, backup and snapshot-tree RPCs of ComputeService, a mixin of
ComputeServicer. A backup runs as the domain's job: GetDomainJobInfo and
AbortDomainJob (servicer_jobs.py) observe and abort it."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.config import Config
from services.common.servicer import optional_bools
from services.compute import convert
from services.compute import convert_checkpoints as conv
from services.compute.backend import ComputeBackend
from services.compute.backend_checkpoints import CheckpointsBackend
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


class CheckpointsServicer:
    """A base of ComputeServicer: its ``__init__`` passes through this one's, which
    adds the checkpoints backend (backups write into the config's save directory)."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.checkpoints = CheckpointsBackend(backend, config.save_path)

    def _page(self, items: list[Any], name: Any, summary: Any, request: Any,
              topological: bool, *filters: object) -> tuple[list[Any], str]:
        return self.page(conv.ordered(items, name, topological),  # type: ignore[attr-defined,no-any-return]
                         conv.key, lambda pair: summary(pair[1]), request, *filters)

    # -- snapshots -------------------------------------------------------------

    def GetCurrentSnapshot(self, request: pb.GetCurrentSnapshotRequest,
                           context: Ctx) -> pb.GetCurrentSnapshotResponse:
        return pb.GetCurrentSnapshotResponse(
            snapshot=convert.snapshot(self.checkpoints.current_snapshot(request.name)))

    def GetSnapshotParent(self, request: pb.GetSnapshotParentRequest,
                          context: Ctx) -> pb.GetSnapshotParentResponse:
        parent = self.checkpoints.snapshot_parent(request.name, request.snapshot)
        return pb.GetSnapshotParentResponse(snapshot=convert.snapshot(parent))

    def ListSnapshotChildren(self, request: pb.ListSnapshotChildrenRequest,
                             context: Ctx) -> pb.ListSnapshotChildrenResponse:
        flags = conv.snapshot_list_flags(request.descendants, request.filter)
        children = self.checkpoints.snapshot_children(request.name, request.snapshot, flags)
        snapshots, token = self._page(children, convert.snapshot_name, convert.snapshot,
                                      request, request.filter.topological, request.name,
                                      request.snapshot, flags)
        return pb.ListSnapshotChildrenResponse(snapshots=snapshots, next_page_token=token)

    # -- checkpoints -----------------------------------------------------------

    def _checkpoint(self, cp: Any) -> pb.Checkpoint:
        return conv.checkpoint(self.checkpoints.checkpoint_xml(cp))

    def CreateCheckpoint(self, request: pb.CreateCheckpointRequest,
                         context: Ctx) -> pb.CreateCheckpointResponse:
        cp = self.checkpoints.create_checkpoint(request.name, request.xml, request.redefine,
                                                request.quiesce, request.redefine_validate)
        return pb.CreateCheckpointResponse(checkpoint=self._checkpoint(cp))

    def ListCheckpoints(self, request: pb.ListCheckpointsRequest,
                        context: Ctx) -> pb.ListCheckpointsResponse:
        flags = conv.checkpoint_list_flags(request.roots,
                                           optional_bools(request, "leaves")["leaves"],
                                           request.topological)
        listed = self.checkpoints.list_checkpoints(request.name, flags)
        checkpoints, token = self._page(listed, lambda cp: cp.getName(), self._checkpoint,
                                        request, request.topological, request.name, flags)
        return pb.ListCheckpointsResponse(checkpoints=checkpoints, next_page_token=token)

    def GetCheckpoint(self, request: pb.GetCheckpointRequest,
                      context: Ctx) -> pb.GetCheckpointResponse:
        cp = self.checkpoints.checkpoint(request.name, request.checkpoint)
        return pb.GetCheckpointResponse(checkpoint=conv.checkpoint(
            self.checkpoints.checkpoint_xml(cp, request.size, request.no_domain,
                                            request.secure)))

    def GetCheckpointParent(self, request: pb.GetCheckpointParentRequest,
                            context: Ctx) -> pb.GetCheckpointParentResponse:
        parent = self.checkpoints.checkpoint_parent(request.name, request.checkpoint)
        return pb.GetCheckpointParentResponse(checkpoint=self._checkpoint(parent))

    def ListCheckpointChildren(self, request: pb.ListCheckpointChildrenRequest,
                               context: Ctx) -> pb.ListCheckpointChildrenResponse:
        flags = conv.checkpoint_list_flags(request.descendants,
                                           optional_bools(request, "leaves")["leaves"],
                                           request.topological)
        children = self.checkpoints.checkpoint_children(request.name, request.checkpoint,
                                                        flags)
        checkpoints, token = self._page(children, lambda cp: cp.getName(), self._checkpoint,
                                        request, request.topological, request.name,
                                        request.checkpoint, flags)
        return pb.ListCheckpointChildrenResponse(checkpoints=checkpoints,
                                                 next_page_token=token)

    def DeleteCheckpoint(self, request: pb.DeleteCheckpointRequest,
                         context: Ctx) -> pb.DeleteCheckpointResponse:
        self.checkpoints.delete_checkpoint(request.name, request.checkpoint, request.children,
                                           request.children_only, request.metadata_only)
        return pb.DeleteCheckpointResponse()

    # -- backups ---------------------------------------------------------------

    def BeginBackup(self, request: pb.BeginBackupRequest,
                    context: Ctx) -> pb.BeginBackupResponse:
        self.checkpoints.begin_backup(request.name, request.backup_xml, request.checkpoint_xml,
                                      request.reuse_external)
        return pb.BeginBackupResponse()

    def GetBackupXML(self, request: pb.GetBackupXMLRequest,
                     context: Ctx) -> pb.GetBackupXMLResponse:
        return pb.GetBackupXMLResponse(xml=self.checkpoints.backup_xml(request.name))
