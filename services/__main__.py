"""``python -m services NAME [flags]`` (the ``virtmesh-service NAME`` program): run
one service of the registry, e.g. ``python -m services compute --uri test:///default``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.common import registry
from services.common.daemon import main as run


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print(f"usage: virtmesh-service NAME [flags]   (NAME: {', '.join(registry.names())}; "
              "NAME --help lists the flags)", file=sys.stderr)
        return 2
    try:
        spec = registry.spec(args[0])
    except KeyError as error:
        print(f"virtmesh-service: {error.args[0]}", file=sys.stderr)
        return 2
    return run(spec, args[1:])


if __name__ == "__main__":
    sys.exit(main())
