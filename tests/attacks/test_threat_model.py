import math

import pytest

from core.errors import ConfigError, MedRobustError
from attacks.threat_model import format_epsilon, parse_epsilon


@pytest.mark.parametrize(
    "value, expected",
    [
        ("8/255", 8 / 255),
        (" 4 / 255 ", 4 / 255),
        ("0.031", 0.031),
        ("1e-2", 0.01),
        ("0", 0.0),
        (0, 0.0),
        (1, 1.0),
        (0.5, 0.5),
        ("255/255", 1.0),
    ],
)
def test_parse_epsilon_accepts_numbers_and_fractions(value, expected):
    parsed = parse_epsilon(value)
    assert isinstance(parsed, float)
    assert math.isclose(parsed, expected, rel_tol=1e-12)


@pytest.mark.parametrize(
    "value", ["abc", "", "8/", "/255", "8/0", "8/-255", "1/2/3", "nan", "inf", -0.1, 2, "-1/255", "300/255",
              True, None, [8, 255]]
)
def test_parse_epsilon_rejects_unparsable_negative_or_above_one(value):
    with pytest.raises(ConfigError) as error:
        parse_epsilon(value)
    assert isinstance(error.value, MedRobustError)
    message = str(error.value)
    assert "\n" not in message and repr(value) in message


@pytest.mark.parametrize(
    "epsilon, key",
    [(4 / 255, "4/255"), ("8/255", "8/255"), (0.01, "0.01"), (0.031, "0.031"), (0, "0"), (1, "1"),
     (0.5, "0.5"), (0.031372549, "8/255")],
)
def test_format_epsilon_gives_short_stable_keys(epsilon, key):
    assert format_epsilon(epsilon) == key


def test_format_epsilon_round_trips_through_parse():
    for steps in range(1, 255):
        epsilon = steps / 255
        assert math.isclose(parse_epsilon(format_epsilon(epsilon)), epsilon, rel_tol=1e-12)


def test_format_epsilon_validates_like_parse():
    with pytest.raises(ConfigError):
        format_epsilon(-1 / 255)


def test_l2_budgets_may_exceed_one_but_linf_budgets_may_not():
    from attacks.threat_model import parse_epsilon

    assert parse_epsilon("3/2", norm="l2") == 1.5
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        parse_epsilon(1.5, norm="linf")
    with pytest.raises(ConfigError, match="norm must be one of"):
        parse_epsilon(0.1, norm="l1")
