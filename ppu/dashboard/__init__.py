"""A live web dashboard of the lab (issue 8): backends, timeline, queues, approvals, campaigns.

``ppu dashboard`` calls :func:`serve`; tests and notebooks use :class:`DashboardThread`. The
dashboard talks to the orchestrator only through the client, like any other program.
"""

from ppu.dashboard.app import create_app
from ppu.dashboard.server import DashboardThread, serve
from ppu.dashboard.settings import DashboardSettings

__all__ = ["DashboardSettings", "DashboardThread", "create_app", "serve"]
