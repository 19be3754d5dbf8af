"""Columnar screening tasks: binary frames at the door, a block through a torch backend, results as artifacts."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zmq.asyncio
from transport_helpers import lab_config

from ppu import protocol as p
from ppu.artifacts import ArtifactStore, npz_bytes, sha256
from ppu.backends.base import TaskRun
from ppu.backends.registry import build_backend
from ppu.digital.nets import mlp
from ppu.digital.torch_backend import Coding, TorchBackend
from ppu.drivers.mof.featurize import (
    N_FEATURES,
    candidate_columns,
    encode_prediction_batch,
    features_from_columns,
    featurize_one,
)
from ppu.errors import BackendError, NotFound, ValidationFailed
from ppu.models import ResultStatus
from ppu.transport.lab import EmbeddedLab, LabThread

ELEMENTS = ["Mg", "Zn", "Cu", "Co", "Ni", "Fe", "Mn", "Al", "Ti", "Zr"]
CAP = "predict.co2_uptake"


def candidates(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([1, 2, 3])
        els = rng.sample(ELEMENTS, k)
        w = [rng.uniform(0.05, 1.0) for _ in els]
        out.append({"composition": {e: x / sum(w) for e, x in zip(els, w, strict=True)},
                    "anneal_temperature_c": rng.uniform(200, 900), "anneal_time_h": rng.uniform(0, 24)})
    return out


def _noop(*_a: Any) -> None:
    return None


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.pt"
    torch.save(mlp(N_FEATURES, hidden=32, seed=3).state_dict(), path)
    return path


def torch_entry(weights: Path, **kw: Any) -> dict[str, Any]:
    return {"type": "torch", "name": "surrogate", "batch_size": 8, "slots": 2, "max_wait_ms": 5,
            "models": {CAP: {"factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": N_FEATURES, "hidden": 32},
                             "weights": str(weights), "version": "7"}}, **kw}


# ---- the vectorised encoder is the row encoder, column by column --------------------------------

def test_columnar_features_equal_the_row_features() -> None:
    cands = candidates(300)
    rows = np.array([featurize_one(c) for c in cands])
    block = features_from_columns(candidate_columns(cands))
    np.testing.assert_allclose(block, rows, rtol=0, atol=1e-12)
    np.testing.assert_allclose(encode_prediction_batch([{"candidate": c} for c in cands]), rows, atol=1e-12)


@pytest.mark.parametrize(("change", "field"), [
    (lambda cols: cols.pop("anneal_time_h"), "columns.anneal_time_h"),
    (lambda cols: cols.__setitem__("composition.Xx", np.zeros(5)), "columns.composition.Xx"),
    (lambda cols: cols["composition.Mg"].__setitem__(2, -0.5), "columns.composition"),
    (lambda cols: cols["anneal_time_h"].__setitem__(1, np.nan), "columns.anneal_time_h"),
])
def test_a_bad_block_is_refused_naming_the_column(change: Any, field: str) -> None:
    cols = candidate_columns(candidates(5))
    change(cols)
    with pytest.raises(ValidationFailed) as err:
        features_from_columns(cols)
    assert err.value.field == field


def test_a_row_of_all_zero_fractions_is_named() -> None:
    cols = candidate_columns(candidates(5))
    for k in cols:
        if k.startswith("composition."):
            cols[k][3] = 0.0
    with pytest.raises(ValidationFailed, match=r"row\(s\) 3"):
        features_from_columns(cols)


def test_coding_finds_the_vectorised_forms_on_the_encoder() -> None:
    import ppu.simulators.mof.pack  # noqa: F401  (registers predict.*)

    c = Coding.of(CAP)
    assert c.block is features_from_columns and c.columns is not None and c.feature_names is not None
    assert len(c.feature_names) == N_FEATURES
    c_plain = Coding.of("echo", "ppu.corepack:encode_echo", "ppu.corepack:decode_echo")
    assert c_plain.block is None
    x = c_plain.encode_many([{"x": 1.0}, {"x": "no"}, {"x": 3.0}])  # one bad row fails alone
    assert isinstance(x[1], Exception) and float(x[0][0]) == 1.0 and float(x[2][0]) == 3.0


# ---- the artifact store --------------------------------------------------------------------------

def test_artifacts_are_content_addressed_and_checked(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    cols = {"a": np.arange(5, dtype=np.float32), "b": np.ones(5, dtype=bool)}
    ref = store.put(cols)
    assert ref.sha256 == sha256(npz_bytes(cols)) and ref.rows == 5 and ref.columns == ["a", "b"]
    assert store.put(cols) == ref  # the same columns, the same file
    back = store.load(ref.sha256)
    np.testing.assert_array_equal(back["a"], cols["a"])
    path = tmp_path / ref.sha256[:2] / f"{ref.sha256}.npz"
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # corrupted on disk
    path.write_bytes(bytes(data))
    with pytest.raises(ValidationFailed, match="sha256"):
        store.load(ref.sha256)
    with pytest.raises(NotFound):
        store.read_bytes("0" * 64)
    with pytest.raises(ValidationFailed, match="has 3 rows"):
        store.put({"a": np.zeros(5), "b": np.zeros(3)})


# ---- binary frames at the door ---------------------------------------------------------------------

def _submit_frames(blob_dtype: str = "float64", rows: int = 4, frame: bytes | None = None) -> list[bytes]:
    msg = p.Submit(tasks=[{"capability": CAP, "block": {"rows": rows, "columns": ["anneal_time_h"]}}])
    msg.carrying({"0:anneal_time_h": np.zeros(rows)})
    frames = [bytes(f) for f in p.encode(msg)]
    if blob_dtype != "float64":
        frames[1] = frames[1].replace(b'"float64"', f'"{blob_dtype}"'.encode())
    if frame is not None:
        frames[2] = frame
    return frames


def test_decode_round_trips_arrays() -> None:
    frames = _submit_frames()
    msg = p.decode(frames)
    assert isinstance(msg, p.Submit)
    np.testing.assert_array_equal(msg.arrays()["0:anneal_time_h"], np.zeros(4))


@pytest.mark.parametrize(("frames", "reason", "field"), [
    (_submit_frames(frame=b"\0" * 31), p.BAD_BLOB, "blobs.0"),  # 4 x float64 is 32 bytes
    (_submit_frames(blob_dtype="object"), p.BAD_PAYLOAD, "tasks.0.blobs.0.dtype"),
    (_submit_frames()[:2], p.BAD_FRAMES, "blobs"),  # declared, not sent
    ([*_submit_frames(), b"\0" * 8], p.BAD_FRAMES, "blobs"),  # sent, not declared
    ([b"PPU1", b'{"type": "status"}', b"\0" * 8], p.BAD_FRAMES, None),
])
def test_bad_binary_frames_are_refused_with_their_reason(frames: list[bytes], reason: str, field: str | None) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(frames)
    assert err.value.data["reason"] == reason
    if field is not None and reason != p.BAD_PAYLOAD:
        assert err.value.field == field


def test_oversize_binary_frames_are_refused() -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(_submit_frames(rows=1000), max_blob_bytes=4000)
    assert err.value.data["reason"] == p.OVERSIZE and err.value.field == "blobs"


# ---- a block through the backend ------------------------------------------------------------------

def _block_run(cands: list[dict[str, Any]], task_id: str = "b1") -> TaskRun:
    cols = candidate_columns(cands)
    return TaskRun(task_id=task_id, attempt=1, capability=CAP,
                   block={"rows": len(cands), "columns": list(cols)}).with_columns(cols)


@pytest.mark.parametrize("instances", [1, 2])
def test_a_block_gives_the_same_numbers_as_row_tasks_with_progress(weights: Path, instances: int) -> None:
    """With two model instances the block's forward passes run side by side; its rows still come
    back in order and its progress still climbs part by part."""
    cands = candidates(700)
    backend = build_backend(torch_entry(weights, block_batch=128, instances=instances))
    assert isinstance(backend, TorchBackend)
    seen: list[float] = []

    async def go() -> tuple[Any, list[Any]]:
        await backend.start()
        try:
            [block] = await backend.run([_block_run(cands)], lambda tid, f, m: seen.append(f))
            rows = await backend.run([TaskRun(task_id=f"r{i}", attempt=1, capability=CAP,
                                              inputs={"candidate": c}) for i, c in enumerate(cands[:50])], _noop)
            return block, rows
        finally:
            await backend.close()

    block, rows = asyncio.run(go())
    assert block.status is ResultStatus.succeeded, block.error
    assert block.outputs["rows"] == 700 and block.outputs["model_version"] == "7"
    cols = block.columns()
    assert set(cols) == {"mean", "std"} and len(cols["mean"]) == 700
    np.testing.assert_allclose(cols["mean"][:50], [r.outputs["mean"] for r in rows], rtol=1e-6)
    assert seen == [min(700, k * 128) / 700 for k in range(1, 7)]  # 6 parts of 128 rows, in order


def test_a_bad_block_fails_alone_and_is_not_retried(weights: Path) -> None:
    cands = candidates(10)
    bad = _block_run(cands, "bad")
    bad.columns().pop("anneal_time_h")
    backend = build_backend(torch_entry(weights))

    async def go() -> list[Any]:
        try:
            return await backend.run([bad, _block_run(cands, "good")], _noop)
        finally:
            await backend.close()

    r_bad, r_good = asyncio.run(go())
    assert r_bad.status is ResultStatus.failed and not r_bad.retryable and "anneal_time_h" in (r_bad.error or "")
    assert r_good.status is ResultStatus.succeeded


def test_a_block_is_encoded_part_by_part_and_a_bad_row_is_named_from_the_blocks_start(
        weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part is encoded on the instance that runs it (the first pass need not wait for the whole
    block's encoding); a row refused in a later part is named by its row in the block, not in the part."""
    backend = build_backend(torch_entry(weights, block_batch=128, instances=2))
    assert isinstance(backend, TorchBackend)
    encoded: list[int] = []
    real = Coding.encode_block
    monkeypatch.setattr(Coding, "encode_block",
                        lambda self, cols: encoded.append(len(cols["anneal_time_h"])) or real(self, cols))
    good = _block_run(candidates(700))
    bad = _block_run(candidates(700), "bad")
    bad.columns()["anneal_time_h"][650] = -1.0  # in the sixth part of 128 rows

    async def go() -> list[Any]:
        await backend.start()
        try:
            return [*await backend.run([good], _noop), *await backend.run([bad], _noop)]
        finally:
            await backend.close()

    r_good, r_bad = asyncio.run(go())
    assert r_good.status is ResultStatus.succeeded and r_good.outputs["rows"] == 700
    assert encoded[:6] == [128, 128, 128, 128, 128, 60]  # the good block: its six parts, never all 700 at once
    assert r_bad.status is ResultStatus.failed and not r_bad.retryable
    assert "row(s) 650" in (r_bad.error or ""), r_bad.error
    assert encoded[-1] == 700  # the bad block's error comes from the whole block, so its row numbers count from 0


