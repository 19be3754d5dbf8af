"""The dashboard's settings: one described class, read from ``PPU_DASHBOARD_*`` (STYLE.md §7)."""

from __future__ import annotations

import getpass
import ipaddress
import secrets
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ppu import packs
from ppu.errors import ConfigError


def default_objectives() -> dict[str, str]:
    """What the campaign view plots when nothing else is configured: what the loaded packs declare."""
    return packs.active().objectives()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still a name for the audit log
        return "operator"


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PPU_DASHBOARD_", extra="forbid")

    host: str = Field("127.0.0.1", description="address the web server binds (loopback unless a token is set)")
    port: int = Field(8765, ge=0, le=65535, description="port of the web server (0: any free port)")
    token: str | None = Field(None, min_length=8, max_length=256,
                              description="secret a person needs to act (approve, review); generated if unset")
    user: str = Field(default_factory=_user, min_length=1, max_length=64,
                      description="who acts with `token`; the audit log records dashboard:<user>")
    users: dict[str, str] = Field(default_factory=dict,
                                  description="more people: name -> their own token (each audited by name)")
    objectives: dict[str, str] = Field(default_factory=default_objectives,
                                       description="capability -> output the campaign view plots")
    maximize: bool = Field(True, description="best-so-far is the largest value (False: the smallest)")
    refresh_s: float = Field(1.0, gt=0.05, le=60, description="longest time between two pushed snapshots")
    gantt_window_s: float = Field(600.0, gt=1, le=7 * 86400, description="how much history the timeline shows")


_OPTIONS = {"host": "--host", "port": "--port", "token": "--token", "user": "PPU_DASHBOARD_USER"}


def settings_from(**overrides: Any) -> DashboardSettings:
    """Settings from ``PPU_DASHBOARD_*`` and ``overrides`` (the CLI's options); a bad value is a
    ConfigError naming the option (or variable) and what it takes."""
    try:
        return DashboardSettings(**overrides)
    except ValidationError as exc:
        e = exc.errors()[0]
        name = str(e["loc"][0]) if e["loc"] else "settings"
        where = _OPTIONS.get(name, name) if name in overrides else f"PPU_DASHBOARD_{name.upper()}"
        info = DashboardSettings.model_fields.get(name)
        what = f" ({info.description})" if info is not None and info.description else ""
        raise ConfigError(f"{where}: {e['msg']}", field=where, hint=f"give {where} a valid value{what}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked(settings: DashboardSettings) -> tuple[DashboardSettings, bool]:
    """Refuse an open non-loopback bind; generate a token when none is set. Returns (settings, generated)."""
    if settings.token is None and not is_loopback(settings.host):
        raise ConfigError(f"refusing to serve the dashboard on {settings.host} without a token",
                          field="token",
                          hint="set PPU_DASHBOARD_TOKEN (or --token), or bind 127.0.0.1 and use an SSH tunnel")
    if settings.token is not None:
        return settings, False
    return settings.model_copy(update={"token": secrets.token_urlsafe(18)}), True
