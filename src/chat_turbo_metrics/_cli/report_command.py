"""``chat-turbo-metrics report``: its options (the report itself is :mod:`chat_turbo_metrics._cli.report`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add the ``report`` sub-command."""


def run(args: argparse.Namespace) -> int:
    """Run the report."""
    return 2
