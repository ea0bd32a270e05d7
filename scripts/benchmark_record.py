"""A benchmark's record in its docs/*.json: one entry per invocation, added to what the file holds, so that
measurements of other models or devices stay (scripts/benchmark_population.py, scripts/benchmark_search.py)."""

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from makemore_lab.atomic_write import write_text_atomically


def append_run(path: Path, script: str, rows: list, table: str, **extra) -> None:
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs.append(
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other work)",
            "command": " ".join(["python", script, *sys.argv[1:]]),
            "rows": rows,
            "table": table,
            **extra,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps({"runs": runs}, indent=2) + "\n")  # a stopped benchmark: the file as it was
