"""The serving path's building blocks: a batch encoded in one call (bad rows found by halving) and
Results built for a forward batch without a per-field loop."""

from __future__ import annotations

import numpy as np
import pytest

from ppu.digital.coding import Coding, _mean_std, _mean_std_block
from ppu.errors import ValidationFailed
from ppu.models import BackendKind, Provenance, Result, ResultStatus


def _coding(calls: list[int]) -> Coding:
    def encode(inputs: dict) -> list[float]:
        if inputs["x"] < 0:
            raise ValidationFailed(f"x is negative: {inputs['x']}", field="inputs.x")
        return [float(inputs["x"]), 2.0 * inputs["x"]]

    def encode_batch(many: list[dict]) -> np.ndarray:
        calls.append(len(many))
        x = np.array([i["x"] for i in many], dtype=float)
        if (x < 0).any():
            raise ValueError("a negative x somewhere")  # a vectorised form does not say which row
        return np.stack([x, 2 * x], axis=1)

    return Coding(capability="demo", encode=encode, encode_batch=encode_batch, block=None, columns=None,
                  decode=_mean_std, decode_block=_mean_std_block, features=None, feature_names=None, example=None)


def test_a_good_batch_is_one_encoder_call() -> None:
    calls: list[int] = []
    x, good, errors = _coding(calls).encode_rows([{"x": float(i)} for i in range(64)])
    assert calls == [64] and good == list(range(64)) and errors == {}
    np.testing.assert_array_equal(x[:, 0], np.arange(64))


def test_bad_rows_are_found_by_halving_and_named_by_the_row_encoder() -> None:
    calls: list[int] = []
    values = [float(i) for i in range(64)]
    values[5], values[40] = -1.0, -2.0
    x, good, errors = _coding(calls).encode_rows([{"x": v} for v in values])
    assert sorted(errors) == [5, 40]
    assert str(errors[40]) == "inputs.x: x is negative: -2.0"  # the row encoder's error, naming the field
    assert good == [i for i in range(64) if i not in (5, 40)]
    np.testing.assert_array_equal(x[:, 0], [values[i] for i in good])  # the good rows, in order
    assert len(calls) <= 2 * 2 * 6 + 1  # two bad rows: a few vectorised calls per halving level, not 64


def test_every_row_bad_and_encode_many_keep_the_order() -> None:
    calls: list[int] = []
    coding = _coding(calls)
    x, good, errors = coding.encode_rows([{"x": -1.0}, {"x": -2.0}, {"x": -3.0}])
    assert good == [] and sorted(errors) == [0, 1, 2] and x.shape[0] == 0
    rows = coding.encode_many([{"x": 1.0}, {"x": -1.0}, {"x": 3.0}])
    assert isinstance(rows[1], ValidationFailed) and float(rows[0][0]) == 1.0 and float(rows[2][1]) == 6.0


def test_an_unchecked_success_is_the_model_construct_object() -> None:
    prov = Provenance(backend="b", kind=BackendKind.digital, model_name="m", extra={"forward_batch": 3})
    fast = Result.succeeded_unchecked("t1", 2, {"mean": 1.5, "std": 0.25}, 10.0, 11.0, prov)
    slow = Result.model_construct(task_id="t1", attempt=2, status=ResultStatus.succeeded,
                                  outputs={"mean": 1.5, "std": 0.25}, error=None, retryable=True, interrupted=False,
                                  started_at=10.0, finished_at=11.0, provenance=prov, artifact=None)
    assert fast == slow and fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump() == slow.model_dump() and fast.columns() is None
    assert Result.model_validate_json(fast.model_dump_json()) == fast  # it is what validation would have made
    with pytest.raises(ValueError):
        fast.attempt = "not a number"  # type: ignore[assignment]  # assignment is still validated


def test_importing_ppu_makes_idle_openmp_workers_sleep_unless_told_otherwise() -> None:
    import os
    import subprocess
    import sys

    code = "import os, ppu; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"  # a lab's own setting is kept
