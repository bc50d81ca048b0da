from virtmesh_run.cli import command

command()
