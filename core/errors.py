"""Errors that end a run with one clear line (train.py prints them without a traceback)."""


class MedRobustError(Exception):
    """Base class: a user-facing problem with input, configuration or files."""


class DataError(MedRobustError):
    """A dataset file or option is missing, corrupt or impossible."""


class ConfigError(MedRobustError):
    """A configuration value is impossible (an epsilon outside [0, 1], an unknown attack, ...)."""
