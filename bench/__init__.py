"""Benchmarks: virtmesh's gRPC paths measured against libvirt's own remote protocol."""
