"""virtmesh's driver services.

libvirt forks helper processes (QEMU capability probes, QEMU itself) from our
process. gRPC's fork handlers then try to restart its pollers in the child,
which aborts it, so they are turned off before anything imports grpc.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
