"""Bluesky documents as the ecosystem expects them: valid against event-model, scan_id continuous per lab
(across RunEngines and restarts), start documents that say which sample, detectors, motors, points and hints,
with the task's ids."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import bluesky
import pytest
from conformance import no_progress
from event_model import DocumentNames, schema_validators
from packaging.version import Version

from ppu.backends.base import TaskRun
from ppu.backends.documents import TiledSink
from ppu.backends.physical import PhysicalBackend
from ppu.backends.registry import build_backend
from ppu.models import ResultStatus
from ppu.simulators.mof import candidate_pool


def _entry(tmp: Path, type_: str, name: str) -> dict[str, Any]:
    return {"type": type_, "name": name, "simulated": True, "time_scale": 1e5, "run_dir": str(tmp / "run"),
            "lab": f"docs-{tmp.name}", "world": {"seed": 5}, "seed": 1}


async def _campaign(tmp: Path) -> list[Any]:
    robot = build_backend(_entry(tmp, "synthesis_robot", "robot"))
    xrd = build_backend(_entry(tmp, "xrd", "xrd"))
    assert isinstance(robot, PhysicalBackend) and isinstance(xrd, PhysicalBackend)
    results = []
    for b in (robot, xrd):
        await b.start()
    try:
        for i in range(6):
            recipe = candidate_pool(40, seed=2)[i].model_dump(mode="json")
            [res] = await robot.run([TaskRun(task_id=f"s{i}", attempt=1, capability="synthesize",
                                             inputs={"recipe": recipe}, campaign="c9")], no_progress)
            results.append(res)
            if res.status == ResultStatus.succeeded:
                [x] = await xrd.run([TaskRun(task_id=f"x{i}", attempt=1, capability="characterize.xrd",
                                             inputs={"sample_id": res.outputs["sample_id"]}, campaign="c9")],
                                    no_progress)
                results.append(x)
    finally:
        for b in (robot, xrd):
            await b.close()
    return results


def _starts(results: list[Any]) -> list[dict[str, Any]]:
    out = []
    for res in results:
        for path in str(res.provenance.documents or "").split(";"):
            if path:
                docs = [json.loads(line) for line in Path(path).read_text().splitlines()]
                for name, doc in docs:
                    schema_validators[DocumentNames(name)].validate(doc)
                out += [doc for name, doc in docs if name == "start"]
    return out


def test_scan_ids_run_on_across_instruments_and_restarts(tmp_path: Path) -> None:
    first = _starts(asyncio.run(_campaign(tmp_path)))
    second = _starts(asyncio.run(_campaign(tmp_path)))  # new RunEngines: the lab's numbering goes on
    ids = sorted(d["scan_id"] for d in first + second)
    assert ids == list(range(1, len(ids) + 1)), ids
    assert len(ids) >= 8


def test_start_documents_say_what_a_reader_needs(tmp_path: Path) -> None:
    starts = _starts(asyncio.run(_campaign(tmp_path)))
    for doc in starts:
        for key in ("sample_id", "detectors", "motors", "num_points", "hints", "task_id", "campaign", "backend"):
            assert key in doc, (doc["plan_name"], key)
        assert doc["campaign"] == "c9"
    synth = [d for d in starts if d["plan_name"] == "synthesize"]
    assert synth and all(d["sample_id"] for d in synth)


def test_runs_are_read_back_from_tiled(tmp_path: Path, tiled_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiled.client import from_uri

    monkeypatch.setenv("PPU_TEST_TILED_KEY", "secret")
    tiled = {"uri": tiled_server, "api_key_env": "PPU_TEST_TILED_KEY"}
    robot = build_backend({**_entry(tmp_path, "synthesis_robot", "robot"), "tiled": tiled})
    xrd = build_backend({**_entry(tmp_path, "xrd", "xrd"), "tiled": tiled})

    async def go() -> Any:
        for b in (robot, xrd):
            await b.start()
        try:
            for i in range(8):
                recipe = candidate_pool(40, seed=2)[i].model_dump(mode="json")
                [s] = await robot.run([TaskRun(task_id=f"s{i}", attempt=1, capability="synthesize",
                                               inputs={"recipe": recipe})], no_progress)
                if s.status == ResultStatus.succeeded:
                    [x] = await xrd.run([TaskRun(task_id="x1", attempt=1, capability="characterize.xrd",
                                                 inputs={"sample_id": s.outputs["sample_id"]}, campaign="c7")],
                                        no_progress)
                    return x
            raise AssertionError("no synthesis succeeded")
        finally:
            for b in (robot, xrd):
                await b.close()

    res = asyncio.run(go())
    assert res.status == ResultStatus.succeeded
    assert tiled_server in str(res.provenance.documents)  # the result says where its runs are
    client = from_uri(tiled_server, api_key="secret")
    measured = [client[uid] for uid in res.provenance.run_uids
                if client[uid].metadata["start"]["plan_name"] == "measure_xrd"]
    [run] = measured
    start = run.metadata["start"]
    assert start["task_id"] == "x1" and start["campaign"] == "c7" and start["sample_id"]
    assert run.metadata["stop"]["exit_status"] == "success"
    # the event stream is one Tiled node with a column per data key (seq_num and time too), one row per event;
    # its units and shapes travel in its metadata (the data keys of the descriptor). Where bluesky-tiled-plugins
    # is installed the client reads it the Bluesky way (time is the dimension, seq_num left out of `read()`),
    # else as plain columns: the same rows either way.
    stream = run["primary"]
    assert {"seq_num", "time"} <= set(stream)
    assert stream["seq_num"].read().tolist() == [1]
    assert stream.read()["xrd_intensity"].shape[0] == 1
    keys = run["primary"].metadata["data_keys"]
    assert keys["xrd_two_theta"]["units"] == "deg" and keys["xrd_intensity"]["shape"][0] > 100
    # array readings are Tiled arrays beside the table (one row per event), numbers as measured, equal to
    # the JSONL copy of the same run
    intensity = run["primary"]["xrd_intensity"].read()
    assert intensity.dtype.kind == "f" and intensity.shape == (1, keys["xrd_intensity"]["shape"][0])
    [jsonl] = [p for p in str(res.provenance.documents).split(";") if not p.startswith("http")
               and run.metadata["start"]["uid"] in p]
    [event] = [d for n, d in (json.loads(line) for line in Path(jsonl).read_text().splitlines()) if n == "event"]
    assert intensity[0].tolist() == event["data"]["xrd_intensity"]
    client.context.close()


def test_the_tiled_sink_writes_with_the_tiled_writer_installed(tiled_server: str) -> None:
    """bluesky 1.16 moved TiledWriter into bluesky-tiled-plugins and left its old module as a shim that warns
    (an error here); bluesky 1.13 to 1.15 have it in bluesky itself. ppu[tiled] installs the plugin."""
    if importlib.util.find_spec("bluesky_tiled_plugins"):
        from bluesky_tiled_plugins import TiledWriter
    else:
        assert Version(bluesky.__version__) < Version("1.16"), "bluesky 1.16 needs bluesky-tiled-plugins"
        from bluesky.callbacks.tiled_writer import TiledWriter
    sink = TiledSink(tiled_server, api_key="secret")
    try:
        assert type(sink.writer) is TiledWriter
    finally:
        sink.close()


# Builds a simulated XRD with a Tiled sink in a fresh interpreter in which the named top-level packages cannot
# be imported, as if they were not installed; prints the TiledWriter's module, or the ConfigError.
_WITHOUT = """
import importlib.abc, json, sys

