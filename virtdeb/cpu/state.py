"""Where the CPU engine keeps its state under /var/lib/virtdeb/cpu, and the one reader of
those files.  A leaf of cpu/: the microcode path, the fleet's saved baseline and rule
``cpu`` all read from here and import nothing of each other for it."""

from __future__ import annotations

import json
from typing import Any

from virtdeb import fsio
from virtdeb.errors import VirtdebError
from virtdeb.host import Host

STATE = "/var/lib/virtdeb/cpu"
MARKER = f"{STATE}/check-after-boot"  # a microcode package changed: check after the boot
BASELINE = f"{STATE}/baseline.json"  # the host CPU's features, as last recorded
LAST_REPORT = f"{STATE}/last-report.json"  # the last check of the microcode path
FLEET_STATE = f"{STATE}/fleet.json"  # virtdeb cpu-baseline --save


def read_json(host: Host, abspath: str) -> dict[str, Any] | None:
    """One of virtdeb's state files, or None when absent or unreadable."""
    try:
        data = fsio.read_bytes(host.path(abspath), abspath)
        value = None if data is None else json.loads(data)
    except (VirtdebError, ValueError):
        return None
    return value if isinstance(value, dict) else None
