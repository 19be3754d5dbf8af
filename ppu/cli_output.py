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


FREE_MIN = 20  # the least a free-text column (an error, a reason) is cut to at a narrow terminal
WORD_MIN = 10  # the least a column of names (capabilities, backends) is cut to, when even that must be
GAP = 2  # spaces between two columns at a terminal


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def fit(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]], room: int,
        optional: Sequence[str] = ()) -> tuple[list[int], list[int], list[str]]:
    """How a listing fits a terminal ``room`` characters wide, one line per row: the columns shown
    (their indices), every column's width, and the ``optional`` columns left out to make room.

    Every column is as wide as its widest cell; when that is too wide, in turn: free text (a column
    with a cut width) narrows to FREE_MIN; columns empty in every row go; the ``optional`` columns
    go, in the order given; the widest column of names narrows, to WORD_MIN at least; free text
    narrows further; the last columns go. No column is narrower than its header, the first (the ids)
    is never cut, and a cut cell ends in an ellipsis: a row is never folded onto more lines."""
    names = [name for name, _ in columns]
    free = [w > 0 for _, w in columns]
    natural = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(names)]
    width = natural[:]
    shown = list(range(len(columns)))

    def over() -> int:
        return sum(width[i] for i in shown) + GAP * (len(shown) - 1) - room

    if over() > 0:
        for i in shown[1:]:
            if free[i]:
                width[i] = min(natural[i], max(len(names[i]), FREE_MIN))
    if over() > 0:
        shown = [i for i in shown if i == 0 or any(row[i] for row in rows)]
    left_out = []
    for name in optional:
        if over() <= 0:
            break
        i = names.index(name)
        if i in shown:
            shown.remove(i)
            left_out.append(name)
    for name in reversed(left_out[:-1]):  # one left out later may have made room for one left out before
        i = names.index(name)
        shown = sorted([*shown, i])
        if over() > 0:
            shown.remove(i)
        else:
            left_out.remove(name)
    while over() > 0:
        floor = [max(len(names[i]), min(natural[i], WORD_MIN)) for i in range(len(names))]
        cuttable = [i for i in shown[1:] if not free[i] and width[i] > floor[i]]
        if not cuttable:
            break
        i = max(cuttable, key=lambda k: width[k])
        width[i] -= min(over(), width[i] - floor[i])
    while over() > 0:  # free text narrows further, the widest first, to its header (8 at least)
        cuttable = [i for i in shown[1:] if free[i] and width[i] > max(len(names[i]), 8)]
        if not cuttable:
            break
        i = max(cuttable, key=lambda k: width[k])
        width[i] -= min(over(), width[i] - max(len(names[i]), 8), max(1, width[i] // 4))
    while over() > 0 and len(shown) > 1:  # a very narrow terminal: the last columns go
        left_out.append(names[shown.pop()])
    spare = -over()
    for i in shown[1:]:  # what is left goes to free text
        if free[i] and spare > 0:
            grow = min(spare, natural[i] - width[i])
            width[i] += grow
            spare -= grow
    return shown, width, left_out


def listing(title: str, columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]], *,
             plain: bool = False, empty: str = "", after: str = "", optional: Sequence[str] = ()) -> None:
    """A listing, every command's the same way.

    In a pipe, or with --plain: one tab-separated line per row with nothing else (whole cells, no
    header), so ``wc -l`` counts rows and ``cut -f1`` gives the first column; an empty listing says
    so on stderr (``empty``, else "TITLE: none"). At a terminal: one line per row, cut to the
    terminal's width (see :func:`fit`; a table up to TABLE_ROWS rows, plain aligned columns above,
    as a rich table measures every cell first). ``columns``: each column's name and, for free text,
    the width a cell is cut to at a terminal (0: a column of names or numbers, cut only when the
    terminal leaves no other way); the first column is never cut. ``optional``: columns that may be
    left out at a narrow terminal, the first named first (a remark says which).
    """
    if plain or not is_terminal(sys.stdout):
        write_lines("\t".join(one_line(c) for c in row) for row in rows)
        if not rows:
            remark(empty or f"{title}: none")
        return
    if not rows:
        console.print(empty or f"{title}: none", highlight=False)
        return
    cut = [[c if not w or len(c) <= w else c[:w - 1] + "…" for c, (_, w) in
            zip(map(one_line, row), columns, strict=True)] for row in rows]
    shown, width, left_out = fit(columns, cut, max(console.width, 40), optional)
    if len(rows) <= TABLE_ROWS:
        t = Table(title=f"{title} ({len(rows)})", box=None, padding=(0, GAP // 2), pad_edge=False,
                  collapse_padding=False, show_edge=False)
        for i in shown:
            t.add_column(columns[i][0], width=width[i], min_width=width[i], max_width=width[i], no_wrap=True,
                         overflow="ellipsis")
        for row in cut:
            t.add_row(*(escape(row[i]) for i in shown))
        console.print(t)
    else:
        def line(cells: Sequence[str]) -> str:
            return (" " * GAP).join(_cut(cells[i], width[i]).ljust(width[i]) for i in shown).rstrip()

        console.print(f"{title} ({len(rows)})", highlight=False, soft_wrap=True)
        console.print(escape(line([name for name, _ in columns])), style="bold", highlight=False, soft_wrap=True)
        write_lines(line(row) for row in cut)
    if left_out:
        console.print(f"left out at this width: {', '.join(left_out)}; --plain shows all",
                      style="dim", highlight=False)
    if after:
        console.print(after, highlight=False)


# ---- commands ----------------------------------------------------------------------------------
