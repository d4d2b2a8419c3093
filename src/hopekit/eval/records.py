"""Results are records: one JSON line per measurement (DESIGN §6).

Required fields: ``method, params, train_len, eval_len, task, metric, value, seed, model, corpus,
commit, time``; free extra fields (``protocol``, ``config``, ``tokens``, ``model_digest``, ...) are
allowed. ``params`` (and ``config["pe"]``) hold the encoding's full parameter set with defaults filled
in (``pe.resolve``), so a record still says what it measured after a default changes. Reports and
plots read records, never models.

Writing: :func:`append_records` repairs a partial last line (a run killed mid-write, a full disk)
before it appends, and rolls back a write that fails part-way, so the file stays one valid row per
line. Reading: :func:`read_records` refuses a malformed row with the file, the line and what is wrong.
Row builders for perplexity results: :func:`ppl_records`, :func:`skipped_records`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Mapping

if TYPE_CHECKING:
    from torch import nn

    from .perplexity import PerplexityResult

__all__ = ["REQUIRED_FIELDS", "make_record", "append_records", "read_records", "git_commit",
           "model_descriptor", "model_digest", "ppl_records", "skipped_records", "record_key", "canonical_params"]

REQUIRED_FIELDS = ("method", "params", "train_len", "eval_len", "task", "metric", "value", "seed",
                   "model", "corpus", "commit", "time")

_COMMIT: str | None = None


# --------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------


def git_commit(_root: str | os.PathLike | None = None) -> str:
    """The git commit of hopekit's own source checkout (``+dirty`` if modified); for an installed
    copy that is not such a checkout, ``"hopekit-<version>"`` (a git repository *around* the install,
    e.g. a user's project holding a venv, is another project's); ``"unknown"`` if neither is known.

    ``_root`` (tests only): the directory to treat as the checkout root instead of this file's."""
    global _COMMIT
    if _root is None and _COMMIT is not None:
        return _COMMIT
    root = Path(__file__).resolve().parents[3] if _root is None else Path(_root).resolve()
    commit = _checkout_commit(root) or _installed_version()
    if _root is None:
        _COMMIT = commit
    return commit


def _is_hopekit_checkout(root: Path) -> bool:
    """``root`` holds ``src/hopekit`` and a ``pyproject.toml`` whose project is named hopekit."""
    pyproject = root / "pyproject.toml"
    if not (root / "src" / "hopekit").is_dir() or not pyproject.is_file():
        return False
    return re.search(r"""^\s*name\s*=\s*["']hopekit["']""", pyproject.read_text(errors="replace"), re.M) is not None


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=120).stdout.strip()


def _checkout_commit(root: Path) -> str | None:
    """The commit of ``root`` when it is hopekit's checkout and the top of its own git work tree."""
    if not _is_hopekit_checkout(root):
        return None
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != root:
            return None   # not under git, or inside someone else's repository
        sha = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except subprocess.TimeoutExpired:   # a checkout whose git did not answer: its commit is unknown, not the release
        warnings.warn(f"git in {root} did not answer within 120 s: records get commit 'unknown'", stacklevel=3)
        return "unknown"
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) if sha else None


def _installed_version() -> str:
    try:
        return f"hopekit-{metadata.version('hopekit')}"
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------------
# Rows and the file
# --------------------------------------------------------------------------------------------------


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
    """Append rows as JSON lines and fsync, so a killed run keeps every finished measurement.

    A partial last line left by an earlier writer is repaired first (cut off, with a warning; kept
    if it is a whole row that only lacks its newline). A write that fails part-way (a full disk) is
    rolled back to the previous end of the file before the error propagates."""
    path = Path(path)
    data = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b", buffering=0) as f:   # unbuffered: nothing is left to flush after a failure
        end = _repair_tail(f, path)
        try:
            _write(f, data)
            os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                f.truncate(end)
            raise


def _write(f: BinaryIO, data: bytes) -> None:
    """Write all of ``data`` (a raw file may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _repair_tail(f: BinaryIO, path: Path) -> int:
    """Make the file end with a newline, dropping a partial last line; returns the new size."""
    size = f.seek(0, os.SEEK_END)
    start = size
    while start > 0:                                    # back to the byte after the last newline
        step = min(1 << 16, start)
        f.seek(start - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            start = start - step + i + 1
            break
        start -= step
    if start == size:
        return size
    f.seek(start)
    tail = f.read()
    if _is_row(tail):
        _write(f, b"\n")
        return size + 1
    warnings.warn(f"{path}: dropped a partial last line ({size - start} bytes, an interrupted write) "
                  f"before appending", RuntimeWarning, stacklevel=3)
    f.truncate(start)
    return start


def _is_row(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:   # JSONDecodeError and UnicodeDecodeError
        return False


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL file; a partial last line (killed mid-write) is ignored. Any other
    malformed line raises ``ValueError`` naming the file, the line number and what is wrong (not
    JSON, not an object, or the required fields it lacks)."""
    rows = []
    lines = Path(path).read_bytes().splitlines()
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:   # JSONDecodeError and UnicodeDecodeError
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a valid JSON line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path}:{number}: record lacks required field(s) {', '.join(missing)}")
        if row["value"] in ("inf", "-inf"):
            row["value"] = float(row["value"])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# Perplexity rows
# --------------------------------------------------------------------------------------------------


