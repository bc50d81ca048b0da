"""Python client and command line for virtmesh."""

from virtmesh_client.client import Client, ClientError, ConfigError

#: the one version of the client distribution (client/pyproject.toml reads it) and of
#: ``virtmesh --version``
__version__ = "0.1.0"

__all__ = ["Client", "ClientError", "ConfigError", "__version__"]
