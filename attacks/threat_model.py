"""Perturbation budgets in pixel units: parse them from configs, format them for metric names."""

import math
import numbers

from core.errors import ConfigError

_DENOMINATOR = 255


NORMS = ("linf", "l2")


def parse_norm(norm: str) -> str:
    """Canonical threat-model name, "linf" or "l2" (case-insensitive, so AutoAttack's "Linf" works too)."""
    name = str(norm).lower()
    if name not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return name


def parse_epsilon(value, norm: str = "linf") -> float:
    """Return a budget (radius or step size) from a number or text like "8/255", "8_255" or "0.031".

    Images are in [0, 1], so an L-inf budget outside [0, 1] is a configuration mistake; an L2
    budget only has to be finite and non-negative (the L2 diameter of the image box is sqrt(pixels)).
    """
    linf = parse_norm(norm) == "linf"
    number = _to_float(value)
    if number is None or not math.isfinite(number) or number < 0 or (linf and number > 1):
        bound = "[0, 1]" if linf else ">= 0"
        raise ConfigError(f"epsilon must be a number {bound} or a fraction like '8/255', got {value!r}")
    return number


def format_epsilon(epsilon) -> str:
    """Stable short key for metric names: "4/255" when epsilon*255 is an integer, else "0.01"."""
    epsilon = parse_epsilon(epsilon, norm="l2")
    steps = round(epsilon * _DENOMINATOR)
    if math.isclose(epsilon * _DENOMINATOR, steps, rel_tol=0.0, abs_tol=1e-4):
        if steps == 0:
            return "0"
        if steps == _DENOMINATOR:
            return "1"
        return f"{steps}/{_DENOMINATOR}"
    return f"{epsilon:.6g}"


def epsilon_label(epsilon) -> str:
    """The epsilon as it appears in metric keys and report sections: "4_255" (no slash, which W&B and
    TensorBoard would read as a group separator), "0", "1" or "0.5"; `parse_epsilon` reads it back."""
    return format_epsilon(epsilon).replace("/", "_")


def _to_float(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if not isinstance(value, str):
        return None
    parts = value.strip().replace("_", "/").split("/")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) == 2 and values[1] > 0:
        return values[0] / values[1]
    return None
