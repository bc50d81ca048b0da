"""virtmesh's tests.

Loaded before conftest: the services turn gRPC's fork handlers off (see
services/__init__.py), and so must the test process, which runs gRPC servers and
embedded QEMU side by side, before anything imports grpc.
"""

import services  # noqa: F401
