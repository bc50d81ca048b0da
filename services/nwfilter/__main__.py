"""virtmesh-nwfilter: run the nwfilter service."""

import sys

from services.common.daemon import main as run
from services.nwfilter import SPEC


def main() -> int:
    return run(SPEC)


if __name__ == "__main__":
    sys.exit(main())
