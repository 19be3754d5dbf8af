"""Where a physical backend keeps the Bluesky documents of its runs: a pluggable sink.

``JsonlSink`` (the default) writes one JSON-lines file per run, ``<folder>/<run uid>.jsonl``, one
``[name, doc]`` pair a line; ``StoreSink`` puts them in the orchestrator's store
(:meth:`ppu.store.Store.add_documents`). A lab that runs Tiled or databroker implements
:class:`DocumentSink` (two methods) around its client.

Documents are streamed: a :class:`DocumentStream` hands each document to the sink the moment the
RunEngine emits it (a sink's ``write`` is called once per document), and ``JsonlSink`` flushes
every line to the operating system before it returns and fsyncs a run at its stop document. So a
worker killed mid-plan (SIGKILL, a crash) leaves the partial run on disk, start, descriptors and
every event so far, with no stop document, for the person who reviews the interrupted task
(:meth:`JsonlSink.runs_for` finds a task's runs).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

Document = tuple[str, dict[str, Any]]
log = logging.getLogger(__name__)


def jsonable(obj: Any) -> Any:
    """Bluesky documents hold numpy arrays and scalars (and, from EPICS, bytes); JSON wants lists, floats and
    strings. Applied before any sink, so a device's configuration can never fail a run after the fact."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, bytes | bytearray):  # CA CHAR waveforms and their limits arrive as bytes
        return bytes(obj).rstrip(b"\x00").decode("latin-1")
    if isinstance(obj, float) and not math.isfinite(obj):  # JSON has no NaN/Infinity
        return None
    return obj


@runtime_checkable
class DocumentSink(Protocol):
    def write(self, run_uid: str, task_id: str | None, docs: list[Document]) -> str:
        """Keep the documents of one run; returns where they are (goes in Provenance.documents)."""
        ...

    def read(self, run_uid: str) -> list[Document]:
        ...


