"""Command-line parsing shared by every `python -m ...` entry point: a bad argument is one line, exit code 2."""
from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line `error: ... (see --help)` with exit code 2, like every other input error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")
