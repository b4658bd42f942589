"""Perturbation budgets in pixel units: parse them from configs, format them for metric names."""

import math
import numbers

from datamodules.errors import ConfigError

_DENOMINATOR = 255


def parse_epsilon(value) -> float:
    """Return epsilon as a float in [0, 1] from a number or text like "8/255" or "0.031".

    Images are in [0, 1], so a budget outside [0, 1] is a configuration mistake.
    """
    number = _to_float(value)
    if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ConfigError(
            f"epsilon must be a number in [0, 1] or a fraction like '8/255', got {value!r}"
        )
    return number


def format_epsilon(epsilon) -> str:
    """Stable short key for metric names: "4/255" when epsilon*255 is an integer, else "0.01"."""
    epsilon = parse_epsilon(epsilon)
    steps = round(epsilon * _DENOMINATOR)
    if math.isclose(epsilon * _DENOMINATOR, steps, rel_tol=0.0, abs_tol=1e-4):
        if steps == 0:
            return "0"
        if steps == _DENOMINATOR:
            return "1"
        return f"{steps}/{_DENOMINATOR}"
    return f"{epsilon:.6g}"


def _to_float(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if not isinstance(value, str):
        return None
    parts = value.split("/")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) == 2 and values[1] > 0:
        return values[0] / values[1]
    return None