absent = set(sys.argv[1].split(","))

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())

from ppu.backends.registry import build_backend
from ppu.errors import ConfigError

entry = json.loads(sys.argv[2])
try:
    backend = build_backend(entry)
except ConfigError as exc:
    print(json.dumps({"error": str(exc), "field": exc.field, "hint": exc.hint}))
else:
    print(json.dumps({"writer": type(backend.sink.sinks[1].writer).__module__}))
"""


def _xrd_without(absent: str, tmp: Path, tiled_server: str) -> dict[str, Any]:
    entry = {**_entry(tmp, "xrd", "xrd"), "tiled": {"uri": tiled_server, "api_key_env": "PPU_TEST_TILED_KEY"}}
    out = subprocess.run([sys.executable, "-c", _WITHOUT, absent, json.dumps(entry)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PPU_TEST_TILED_KEY": "secret"})
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.splitlines()[-1]))


def test_without_bluesky_tiled_plugins_the_sink_falls_back_or_names_the_extra(tmp_path: Path,
                                                                               tiled_server: str) -> None:
    got = _xrd_without("bluesky_tiled_plugins", tmp_path, tiled_server)
    if Version(bluesky.__version__) < Version("1.16"):
        assert got == {"writer": "bluesky.callbacks.tiled_writer"}  # bluesky's own, as before the move
    else:  # the shim left in bluesky fails without the plugin: the lab file's error says what to install
        assert got["field"] == "tiled" and "bluesky-tiled-plugins" in got["error"], got
        assert "pip install 'ppu[tiled]'" in got["error"] and got["hint"] == "pip install 'ppu[tiled]'"


def test_without_the_tiled_extra_a_tiled_sink_is_a_config_error_naming_it(tmp_path: Path, tiled_server: str) -> None:
    """`pip install ppu` without [tiled]: neither tiled nor bluesky-tiled-plugins, whatever the bluesky."""
    got = _xrd_without("tiled,bluesky_tiled_plugins", tmp_path, tiled_server)
    assert got["field"] == "tiled" and got["hint"] == "pip install 'ppu[tiled]'", got
    assert "ppu[tiled]" in got["error"] and "TiledWriter" in got["error"]
