"""virtmesh-gateway: run the gateway: one process, or a supervisor of several workers."""

import asyncio
import logging
import sys

from gateway import config as gateway_config
from gateway.server import Gateway, preflight
from gateway.workers import Supervisor
from services.common.config import ConfigError, describe
from services.common.logs import setup_logging


def main() -> int:
    try:
        config = gateway_config.load()
    except ConfigError as error:
        print(f"virtmesh-gateway: {error}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format, "gateway")
    log = logging.getLogger("gateway")
    log.info("starting with %s", describe(config))
    try:
        if config.workers > 1:
            preflight(config)  # what would stop every worker stops the supervisor
            return Supervisor(config).run()
        asyncio.run(Gateway(config).serve_until_signalled())
    except ConfigError as error:
        log.error("cannot start: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
