"""virtmesh-gateway: run the gateway."""

import asyncio
import logging
import sys

from gateway import config as gateway_config
from gateway.server import Gateway
from services.common.config import ConfigError, describe
from services.common.logs import setup_logging


def main() -> int:
    try:
        config = gateway_config.load()
    except ConfigError as error:
        print(f"virtmesh-gateway: {error}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format, "gateway")
    logging.getLogger("gateway").info("starting with %s", describe(config))
    try:
        asyncio.run(Gateway(config).serve_until_signalled())
    except ConfigError as error:
        logging.getLogger("gateway").error("cannot start: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