def test_a_block_whose_columns_differ_in_length_is_refused_naming_the_column(weights: Path) -> None:
    """A backend called directly (not through the door, which checks this) still refuses it whole."""
    run = _block_run(candidates(300))
    run.columns()["anneal_time_h"] = run.columns()["anneal_time_h"][:299]
    backend = build_backend(torch_entry(weights, block_batch=128))

    async def go() -> list[Any]:
        try:
            return await backend.run([run], _noop)
        finally:
            await backend.close()

    [r] = asyncio.run(go())
    assert r.status is ResultStatus.failed and not r.retryable
    assert "anneal_time_h" in (r.error or "") and "299 rows" in (r.error or ""), r.error


# ---- end to end: client -> orchestrator -> worker -> model -> artifact -> client ---------------------

def test_screen_end_to_end_through_the_lab(tmp_path: Path, weights: Path) -> None:
    cands = candidates(2500, seed=4)
    cols = candidate_columns(cands)
    lab = lab_config(tmp_path, [torch_entry(weights)])

    async def go() -> tuple[dict[str, np.ndarray], list[Any], Any]:
        async with EmbeddedLab(lab) as client:
            out, results = await client.screen(CAP, cols, block_rows=1000, campaign="scr")
            [task] = await client.wait([results[0].task_id])
            return out, results, task

    out, results, task = asyncio.run(go())
    assert len(results) == 3 and [r.artifact.rows for r in results] == [1000, 1000, 500]  # type: ignore[union-attr]
    assert task.block is not None and task.inputs == {} and task.campaign == "scr"
    store = ArtifactStore(tmp_path / "artifacts")
    assert store.has(task.block.sha256) and all(store.has(r.artifact.sha256) for r in results)  # type: ignore[union-attr]
    model = mlp(N_FEATURES, hidden=32, seed=3)
    model.load_state_dict(torch.load(weights, weights_only=True))
    with torch.inference_mode():
        want = model(torch.from_numpy(features_from_columns(cols)).float()).numpy()
    np.testing.assert_allclose(out["mean"], want[:, 0], rtol=1e-5, atol=1e-6)


