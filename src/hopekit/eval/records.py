"""Results are records: one JSON line per measurement (DESIGN §6).

Required fields: ``method, params, train_len, eval_len, task, metric, value, seed, model, corpus,
commit, time``; free extra fields (``protocol``, ``config``, ``tokens``, ...) are allowed. ``params``
(and ``config["pe"]``) hold the encoding's full parameter set with defaults filled in (``pe.resolve``),
so a record still says what it measured after a default changes. Reports and plots read records,
never models.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

__all__ = ["REQUIRED_FIELDS", "make_record", "append_records", "read_records", "git_commit"]

REQUIRED_FIELDS = ("method", "params", "train_len", "eval_len", "task", "metric", "value", "seed",
                   "model", "corpus", "commit", "time")

_COMMIT: str | None = None


def git_commit() -> str:
    """The current git commit of the hopekit source tree (``+dirty`` if modified), or "unknown"."""
    global _COMMIT
    if _COMMIT is None:
        root = Path(__file__).resolve().parents[3]
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                 timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            _COMMIT = (sha + ("+dirty" if dirty else "")) if sha else "unknown"
        except (OSError, subprocess.SubprocessError):
            _COMMIT = "unknown"
    return _COMMIT


def make_record(**fields: Any) -> dict[str, Any]:
    """A record with ``commit`` and ``time`` filled in; raises if a required field is missing."""
    fields.setdefault("commit", git_commit())
    fields.setdefault("time", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise ValueError(f"record: missing field(s) {missing}")
    value = fields["value"]
    if isinstance(value, float) and not math.isfinite(value):
        fields["value"] = None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return fields


def append_records(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows as JSON lines and fsync, so a killed run keeps every finished measurement."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL file; a truncated last line (killed mid-write) is ignored."""
    rows = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON")
        if row.get("value") in ("inf", "-inf"):
            row["value"] = float(row["value"])
        rows.append(row)
    return rows
