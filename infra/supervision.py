"""The supervisor's status file (`lifeline up` writes it; `lifeline status` and the `lifeline` engine adapter read
it): one JSON document with each supervised process, its pid, state, health, restarts and last log lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The status file of a live supervisor in data_dir, or None (no file, unreadable, or the supervisor is gone)."""
    path = data_dir / STATUS_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = data.get("supervisor_pid")
    if not isinstance(pid, int) or data.get("stopping"):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return data
