"""virtmesh-compute: run the compute service."""

import sys

from services.common.daemon import main as run
from services.compute import SPEC


def main() -> int:
    return run(SPEC)


if __name__ == "__main__":
    sys.exit(main())
