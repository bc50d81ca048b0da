"""virtmesh's own version, from the installed package metadata."""

from importlib import metadata

try:
    VERSION = metadata.version("virtmesh")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0+unknown"