def record_key(fields: Mapping[str, Any], key_fields: Iterable[str]) -> str:
    """The ``key_fields`` of a record (or of a planned one) as one comparable string: two measurements
    with the same key are the same measurement, and the second is skipped. ``params`` is compared in its
    canonical form (:func:`canonical_params`), so a record written before a method gained a field that
    changes nothing at its default still matches."""
    key = {f: fields.get(f) for f in key_fields}
    if "params" in key:
        key["params"] = canonical_params(key["params"])
    return json.dumps(key, sort_keys=True, default=list)


def canonical_params(params: Any) -> Any:
    """A resolved pe config without the fields its method says are the same as absent (fields added
    later, at a value that computes what the older code did: ``Params.absent_means_same``)."""
    from hopekit import pe as pe_lib

    if not isinstance(params, Mapping) or params.get("kind") not in pe_lib.REGISTRY:
        return params
    return {k: canonical_params(v) for k, v in params.items()   # nested configs too (BiPE's inter)
            if not pe_lib.same_as_absent(params, k)}


def model_descriptor(model: nn.Module) -> str:
    """A short model descriptor for records, e.g. ``"decoder-d256-l4-h4-kv4-v257-2.1M"``; for a
    transformers model its ``model_type`` and config shape, e.g. ``"llama-d576-l30-h9-kv3-v49152-134.52M"``."""
    cfg = getattr(model, "config", None)
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    size = f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"
    if cfg is not None and all(hasattr(cfg, k) for k in ("model_type", "hidden_size", "num_hidden_layers")):
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        return (f"{cfg.model_type}-d{cfg.hidden_size}-l{cfg.num_hidden_layers}-h{heads}-kv{kv}"
                f"-v{cfg.vocab_size}-{size}")
    if cfg is None or not hasattr(cfg, "d_model"):
        return f"{type(model).__name__.lower()}-{size}"
    return (f"{type(model).__name__.lower()}-d{cfg.d_model}-l{cfg.n_layers}-h{cfg.n_heads}"
            f"-kv{cfg.n_kv_heads}-v{cfg.vocab_size}-{size}")


def model_digest(model: nn.Module) -> str:
    """The identity of the weights a record measured: :func:`hopekit.hashing.digest` of the model's
    ``state_dict`` (names, dtypes, shapes, bytes). Costs one pass over the weights."""
    from ..hashing import digest

    return digest(model.state_dict())


def _jsonable(params: Any) -> Any:
    return json.loads(json.dumps(dict(params) if isinstance(params, Mapping) else params, default=list))


def ppl_records(result: PerplexityResult, *, method: str, params: Mapping[str, Any], train_len: int,
                seed: int, model: str, corpus: str, bins: int = 32, task: str = "lm",
                **extra: Any) -> list[dict[str, Any]]:
    """Record rows (``make_record``) for one result: metrics ``"ppl"``, ``"nll"`` and
    ``"loss_by_position"`` (value: the curve binned into ``bins`` bins, with ``bin_start`` / ``bin_end``
    / ``bin_count`` alongside).

    ``method``: the method name as reports show it (``"rope+yarn"`` for an eval-time extension of a
    rope model); ``params``: the pe config used at evaluation; ``model``: a short descriptor
    (:func:`model_descriptor`). Every row also carries ``protocol``, ``stride``, ``tokens``,
    ``windows``, ``documents``, ``skipped_documents``, ``budget_reached`` and ``multiple``
    (eval_len / train_len) and ``sampling``; ``extra`` fields (tokenizer, model_digest, ...) are added to
    every row. The ``"ppl"`` row also carries ``ppl_window_ci95``: the 95 % percentile-bootstrap interval
    over the scored windows (:meth:`~hopekit.eval.perplexity.PerplexityResult.bootstrap_ppl`, 1000
    resamples, generator seed 0), null when nothing was scored.
    """
    common = dict(method=method, params=_jsonable(params), train_len=int(train_len), eval_len=result.eval_len,
                  task=task, seed=seed, model=model, corpus=corpus, protocol=result.protocol,
                  stride=result.stride, sampling=result.sampling, tokens=result.tokens, windows=result.windows,
                  documents=result.documents, skipped_documents=result.skipped_documents,
                  budget_reached=result.budget_reached, multiple=result.eval_len / train_len, **extra)
    binned = result.binned(bins)
    low, high = result.bootstrap_ppl()
    interval = None if math.isnan(low) else [low, high]
    return [
        make_record(metric="ppl", value=result.ppl, ppl_window_ci95=interval, **common),
        make_record(metric="nll", value=result.nll, **common),
        make_record(metric="loss_by_position", value=binned["loss"], bin_start=binned["start"],
                    bin_end=binned["end"], bin_count=binned["count"], **common),
    ]


def skipped_records(*, method: str, params: Mapping[str, Any], train_len: int, eval_len: int, protocol: str,
                    seed: int, model: str, corpus: str, reason: str, stride: int | None = None,
                    task: str = "lm", **extra: Any) -> list[dict[str, Any]]:
    """``"ppl"`` and ``"nll"`` rows with value None and ``skipped=reason`` (e.g. a
    :class:`~hopekit.eval.perplexity.LengthLimitError` for learned absolute positions past their table)."""
    from .perplexity import canonical_protocol   # perplexity imports this module

    common = dict(method=method, params=_jsonable(params), train_len=int(train_len), eval_len=int(eval_len),
                  task=task, seed=seed, model=model, corpus=corpus, protocol=canonical_protocol(protocol),
                  stride=stride, skipped=reason, multiple=eval_len / train_len, **extra)
    return [make_record(metric=m, value=None, **common) for m in ("ppl", "nll")]
