"""Structured logging: one event per line, as `event key=value ...`.

Secrets never reach a log line: settings hold them as `SecretStr`, which prints as `**********`.
"""

import logging
import sys
from typing import Any

__all__ = ["configure", "kv"]


def _value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def kv(event: str, **fields: Any) -> str:
    """Format one log event as `event key=value ...`, quoting values that need it."""
    parts = [event]
    parts.extend(f"{key}={_value(value)}" for key, value in fields.items() if value is not None)
    return " ".join(parts)


def configure(level: str = "INFO") -> None:
    """Send log lines to stderr as `time level logger event key=value ...`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
