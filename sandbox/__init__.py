"""Loop Sync provider sandbox: local HTTP servers that speak the real provider APIs (Junction first).

Importable without Django: `from sandbox import SandboxServer`. The Django app (`sandbox.apps.SandboxConfig`)
exists only so `python manage.py sandbox` is found.
"""

from __future__ import annotations

from sandbox.faults import FaultSet
from sandbox.junction import JunctionSandbox
from sandbox.server import RequestLog, SandboxServer

__all__ = ["FaultSet", "JunctionSandbox", "RequestLog", "SandboxServer"]
