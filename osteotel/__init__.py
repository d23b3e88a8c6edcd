"""The core every osteotel service shares: settings, errors, logs, float formatting and the
InfluxDB store (docs/architecture.md: it imports nothing else of ours)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("osteotel")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
