"""Value checks shared by configs, modules and command lines; each failure is one ConfigError line."""
from __future__ import annotations

from core.errors import ConfigError


def positive_int(name: str, value) -> int:
    """`value` when it is an integer >= 1 (text such as "3" from a command line is accepted)."""
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value
