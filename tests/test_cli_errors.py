"""Every bad input to the CLI gets an error naming the field and what to do, a non-zero exit, no traceback.

One table (``BAD``): each row is a command line a new user or a careless script might type, the
lab file it runs against, and the words its error must contain. The README (Security) quotes the
number of rows. Run in-process through typer's runner, as ``tests/test_cli_core.py`` does; the one
case that used to hang (``ppu orchestrator`` with CURVE and no keys) also runs as a real process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ppu import cli
from ppu.cli import app

runner = CliRunner()


@dataclass
class Bad:
    """One bad input: ``argv`` (``{tmp}`` is the test's folder), an optional lab file written to
    ``{tmp}/lab.yaml`` first, environment variables, and the words the error must show."""

    argv: list[str]
    says: list[str]
    lab: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)
    not_says: list[str] = field(default_factory=list)


def _lab(**extra: Any) -> dict[str, Any]:
    return {"name": "t", "run_dir": "{tmp}/run", **extra}


UNDER_A_FILE = "{tmp}/plain.txt/run"  # a folder that cannot be made, for root too: its parent is a file
CURVE_NO_KEYS = _lab(security={"curve": True, "keys_dir": "{tmp}/no-keys"})

BAD: dict[str, Bad] = {
    # item 7: tracebacks instead of messages
    "config-is-a-folder": Bad(["status", "-c", "{tmp}/folder"], ["is a folder", "--config"]),
    "config-is-binary": Bad(["status", "-c", "{tmp}/binary.yaml"], ["not a text file", "--config"]),
    "config-is-not-yaml": Bad(["status", "-c", "{tmp}/plain.txt"], ["must be a mapping"]),
    "run-dir-cannot-be-made": Bad(["status", "-c", "{tmp}/lab.yaml"], ["run_dir", "folder you can write"],
                                  lab=_lab(run_dir=UNDER_A_FILE)),
    "store-folder-cannot-be-made": Bad(["tasks", "-c", "{tmp}/lab.yaml"], ["store", "folder you can write"],
                                       lab=_lab(store="sqlite:///" + UNDER_A_FILE + "/ppu.sqlite")),
    "orchestrator-run-dir-cannot-be-made": Bad(["orchestrator", "-c", "{tmp}/lab.yaml"], ["run_dir"],
                                               lab=_lab(run_dir=UNDER_A_FILE)),
    "run-dir-not-writable": Bad(["status", "-c", "{tmp}/lab.yaml"], ["cannot open the store", "writable"],
                                lab=_lab(run_dir="/proc")),
    "orchestrator-run-dir-not-writable": Bad(["orchestrator", "-c", "{tmp}/lab.yaml"], ["cannot open the store"],
                                             lab=_lab(run_dir="/proc")),
    "postgres-without-the-extra": Bad(["status", "-c", "{tmp}/lab.yaml"], ["store", "pip install 'ppu[postgres]'"],
                                      lab=_lab(store="postgresql+psycopg://ppu@127.0.0.1:1/ppu"),
                                      env={"_HIDE_PSYCOPG": "1"}),
    "priority-out-of-range": Bad(["submit", "echo", "-i", '{"x": 1}', "--priority", "5000", "-c", "{tmp}/lab.yaml"],
                                 ["--priority", "1000"], lab=_lab()),
    "keys-dir-cannot-be-made": Bad(["keys", "generate", "k", "--dir", UNDER_A_FILE], ["--dir", "cannot write keys"]),
    "dashboard-port-out-of-range": Bad(["dashboard", "-c", "{tmp}/lab.yaml", "--port", "99999"], ["--port", "65535"],
                                       lab=_lab()),
    "dashboard-short-token": Bad(["dashboard", "-c", "{tmp}/lab.yaml", "--token", "short"], ["--token", "8 char"],
                                 lab=_lab()),
    # item 8: CURVE on and no keys
    "curve-without-keys": Bad(["orchestrator", "-c", "{tmp}/lab.yaml"],
                              ["no secret key", "ppu keys generate orchestrator"], lab=CURVE_NO_KEYS),
    # item 9: a named config that does not exist, or is empty
    "PPU_CONFIG-missing": Bad(["status"], ["does not exist", "PPU_CONFIG"], env={"PPU_CONFIG": "{tmp}/nonexistent"}),
    "config-missing": Bad(["status", "-c", "{tmp}/nonexistent.yaml"], ["does not exist", "--config"]),
    "config-empty": Bad(["status", "-c", "{tmp}/empty.yaml"], ["is empty", "--config"]),
    "PPU_CONFIG-empty": Bad(["tasks"], ["is empty"], env={"PPU_CONFIG": "{tmp}/empty.yaml"}),
    # item 10: the whole lab file is validated where it is read
    "backend-unknown-key": Bad(["orchestrator", "-c", "{tmp}/lab.yaml"], ["backends.0.colour", "has no field"],
                               lab=_lab(backends=[{"type": "echo", "name": "e1", "colour": "red"}])),
    "backend-bad-value": Bad(["orchestrator", "-c", "{tmp}/lab.yaml"], ["backends.1.slots", "e2"],
                             lab=_lab(backends=[{"type": "echo", "name": "e1"}, {"type": "echo", "name": "e2",
                                                                                   "slots": 0}]),
                             not_says=["Value error"]),
    "backend-unknown-type": Bad(["orchestrator", "-c", "{tmp}/lab.yaml"], ["field: backends.0.type", "teleporter"],
                                lab=_lab(backends=[{"type": "teleporter", "name": "t1"}])),
    "worker-backend-unknown-type": Bad(["worker", "-c", "{tmp}/lab.yaml"], ["field: backends.1.type", "backend t2"],
                                       lab=_lab(backends=[{"type": "echo", "name": "e1"},
                                                          {"type": "teleporter", "name": "t2"}])),
    "backend-without-name": Bad(["status", "-c", "{tmp}/lab.yaml"], ["backends", "'name'"],
                                lab=_lab(backends=[{"type": "echo"}])),
    "store-url-typo": Bad(["status", "-c", "{tmp}/lab.yaml"], ["store.url", "not a store URL", "sqlite:///"],
                          lab=_lab(store={"url": "sqlit:////tmp/x.sqlite", "durability": "process"}),
                          not_says=["applies to SQLite only"]),
    # a SQLite store.url that cannot be the store: named store.url, never run_dir or a driver's words
    "store-url-is-a-folder": Bad(["status", "-c", "{tmp}/lab.yaml"], ["store.url", "is a folder",
                                                                       "sqlite:///{tmp}/folder/ppu.sqlite"],
                                 lab=_lab(store={"url": "sqlite:///{tmp}/folder"}), not_says=["sqlalche.me"]),
    "store-url-not-a-database": Bad(["tasks", "-c", "{tmp}/lab.yaml"], ["store.url", "not a SQLite database"],
                                    lab=_lab(store={"url": "sqlite:///{tmp}/plain.txt"}), not_says=["sqlalche.me"]),
    "store-url-folder-cannot-be-made": Bad(["status", "-c", "{tmp}/lab.yaml"],
                                           ["store.url", "is a file", "folder you can write"],
                                           lab=_lab(store={"url": "sqlite:///{tmp}/plain.txt/db/x.sqlite"}),
                                           not_says=["field: run_dir"]),
    "store-url-folder-not-writable": Bad(["status", "-c", "{tmp}/lab.yaml"],
                                         ["store.url", "/proc", "not writable", "folder you can write"],
                                         lab=_lab(store={"url": "sqlite:////proc/no/such/dir/x.sqlite"}),
                                         not_says=["field: run_dir"]),
    "orchestrator-store-url-folder-not-writable": Bad(["orchestrator", "-c", "{tmp}/lab.yaml"],
                                                      ["store.url", "not writable"],
                                                      lab=_lab(store="sqlite:////proc/x.sqlite")),
    "store-url-in-memory": Bad(["submit", "echo", "-i", '{"x": 1}', "-c", "{tmp}/lab.yaml"],
                               ["store.url", "names no file", "keeps nothing"], lab=_lab(store="sqlite://")),
    "store-url-two-slashes": Bad(["status", "-c", "{tmp}/lab.yaml"], ["store.url", "sqlite:////absolute"],
                                 lab=_lab(store={"url": "sqlite://x.sqlite"}), not_says=["Invalid SQLite URL"]),
    "tasks-plain-and-json": Bad(["tasks", "--plain", "--json", "-c", "{tmp}/lab.yaml"], ["--plain and --json"],
                                lab=_lab()),
    "lab-unknown-key": Bad(["status", "-c", "{tmp}/lab.yaml"], ["orchestrator.bnid", "spelling"],
                           lab=_lab(orchestrator={"bnid": "tcp://127.0.0.1:5555"})),
    "bind-nonsense": Bad(["status", "-c", "{tmp}/lab.yaml"], ["orchestrator.bind", "not a valid address"],
                         lab=_lab(orchestrator={"bind": "nonsense"}), not_says=["CURVE"]),
    "orchestrator-bind-nonsense": Bad(["orchestrator", "-c", "{tmp}/lab.yaml"],
                                      ["orchestrator.bind", "tcp://HOST:PORT"],
                                      lab=_lab(orchestrator={"bind": "nonsense"}), not_says=["CURVE"]),
    "bind-port-too-big": Bad(["status", "-c", "{tmp}/lab.yaml"], ["orchestrator.bind", "above 65535"],
                             lab=_lab(orchestrator={"bind": "tcp://127.0.0.1:99999"})),
    # more of the same kind, found on the way
    "--bind-nonsense": Bad(["orchestrator", "-c", "{tmp}/lab.yaml", "--bind", "nonsense"], ["--bind", "tcp://"],
                           lab=_lab(), not_says=["CURVE"]),
    "--connect-nobody-there": Bad(["status", "-c", "{tmp}/lab.yaml", "--connect", "tcp://127.0.0.1:1"],
                                  ["no orchestrator answers at tcp://127.0.0.1:1", "check the address and port",
                                   "orchestrator.bind is tcp://127.0.0.1:2"],
                                  lab=_lab(orchestrator={"bind": "tcp://127.0.0.1:2"}), not_says=["start it with"]),
    "--connect-nonsense": Bad(["status", "-c", "{tmp}/lab.yaml", "--connect", "nonsense"], ["--connect", "tcp://"],
                              lab=_lab()),
    "worker---connect-nonsense": Bad(["worker", "-c", "{tmp}/lab.yaml", "--connect", "localhost"], ["--connect"],
                                     lab=_lab(backends=[{"type": "echo", "name": "e1"}])),
    "input-file-is-a-folder": Bad(["submit", "echo", "-i", "@{tmp}/folder", "-c", "{tmp}/lab.yaml"],
                                  ["--input", "is a folder"], lab=_lab()),
    "input-file-missing": Bad(["submit", "echo", "-i", "@{tmp}/nope.json", "-c", "{tmp}/lab.yaml"],
                              ["--input", "does not exist"], lab=_lab()),
    "campaign-name-too-long": Bad(["submit", "echo", "-i", '{"x": 1}', "--campaign", "c" * 5000,
                                   "-c", "{tmp}/lab.yaml"], ["--campaign", "at most 128"], lab=_lab()),
    "tasks-limit-negative": Bad(["tasks", "--limit", "-5", "-c", "{tmp}/lab.yaml"], ["--limit"], lab=_lab()),
    "audit-json-cannot-be-written": Bad(["audit", "--json", UNDER_A_FILE + "/a.jsonl", "-c", "{tmp}/lab.yaml"],
                                        ["--json", "cannot write"], lab=_lab()),
    "demo-run-dir-cannot-be-made": Bad(["demo", "--tasks", "3", "--run-dir", UNDER_A_FILE], ["--run-dir"]),
    "campaign-run-dir-cannot-be-made": Bad(["campaign", "run", "campaigns/demo.yaml", "--run-dir", UNDER_A_FILE],
                                           ["--run-dir", "folder you can write"]),
    "campaign-file-is-a-folder": Bad(["campaign", "run", "{tmp}/folder"], ["is a folder", "campaigns/demo.yaml"]),
    "dashboard-port-from-env": Bad(["dashboard", "-c", "{tmp}/lab.yaml"], ["PPU_DASHBOARD_PORT", "65535"],
                                   lab=_lab(), env={"PPU_DASHBOARD_PORT": "99999"}),
    "dashboard-open-host-without-token": Bad(["dashboard", "-c", "{tmp}/lab.yaml", "--host", "0.0.0.0"],
                                             ["without a token", "PPU_DASHBOARD_TOKEN"], lab=_lab()),
    "unknown-task-state": Bad(["tasks", "--state", "sleeping", "-c", "{tmp}/lab.yaml"], ["unknown state", "ready"],
                              lab=_lab()),
    "bad-key-name": Bad(["keys", "generate", "../evil", "--dir", "{tmp}/keys"], ["bad key name", "plain name"]),
}


def _fill(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    return value


def _scene(tmp: Path, case: Bad) -> None:
    (tmp / "folder").mkdir()
    (tmp / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp / "plain.txt").write_text("just words\n")
    (tmp / "empty.yaml").write_text("")
    if case.lab is not None:
        (tmp / "lab.yaml").write_text(yaml.safe_dump(_fill(case.lab, tmp)))


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_names_the_field_exits_non_zero_without_traceback(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    case = BAD[name]
    if "/proc" in str(case.lab) and not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc as a folder nobody can write")
    _scene(tmp_path, case)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # nothing may land in the current folder
    monkeypatch.delenv("PPU_CONFIG", raising=False)
    for k, v in case.env.items():
        if k == "_HIDE_PSYCOPG":  # the postgres extra not installed: its driver cannot be imported
            monkeypatch.setitem(sys.modules, "psycopg", None)
        else:
            monkeypatch.setenv(k, _fill(v, tmp_path))
    argv = _fill(case.argv, tmp_path)
    if argv[:2] == ["campaign", "run"] and argv[2].startswith("campaigns/"):
        argv[2] = str(Path(__file__).resolve().parents[1] / argv[2])
    cli.err.width = 400  # whole error lines, whatever the terminal
    r = runner.invoke(app, argv)
    out = r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), \
        f"{name}: uncaught {type(r.exception).__name__}: {r.exception}"
    assert r.exit_code != 0, f"{name}: exit 0\n{out}"
    assert "Traceback" not in out, out
    for words in _fill(case.says, tmp_path):
        assert words in out, f"{name}: {words!r} not in\n{out}"
    for words in case.not_says:
        assert words not in out, f"{name}: {words!r} in\n{out}"
    assert not any(work.iterdir()), f"{name} left {sorted(p.name for p in work.iterdir())} in the current folder"


def test_curve_without_keys_fails_at_once_as_a_process(tmp_path: Path):
    """It used to hang forever with no output: the ZAP authenticator outlived the failed start."""
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(_fill(CURVE_NO_KEYS, tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "PPU_CONFIG"}
    try:
        proc = subprocess.run([sys.executable, "-m", "ppu.cli", "orchestrator", "-c", str(tmp_path / "lab.yaml")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ppu orchestrator hung with CURVE on and no keys: {exc.stdout!r} {exc.stderr!r}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "ppu keys generate orchestrator" in proc.stderr


def test_connect_to_nobody_while_the_labs_orchestrator_listens_says_to_leave_out_connect(tmp_path: Path):
    """A user trial: `ppu status --connect` with a wrong port said "start it with `ppu orchestrator`"
    while one was running at the lab's address."""
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bind = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        (tmp_path / "lab.yaml").write_text(yaml.safe_dump(_lab(orchestrator={"bind": bind}, run_dir=str(tmp_path))))
        cli.err.width = 400
        r = runner.invoke(app, ["status", "-c", str(tmp_path / "lab.yaml"), "--connect", "tcp://127.0.0.1:1"])
    assert r.exit_code == 2
    assert "no orchestrator answers at tcp://127.0.0.1:1" in r.output
    assert f"something listens at {bind}, the lab file's orchestrator.bind; leave out --connect" in r.output


# ---- a backend's own error, said of its entry in the lab file ------------------------------------------

def _torch_lab(tmp_path: Path, **model: Any) -> Any:
    from ppu.config import parse_lab

    lab = parse_lab({"name": "t", "run_dir": str(tmp_path), "backends": [
        {"type": "echo", "name": "e1"},
        {"type": "torch", "name": "surrogate", "models": {"predict.co2_uptake": {
            "factory": "ppu.digital.nets:mlp", "kwargs": {"n_features": 4, "hidden": 8}, **model}}}]})
    lab.load_packs()
    return lab


def test_a_backends_error_when_built_names_its_entry_in_the_lab_file(tmp_path: Path):
    """An encoder typo named no field; `device: cuda` on a machine without one named `device`."""
    pytest.importorskip("torch")
    from ppu.errors import ConfigError

    lab = _torch_lab(tmp_path, encoder="ppu.digital.nets:encdoe")
    lab.check_backends()  # the fields are fine: it is the import that fails
    with pytest.raises(ConfigError) as err:
        lab.build_backends()
    assert (err.value.field or "").startswith("backends.1"), err.value.field
    assert err.value.message.startswith("backend surrogate: ") and "encdoe" in err.value.message
    assert [b.name for b in lab.build_backends(["e1"])] == ["e1"]


def test_a_device_the_machine_lacks_is_named_under_its_entry(tmp_path: Path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from ppu.errors import ConfigError

    lab = _torch_lab(tmp_path)
    lab.backends[1]["device"] = "cuda"
    with pytest.raises(ConfigError) as err:
        lab.build_backends(["surrogate"])
    assert err.value.field == "backends.1.device" and "surrogate" in err.value.message
    # and so `ppu worker` says it, building its backends the same way
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path),
                                                       "backends": lab.backends}))
    cli.err.width = 400
    r = runner.invoke(app, ["worker", "-c", str(tmp_path / "lab.yaml"), "--backend", "surrogate"])
    assert r.exit_code == 2 and "field: backends.1.device" in r.output and "Traceback" not in r.output, r.output


def test_an_error_field_goes_under_its_entry_once() -> None:
    from ppu.config import in_backend_entry
    from ppu.errors import ConfigError

    cases = {None: "backends.3", "backends": "backends.3", "device": "backends.3.device",
             "backends.type": "backends.3.type", "models.predict.x.factory": "backends.3.models.predict.x.factory",
             "backends.3.slots": "backends.3.slots"}
    for given, named in cases.items():
        exc = in_backend_entry(ConfigError("bad", field=given), 3, "b3")
        assert exc.field == named and exc.message == "backend b3: bad"
    again = in_backend_entry(ConfigError("backend b3: bad", field="backends.3.x"), 3, "b3")
    assert again.message == "backend b3: bad" and again.field == "backends.3.x"
