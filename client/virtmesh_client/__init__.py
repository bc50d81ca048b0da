"""Python client and command line for virtmesh."""

from virtmesh_client.client import Client, ClientError, ConfigError

__all__ = ["Client", "ClientError", "ConfigError"]