def test_the_blocking_client_screens_like_the_async_one(tmp_path: Path, weights: Path) -> None:
    """PPUClient.screen runs the same operation as AsyncPPUClient.screen: the same columns, and a
    block that failed raised as a BackendError naming its task."""
    cands = candidates(300, seed=5)
    cols = candidate_columns(cands)
    lab = lab_config(tmp_path, [torch_entry(weights)])
    with LabThread(lab) as lt, lt.client() as client:
        out, results = client.screen(CAP, cols, block_rows=200, campaign="scr")
        broken = {name: col for name, col in cols.items() if name != "anneal_time_h"}
        with pytest.raises(BackendError, match=r"columnar task \S+ \(predict.co2_uptake\) ended failed"):
            client.screen(CAP, broken, block_rows=200)
    assert [r.artifact.rows for r in results] == [200, 100]  # type: ignore[union-attr]
    model = mlp(N_FEATURES, hidden=32, seed=3)
    model.load_state_dict(torch.load(weights, weights_only=True))
    with torch.inference_mode():
        want = model(torch.from_numpy(features_from_columns(cols)).float()).numpy()
    np.testing.assert_allclose(out["mean"], want[:, 0], rtol=1e-5, atol=1e-6)


def test_the_orchestrator_refuses_blocks_it_cannot_take(tmp_path: Path, weights: Path) -> None:
    lab = lab_config(tmp_path, [torch_entry(weights)])

    async def go() -> list[str]:
        errors = []
        async with EmbeddedLab(lab) as client:
            base = {"capability": CAP, "block": {"rows": 3, "columns": ["anneal_time_h"]}}
            cases = [
                p.Submit(tasks=[base]).carrying({"0:anneal_time_h": np.zeros(4)}),  # rows disagree
                p.Submit(tasks=[base]).carrying({"0:other": np.zeros(3)}),  # the column is missing
                p.Submit(tasks=[{**base, "capability": "synthesize"}]).carrying({"0:anneal_time_h": np.zeros(3)}),
                p.Submit(tasks=[base]),  # no blobs at all
            ]
            for msg in cases:
                try:
                    await client.request(msg)
                except Exception as exc:
                    errors.append(f"{getattr(exc, 'field', None)}|{exc}")
            with pytest.raises(NotFound):
                await client.artifact("ab" * 32)
            ids = await client.submit([{"capability": "echo", "inputs": {"x": 1.0}}])  # the door is still open
            assert len(ids) == 1
        return errors

    errors = asyncio.run(go())
    assert len(errors) == 4
    assert errors[0].startswith("tasks.0.block.rows|")
    assert errors[1].startswith("tasks.0.block.columns|")
    assert errors[2].startswith("block|") and "physical" in errors[2]
    assert errors[3].startswith("tasks.0.block.columns|")


def test_a_raw_peer_cannot_crash_the_door_with_frames(tmp_path: Path, weights: Path) -> None:
    """Binary frames that lie about their size get a typed error, answering the request's id (so a
    client waiting for it hears of it at once), and the server keeps serving."""
    lab = lab_config(tmp_path, [torch_entry(weights)])
    sent_req = ""

    async def go() -> tuple[p.Message, int]:
        nonlocal sent_req
        async with EmbeddedLab(lab) as client:
            ctx = zmq.asyncio.Context()
            s = ctx.socket(zmq.DEALER)
            s.connect(client.address)
            frames = _submit_frames(frame=b"\0" * 7)
            header = json.loads(frames[1])
            sent_req = header["req"] = "raw-peer-1"
            frames[1] = json.dumps(header).encode()
            await s.send_multipart(frames)
            reply = p.decode(await s.recv_multipart())
            s.close(0)
            ctx.term()
            st = await client.status()
            return reply, st["counters"].get("protocol_bad_blob", 0)

    reply, counted = asyncio.run(go())
    assert isinstance(reply, p.Error) and reply.field == "blobs.0"
    assert sent_req and reply.req == sent_req
    assert counted == 1
