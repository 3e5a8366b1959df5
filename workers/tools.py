"""Operator tools of the `lifeline` command beyond the processes (send, demo)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Command = tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]
COMMANDS: dict[str, Command] = {}
