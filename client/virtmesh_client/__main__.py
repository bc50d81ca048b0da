"""``python -m virtmesh_client``: the ``virtmesh`` command line."""

from virtmesh_client.cli import command

command()
