"""Suspenders from the lab file: an instrument's plans wait while an interlock or a beam is not ready.

A lab file lists them per physical backend, as a beamline profile would install them on its
RunEngine (``RE.install_suspender``)::

    suspenders:
      - pv: "BL1:ENCLOSURE:DOOR"        # real mode: this PV; simulated: a soft signal of that name
        when: high                      # suspend while the signal is high (truthy)
        message: enclosure door open
      - signal: chamber.pressure        # or a signal of this backend's own devices
        when: above
        threshold: 5.0
        resume_threshold: 4.0
        sleep_s: 10                     # after the signal is back to normal, wait this long

Bluesky does the suspending: a tripped suspender halts the plan at its next checkpoint and
resumes it when the signal returns (a plan with no checkpoint to rewind to is aborted, and
``once`` work goes to review). Which suspenders are tripped is read by
:meth:`ppu.backends.runengine.RunEngineHost.suspension`, so a suspended plan is reported as such.
"""

from __future__ import annotations

from typing import Any, Literal

from bluesky.suspenders import SuspendBoolHigh, SuspendBoolLow, SuspendCeil, SuspenderBase, SuspendFloor
from ophyd import Device, Signal
from pydantic import Field, model_validator

from ppu.backends.devices import Readback
from ppu.errors import ConfigError
from ppu.models import Strict


class SuspenderConfig(Strict):
    pv: str | None = Field(None, min_length=1, max_length=256,
                           description="the PV watched in real mode (a simulated backend gets a soft signal "
                                       "of this name, which its twin or a test sets)")
    signal: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$",
                               description="or a signal of this backend's devices, as 'device.component'")
    when: Literal["high", "low", "above", "below"] = Field(
        description="suspend while the signal is high (truthy), low, above or below `threshold`")
    threshold: float | None = Field(None, allow_inf_nan=False, description="for `above`/`below`")
    resume_threshold: float | None = Field(None, allow_inf_nan=False,
                                           description="resume only past this value (default: `threshold`)")
    sleep_s: float = Field(0.0, ge=0, le=86400, description="once back to normal, wait this long before resuming")
    message: str = Field("", max_length=500, description="why, as the operator should read it")
    initial: float = Field(0.0, allow_inf_nan=False,
                           description="simulated `pv` only: the soft signal's value at start (not tripped)")

    @model_validator(mode="after")
    def _one_source(self) -> SuspenderConfig:
        if (self.pv is None) == (self.signal is None):
            raise ValueError("give exactly one of `pv` (a PV to watch) or `signal` ('device.component')")
        if self.when in ("above", "below") and self.threshold is None:
            raise ValueError(f"`when: {self.when}` needs a `threshold`")
        if self.when in ("high", "low") and (self.threshold is not None or self.resume_threshold is not None):
            raise ValueError(f"`when: {self.when}` takes no threshold (it watches a boolean)")
        r, t = self.resume_threshold, self.threshold
        if r is not None and t is not None and (r > t if self.when == "above" else r < t):
            side = "at or below" if self.when == "above" else "at or above"
            raise ValueError(f"`resume_threshold` must be {side} `threshold` for `when: {self.when}`")
        return self

    @property
    def source(self) -> str:
        return self.pv or self.signal or ""


class Interlock(Readback):
    """The soft stand-in for a suspender's PV in a simulated lab (read-only to plans, like the PV)."""


def _signal(cfg: SuspenderConfig, devices: dict[str, Device], simulated: bool, name: str) -> Signal:
    if cfg.signal is not None:
        dev_name, _, attr = cfg.signal.partition(".")
        obj: Any = devices.get(dev_name)
        for part in attr.split("."):
            obj = getattr(obj, part, None) if obj is not None else None
        if not isinstance(obj, Signal):
            raise ConfigError(f"backend {name}: suspender signal {cfg.signal!r} is not a signal of its devices",
                              field="suspenders.signal",
                              hint=f"use 'device.component' of one of: {', '.join(sorted(devices)) or 'none'}")
        return obj
    assert cfg.pv is not None
    if simulated:
        return Interlock(value=cfg.initial, name=cfg.pv)
    from ophyd import EpicsSignalRO

    return EpicsSignalRO(cfg.pv, name=cfg.pv)


def build_suspenders(configs: list[SuspenderConfig], devices: dict[str, Device], *, simulated: bool,
                     name: str) -> list[SuspenderBase]:
    """The Bluesky suspenders a backend installs on its RunEngine, in the lab file's order."""
    out: list[SuspenderBase] = []
    for cfg in configs:
        sig = _signal(cfg, devices, simulated, name)
        msg = cfg.message or f"{cfg.source} is {cfg.when}" + (f" {cfg.threshold}" if cfg.threshold is not None else "")
        common: dict[str, Any] = {"sleep": cfg.sleep_s, "tripped_message": msg}
        s: SuspenderBase
        if cfg.when == "high":
            s = SuspendBoolHigh(sig, **common)
        elif cfg.when == "low":
            s = SuspendBoolLow(sig, **common)
        elif cfg.when == "above":
            s = SuspendCeil(sig, cfg.threshold, resume_thresh=cfg.resume_threshold, **common)
        else:
            s = SuspendFloor(sig, cfg.threshold, resume_thresh=cfg.resume_threshold, **common)
        out.append(s)
    return out


def signal_of(suspender: SuspenderBase) -> Signal:
    """The signal a suspender watches (for a test or a twin that sets a simulated interlock)."""
    return suspender._sig  # bluesky keeps it private and offers no accessor
