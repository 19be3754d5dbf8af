from __future__ import annotations

from pathlib import Path

from conformance import BackendContract

from ppu.backends.base import Backend, TaskRun
from ppu.backends.registry import build_backend


class TestEchoContract(BackendContract):
    def make_backend(self, tmp_path: Path) -> Backend:
        return build_backend({"type": "echo", "name": "echo1", "duration_s": 0.1, "time_scale": 100,
                              "fail_when_x": -1.0, "batch_size": 8})

    async def good_runs(self, backend: Backend) -> list[TaskRun]:
        return [TaskRun(task_id=f"e{i}", attempt=1, capability="echo", inputs={"x": float(i)}) for i in range(3)]

    def bad_run(self) -> TaskRun:
        return TaskRun(task_id="bad", attempt=1, capability="echo", inputs={"x": -1.0})
