"""virtmesh-network: run the network service."""

import sys

from services.common.daemon import main as run
from services.network import SPEC


def main() -> int:
    return run(SPEC)


if __name__ == "__main__":
    sys.exit(main())
