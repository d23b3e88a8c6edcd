"""Shared code of the osteotel services: settings, the InfluxDB store, logging, the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("osteotel")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
