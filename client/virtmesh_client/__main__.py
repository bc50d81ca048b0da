"""``python -m virtmesh_client``: the ``virtmesh`` command line."""

import sys

from virtmesh_client.cli import main

sys.exit(main())
