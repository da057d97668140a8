"""One home for the benchmarks' result files: a row appended at a time, so an interrupted run keeps its rows."""

from __future__ import annotations

import csv
from pathlib import Path


def append_row(path: Path, fields: list[str], row: dict) -> None:
    """Append `row` to the CSV at `path`, writing the header first when the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        if new_file:
            writer.writeheader()
        writer.writerow(row)
