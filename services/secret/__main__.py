"""virtmesh-secret: run the secret service."""

import sys

from services.common.daemon import main as run
from services.secret import SPEC


def main() -> int:
    return run(SPEC)


if __name__ == "__main__":
    sys.exit(main())
