"""How the CLI prints: a table for a person at a terminal; one line per row, or JSON, for a pipe.

Listings are the same in every command (:func:`listing`); lines meant for a person go to stderr in a
pipe (:func:`remark`), so that a pipe carries only rows.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole for logs and grep

TABLE_ROWS = 200  # rich measures every cell of a table (over a minute for 60,000 rows): above this, plain columns
_LINE_BREAKS = re.compile(r"[\t\n\r\v\f\x1c-\x1e\x85\u2028\u2029]+")


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal, a person reading (not a pipe, a file, or a test's capture)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def one_line(value: object) -> str:
    """A cell of a tab-separated line: tabs and line breaks inside it become one space."""
    return _LINE_BREAKS.sub(" ", str(value)) if value is not None else ""


def write_lines(lines: Iterable[str]) -> None:
    """Lines on stdout as they are: no markup, no wrapping, no measuring (fast for any number)."""
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def json_doc(doc: Any) -> None:
    write_lines([json.dumps(doc, indent=2, default=str)])


def json_lines(rows: Iterable[Any]) -> None:
    """One JSON object per line; pydantic models as their own JSON, anything else through json.dumps."""
    write_lines(r.model_dump_json() if hasattr(r, "model_dump_json") else json.dumps(r, default=str) for r in rows)


def remark(text: str) -> None:
    """A line for the person (an empty list, what to do next): on stdout at a terminal, on stderr in a pipe,
    so that a pipe carries only rows."""
    (console if is_terminal(sys.stdout) else err).print(text, highlight=False)


@contextlib.contextmanager
def progress(what: str, long: bool) -> Iterator[None]:
    """A live line on stderr while long work runs, when stderr is a terminal; never in a pipe or a log."""
    if not (long and is_terminal(sys.stderr)):
        yield
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        bar.add_task(what, total=None)
        yield


def listing(title: str, columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]], *,
             plain: bool = False, empty: str = "", after: str = "") -> None:
    """A listing, every command's the same way.

    In a pipe, or with --plain: one tab-separated line per row with nothing else (whole cells, no
    header), so ``wc -l`` counts rows and ``cut -f1`` gives the first column. At a terminal: a table,
    or above TABLE_ROWS rows plain aligned columns cut to the terminal's width (a rich table measures
    every cell first). ``columns``: each column's name and the width a cell is cut to at a terminal
    (0: whole); the first column is never folded.
    """
    if plain or not is_terminal(sys.stdout):
        write_lines("\t".join(one_line(c) for c in row) for row in rows)
        if not rows and empty:
            remark(empty)
        return
    if not rows:
        console.print(empty or f"{title}: none", highlight=False)
        return
    cut = [[c if not w or len(c) <= w else c[:w - 1] + "…" for c, (_, w) in
            zip(map(one_line, row), columns, strict=True)] for row in rows]
    if len(rows) <= TABLE_ROWS:
        t = Table(title=f"{title} ({len(rows)})")
        key = max(len(row[0]) for row in cut)  # whole ids: every other column folds first
        for i, (name, _) in enumerate(columns):
            t.add_column(name, no_wrap=True, min_width=key) if i == 0 else t.add_column(name, overflow="fold")
        for row in cut:
            t.add_row(*(escape(c) for c in row))
        console.print(t)
    else:
        widths = [max(len(name), *(len(row[i]) for row in cut)) for i, (name, _) in enumerate(columns)]
        room = max(console.width, 40)

        def line(cells: Sequence[str]) -> str:
            text = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
            return text if len(text) <= room else text[:room - 1] + "…"

        console.print(f"{title} ({len(rows)})", highlight=False, soft_wrap=True)
        console.print(escape(line([name for name, _ in columns])), style="bold", highlight=False, soft_wrap=True)
        write_lines(line(row) for row in cut)
    if after:
        console.print(after, highlight=False)


# ---- commands ----------------------------------------------------------------------------------