class JsonlSink:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, run_uid: str) -> Path:
        return self.folder / f"{run_uid}.jsonl"

    def write(self, run_uid: str, task_id: str | None, docs: list[Document]) -> str:
        """Append to the run's file; flushed to the OS before returning (a killed process loses nothing
        written), fsynced at the run's stop document (a power cut loses at most an unfinished run's tail)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(run_uid)
        with path.open("a") as fh:
            for name, doc in docs:
                fh.write(json.dumps([name, jsonable(doc)]) + "\n")
            fh.flush()
            if any(name == "stop" for name, _ in docs):
                os.fsync(fh.fileno())
        return str(path)

    def read(self, run_uid: str) -> list[Document]:
        path = self.path(run_uid)
        if not path.exists():
            return []
        out: list[Document] = []
        for line in path.read_text().splitlines():
            try:
                name, doc = json.loads(line)
            except ValueError:  # the half-written last line of a run whose writer was killed
                continue
            out.append((name, doc))
        return out

    def runs_for(self, task_id: str) -> list[str]:
        """Run uids of a task (its start documents say which), finished or not, oldest first."""
        found: list[tuple[float, str]] = []
        for path in self.folder.glob("*.jsonl") if self.folder.is_dir() else []:
            with path.open() as fh:
                first = fh.readline()
            try:
                name, doc = json.loads(first)
            except ValueError:
                continue
            if name == "start" and doc.get("task_id") == task_id:
                found.append((float(doc.get("time", 0.0)), str(doc["uid"])))
        return [uid for _, uid in sorted(found)]


class StoreSink:
    def __init__(self, store: Any):
        self.store = store  # a ppu.store.Store; typed loosely to keep sqlalchemy out of this import

    def write(self, run_uid: str, task_id: str | None, docs: list[Document]) -> str:
        self.store.add_documents(run_uid, task_id, [(n, jsonable(d)) for n, d in docs])
        return f"store:{run_uid}"

    def read(self, run_uid: str) -> list[Document]:
        return list(self.store.documents_for(run_uid))


def tiled_writer() -> type:
    """Bluesky's ``TiledWriter`` class, from bluesky-tiled-plugins where that is installed (bluesky 1.16 moved it
    there, leaving ``bluesky.callbacks.tiled_writer`` as a shim that warns, and fails without the plugin), else
    from bluesky itself (1.13 to 1.15). Neither: an ImportError that names the extra to install."""
    try:
        from bluesky_tiled_plugins import TiledWriter
    except ModuleNotFoundError as exc:
        if exc.name != "bluesky_tiled_plugins":
            raise  # installed but one of its own imports fails: that is the error to see, not the fallback's
        try:
            from bluesky.callbacks.tiled_writer import TiledWriter  # type: ignore[no-redef]
        except ImportError as old:
            import bluesky

            raise ImportError(
                f"no TiledWriter: bluesky-tiled-plugins is not installed and bluesky {bluesky.__version__}'s "
                f"bluesky.callbacks.tiled_writer cannot be imported ({old}); pip install 'ppu[tiled]' installs "
                "tiled and bluesky-tiled-plugins") from None
    return TiledWriter


class TiledSink:
    """Documents into a Tiled server through Bluesky's ``TiledWriter`` (``ppu[tiled]``; see :func:`tiled_writer`):
    runs then read as Tiled nodes (``client[run_uid]``, its ``metadata["start"]`` and its streams as tables), as
    the Bluesky ecosystem expects. ``read`` gives back the run's start and stop documents; event data is read with
    the Tiled client. The API key comes from the environment variable the lab file names, never from the file."""

    def __init__(self, uri: str, api_key: str | None = None):
        writer_class = tiled_writer()
        from tiled.client import from_uri

        self.uri = uri.rstrip("/")
        self.client = from_uri(self.uri, api_key=api_key)
        self.writer = writer_class(self.client, batch_size=1)
        self._arrays: dict[str, set[str]] = {}  # descriptor uid -> its array-valued data keys
        self._streams: dict[str, str] = {}  # descriptor uid -> stream name
        self._runs_of: dict[str, str] = {}  # descriptor uid -> run uid
        self._values: dict[str, dict[tuple[str, str], list[Any]]] = {}  # run uid -> (stream, key) -> rows

    def write(self, run_uid: str, task_id: str | None, docs: list[Document]) -> str:
        # Array readings (a pattern, a chromatogram) do not fit a table's cell in every Tiled storage (a SQL
        # table keeps them as text), so they go beside the stream's table as array nodes keyed by the data
        # key, one row per event: where Bluesky's layout puts a detector's external arrays. Documents come
        # one at a time (streamed); a run's arrays are written when its stop document arrives (the JSONL
        # copy has them as they come).
        for name, doc in docs:
            doc = jsonable(doc)
            if name == "descriptor":
                self._streams[doc["uid"]] = doc.get("name", "primary")
                self._arrays[doc["uid"]] = {k for k, v in doc["data_keys"].items() if v.get("shape")}
                self._runs_of[doc["uid"]] = run_uid
            elif name == "event" and self._arrays.get(doc["descriptor"]):
                keys = self._arrays[doc["descriptor"]]
                rows = self._values.setdefault(run_uid, {})
                for k in keys:
                    rows.setdefault((self._streams[doc["descriptor"]], k), []).append(doc["data"].get(k))
                doc = {**doc, "data": {k: v for k, v in doc["data"].items() if k not in keys},
                       "timestamps": {k: v for k, v in doc["timestamps"].items() if k not in keys}}
            self.writer(name, doc)
            if name == "stop":
                self._write_arrays(run_uid)
        return f"{self.uri}/api/v1/metadata/{run_uid}"

    def _write_arrays(self, run_uid: str) -> None:
        values = self._values.pop(run_uid, {})
        if values:
            run = self.client[run_uid]
            for (stream, key), rows in values.items():
                run[stream].write_array(np.asarray(rows, dtype=float), key=key)
        for desc in [d for d, s in self._runs_of.items() if s == run_uid]:
            self._arrays.pop(desc, None)
            self._streams.pop(desc, None)
            self._runs_of.pop(desc, None)

    def read(self, run_uid: str) -> list[Document]:
        md = self.client[run_uid].metadata
        return [(name, dict(md[name])) for name in ("start", "stop") if md.get(name)]

    def close(self) -> None:
        self.client.context.close()


class FanOut:
    """Several sinks at once (JSONL beside Tiled): every run goes to each; ``read`` from the first."""

    def __init__(self, sinks: list[DocumentSink]):
        self.sinks = sinks

    def write(self, run_uid: str, task_id: str | None, docs: list[Document]) -> str:
        return ";".join(s.write(run_uid, task_id, docs) for s in self.sinks)

    def read(self, run_uid: str) -> list[Document]:
        return self.sinks[0].read(run_uid)

    def close(self) -> None:
        for sink in self.sinks:
            if hasattr(sink, "close"):
                sink.close()


class DocumentStream:
    """Hands one plan's documents to a sink as the RunEngine emits them (one ``write`` per document).

    Called on the RunEngine's thread. A sink that fails is logged and left alone for the rest of
    the plan: keeping documents must never fail the physical work they describe.
    """

    def __init__(self, sink: DocumentSink, task_id: str | None):
        self.sink = sink
        self.task_id = task_id
        self.where: dict[str, str] = {}  # run uid -> where its documents are
        self.error: str | None = None
        self._run_of_descriptor: dict[str, str] = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if self.error is not None:
            return
        uid = _run_uid(name, doc, self._run_of_descriptor)
        if not uid:
            return
        try:
            self.where[uid] = self.sink.write(uid, self.task_id, [(name, doc)])
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("documents of task %s could not be kept (%s); the plan goes on", self.task_id, self.error)


def _run_uid(name: str, doc: dict[str, Any], by_descriptor: dict[str, str]) -> str:
    if name == "start":
        return str(doc["uid"])
    if name in ("stop", "descriptor"):
        uid = str(doc["run_start"])
        if name == "descriptor":
            by_descriptor[doc["uid"]] = uid
        return uid
    if name in ("event", "event_page"):
        return by_descriptor.get(doc.get("descriptor", ""), "")
    return str(doc.get("run_start", ""))


def split_by_run(docs: list[Document]) -> dict[str, list[Document]]:
    """Group a plan's documents by run start uid (a composed plan makes several runs)."""
    out: dict[str, list[Document]] = {}
    by_descriptor: dict[str, str] = {}
    for name, doc in docs:
        out.setdefault(_run_uid(name, doc, by_descriptor), []).append((name, doc))
    return out
