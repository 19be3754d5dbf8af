"""The benchmark scripts' command lines: ``benchmarks/dispatch.py --help`` ran the whole benchmark
(a user trial); its settings came from the environment alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

DISPATCH = Path(__file__).resolve().parents[1] / "benchmarks" / "dispatch.py"


def _dispatch() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_dispatch", DISPATCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dispatch_help_says_what_it_takes_and_runs_nothing(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _dispatch()
    monkeypatch.setattr(bench, "ppu_figures", lambda *a: pytest.fail("--help ran the benchmark"))
    monkeypatch.setattr(bench, "raw_zmq_roundtrip_us", lambda *a: pytest.fail("--help ran the benchmark"))
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for words in ("--n", "--latency-n", "--prefect-n", "$PPU_BENCH_N", "$PPU_BENCH_LATENCY_N",
                  "$PPU_BENCH_PREFECT_N", "JSON"):
        assert words in out, (words, out)


def test_dispatch_settings_come_from_the_options_else_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bench = _dispatch()
    args = bench.parse_args([])
    assert (args.n, args.latency_n, args.prefect_n) == (8000, 200, 50)
    monkeypatch.setenv("PPU_BENCH_N", "300")
    monkeypatch.setenv("PPU_BENCH_PREFECT_N", "0")
    args = bench.parse_args([])
    assert (args.n, args.prefect_n) == (300, 0)
    assert bench.parse_args(["--n", "120", "--latency-n", "7"]).n == 120  # the option wins
    monkeypatch.setenv("PPU_BENCH_N", "lots")
    with pytest.raises(SystemExit) as bad:
        bench.parse_args([])
    assert bad.value.code == 2 and "'lots' is not a whole number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--n", "0"])
    assert "--n: at least 1" in capsys.readouterr().err
