"""Long-text tasks in the SCROLLS format: metrics, a loader, fine-tuning and generation-based evaluation.

SCROLLS (Shaham et al., 2022) casts seven long-document tasks as text-to-text pairs: one JSON row per
reference with the fields ``id``, ``pid``, ``input``, ``output``; an input with several reference
outputs appears in several rows with the same ``id`` (and ``input``) and different ``pid`` s. The
question or hypothesis of a QA/NLI task is at the start of ``input``, followed by a blank line and the
document. ::

    from hopekit.eval.scrolls import load_scrolls, scrolls_metrics, load_scrolls_config, run_scrolls

    data = load_scrolls("qasper", "validation", source="auto", limit=50)    # grouped by id
    scrolls_metrics("qasper", ["yes"], [["Yes", "No"]])                      # {"f1": 100.0, "scrolls_score": 100.0}
    config, task = load_scrolls_config("scrolls", ["scrolls.task=qasper", "train.steps=100"])
    result = run_scrolls(config, task, "runs/qasper")                       # fine-tune, generate, score, record

**Metrics** (:data:`TASK_METRIC`), as SCROLLS' own metric script defines them, implemented here from
those definitions, in percent:

* ``gov_report``, ``summ_screen_fd``, ``qmsum``: ROUGE F-measures from the ``rouge-score`` library
  (``rouge1``, ``rouge2``, ``rougeL``; no stemming; its tokenizer lower-cases and keeps runs of ``a-z0-9``),
  reported as ``rouge/rouge1`` ... and their geometric mean ``rouge/geometric_mean`` (the SCROLLS score).
  For each prediction every ROUGE type takes its maximum over the references separately; each type is
  averaged over the examples; the geometric mean is that of the three averages. SCROLLS also reports
  ``rouge/rougeLsum`` on texts split into sentences by nltk's punkt model (one sentence a line); it is
  added when that model is installed (``python -m nltk.downloader punkt_tab``) and left out otherwise
  (it takes no part in the score, and sentence splitting changes no other ROUGE type).
* ``qasper``, ``narrative_qa``: token F1 between SQuAD-normalised texts (lower case, punctuation and
  the articles a/an/the removed, whitespace collapsed), 0 when no token is shared; maximum over the
  references, averaged: ``f1``.
* ``quality``, ``contract_nli``: exact match of the SQuAD-normalised texts, maximum over the
  references, averaged: ``exact_match``.

``scrolls_score`` repeats the task's main number.

**Loading** (:func:`load_scrolls`). ``source="hub"``: the task's archive in the hub repository
``tau/scrolls`` (``<task>.zip``, holding ``<task>/<split>.jsonl``), read through ``datasets``' JSON
builder (``datasets`` 4 no longer runs the repository's loading script, and the hub holds no parquet
conversion of it); ``datasets`` caches it. ``source="local"``: the small sample shipped with hopekit
(``hopekit/data/scrolls_sample/<task>/<split>.jsonl``, the same layout and fields; self-written,
fictional documents, see its README) — ``contract_nli``, ``qasper`` and ``gov_report``, train and
validation. ``source=<directory>``: the same layout on disk (e.g. an extracted SCROLLS archive).
``source="auto"``: the hub when it answers (:func:`hopekit.hub.check_hub_access`: an offline variable
or no TCP connection within 3 s means no), else the local sample, and the log says which and why.
Rows are grouped by ``id`` in file order; ``limit`` keeps the first ``limit`` inputs. SCROLLS withholds
the test split's outputs (``output`` is null there): such an input has no reference.

**Fine-tuning** (:func:`run_scrolls`, ``hopekit scrolls``) runs :func:`hopekit.train.train` on
:class:`ScrollsBatches`: every (input, reference) pair is one training row, ``input + separator +
output + <end of text>``, the input cut to ``max_input`` tokens so that the row fits ``train_len + 1``
tokens (the loss is next-token, so a row of ``train_len + 1`` tokens gives ``train_len`` predictions).
``keep="start"`` keeps the first ``max_input`` tokens (SCROLLS' baselines; the question stays),
``"start_and_end"`` the first and last halves. An output longer than ``max_output`` tokens is cut (and
gets no end token). The loss is on the output tokens and the end token only (targets of the input,
separator and padding are −1). Rows are drawn epoch by epoch in an order shuffled from ``(seed, epoch)``,
so a batch is a pure function of ``(train.seed, step)``: ``--resume`` continues bit for bit, and a
resume on other data (task, split, limit, truncation, separator, tokenizer) is refused by the data hash.
The model is the reference decoder (``model``/``pe``; from scratch, or ``init_from`` a checkpoint) or a
pretrained transformers model (``hf``, with its own tokenizer).

**Evaluation**: greedy decoding (``Decoder.generate(ids, max_output, temperature=0)``, or
:func:`hopekit.integrations.hf.generate` for a pretrained model) after ``input + separator`` (input cut
the same way, to ``eval_max_input`` tokens, which may exceed the training window); the prediction is
the text before the first end token, stripped. Records (``records.jsonl`` in the run directory): one
row per metric, ``task="scrolls/<task>"``, with the split, source, number of examples, the model's
weight digest, the resolved experiment (``config``) and ``scrolls`` section; the predictions go to
``predictions-<split>.jsonl``. A measurement already recorded for the same weights and settings is not
repeated.

The ``scrolls`` preset (``hopekit/presets/scrolls/scrolls.yaml``) is an experiment plus a ``scrolls:``
section (:class:`ScrollsConfig`), small enough for two CPU cores and the local sample.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib.util
import json
import random
import re
import string
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "TASK_METRIC", "SPLITS", "SOURCES", "KEEP", "SAMPLE_DIR", "SCROLLS_PRESET_DIR", "KEY_FIELDS",
    "normalize_answer", "exact_match", "token_f1", "rouge_scores", "scrolls_metrics", "score_key",
    "ScrollsExample", "ScrollsData", "load_scrolls", "sample_tasks",
    "ScrollsConfig", "load_scrolls_config", "encode_pair", "ScrollsBatches", "generate_predictions",
    "ScrollsResult", "run_scrolls",
]

#: each SCROLLS task and the metric SCROLLS scores it with
TASK_METRIC = {
    "gov_report": "rouge", "summ_screen_fd": "rouge", "qmsum": "rouge",
    "qasper": "f1", "narrative_qa": "f1",
    "quality": "exact_match", "contract_nli": "exact_match",
}
SPLITS = ("train", "validation", "test")
SOURCES = ("auto", "hub", "local")
KEEP = ("start", "start_and_end")
#: the local sample, in the layout of SCROLLS' archives: <task>/<split>.jsonl
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "scrolls_sample"
SCROLLS_PRESET_DIR = Path(__file__).resolve().parent.parent / "presets" / "scrolls"
_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_INSTALL = "pip install 'hopekit[scrolls]'"
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def score_key(task: str) -> str:
    """The name of the task's SCROLLS score among :func:`scrolls_metrics`' keys."""
    metric = _task_metric(task)
    return "rouge/geometric_mean" if metric == "rouge" else metric


def _task_metric(task: str) -> str:
    if task not in TASK_METRIC:
        raise ValueError(f"scrolls.task={task!r}: not a SCROLLS task; expected one of {list(TASK_METRIC)}")
    return TASK_METRIC[task]


# ==================================================================================================
# Metrics
# ==================================================================================================

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop ASCII punctuation, drop the words a/an/the, collapse
    whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall between the normalised texts (token counts shared as
    a multiset); 0.0 when no token is shared (so also when either side is empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


@functools.lru_cache(maxsize=2)
def _rouge_scorer(types: tuple[str, ...]):
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ImportError(f"ROUGE (the gov_report, summ_screen_fd and qmsum metric) needs the rouge-score package: "
                          f"{_INSTALL}") from None
    return rouge_scorer.RougeScorer(list(types), use_stemmer=False)


@functools.lru_cache(maxsize=1)
def _sentence_splitter() -> Callable[[str], list[str]] | None:
    """nltk's punkt sentence splitter when its English model is installed (SCROLLS' rougeLsum input), else None."""
    try:
        import nltk
    except ImportError:
        return None
    for resource in ("tokenizers/punkt_tab/english/", "tokenizers/punkt/english.pickle"):
        try:
            nltk.data.find(resource)
        except LookupError:
            continue
        return nltk.sent_tokenize
    return None


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE F-measures in [0, 1] of ``prediction`` against one ``reference`` (``rouge-score``, no
    stemming): ``rouge1``, ``rouge2``, ``rougeL``, and ``rougeLsum`` on punkt-split sentences when nltk's
    punkt model is installed."""
    out = {k: v.fmeasure for k, v in _rouge_scorer(_ROUGE_TYPES).score(reference, prediction).items()}
    split = _sentence_splitter()
    if split is not None:
        lines = ["\n".join(split(t)) for t in (reference, prediction)]
        out["rougeLsum"] = _rouge_scorer(("rougeLsum",)).score(*lines)["rougeLsum"].fmeasure
    return out


def scrolls_metrics(task: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The task's SCROLLS metrics in percent (module docstring) over ``predictions[i]`` against the
    references ``references[i]`` (at least one each), and ``scrolls_score``."""
    metric = _task_metric(task)
    if isinstance(predictions, str) or len(predictions) != len(references):
        raise ValueError(f"scrolls_metrics: expected one list of references per prediction, got {len(references)} "
                         f"for {len(predictions)} predictions")
    if not predictions:
        raise ValueError("scrolls_metrics: no predictions to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"scrolls_metrics: references[{i}] must be a non-empty list of strings, got {refs!r}")
    n = len(predictions)
    if metric == "rouge":
        sums: dict[str, float] = collections.defaultdict(float)
        for pred, refs in zip(predictions, references):
            per_ref = [rouge_scores(pred, ref) for ref in refs]
            for key in per_ref[0]:
                sums[key] += max(s[key] for s in per_ref)       # each type's best reference, separately
        out = {f"rouge/{key}": 100.0 * total / n for key, total in sums.items()}
        out["rouge/geometric_mean"] = (out["rouge/rouge1"] * out["rouge/rouge2"] * out["rouge/rougeL"]) ** (1 / 3)
    else:
        fn = token_f1 if metric == "f1" else exact_match
        out = {metric: 100.0 * sum(max(fn(p, r) for r in refs) for p, refs in zip(predictions, references)) / n}
    out["scrolls_score"] = out[score_key(task)]
    return out


# ==================================================================================================
# Loading
# ==================================================================================================

@dataclasses.dataclass(frozen=True)
class ScrollsExample:
    """One input and every reference output given for it (one per ``pid``; none in SCROLLS' test split)."""

    id: str
    input: str
    outputs: tuple[str, ...]
    pids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ScrollsData:
    task: str
    split: str
    source: str                     # "hub", "local" (the shipped sample) or "dir"
    location: str                   # the URL or file read
    examples: tuple[ScrollsExample, ...]
    note: str = ""                  # with source="auto": why this source was used

    @property
    def rows(self) -> int:
        """(input, reference) pairs."""
        return sum(len(e.outputs) for e in self.examples)


def sample_tasks() -> dict[str, list[str]]:
    """The tasks and splits of the shipped sample."""
    return {d.name: sorted(p.stem for p in d.glob("*.jsonl"))
            for d in sorted(SAMPLE_DIR.iterdir()) if d.is_dir()}


def load_scrolls(task: str, split: str = "validation", source: str = "auto", limit: int = 0, *,
                 hub: str = "tau/scrolls", log: Callable[[str], None] | None = None) -> ScrollsData:
    """The rows of one task and split, grouped by ``id`` (module docstring). ``source``: ``"auto"``,
    ``"hub"``, ``"local"`` or a directory holding ``<task>/<split>.jsonl``; ``limit``: the first
    ``limit`` inputs (0: all); ``hub``: the hub repository holding ``<task>.zip``; ``log``: where the
    choice of ``"auto"`` is reported."""
    _task_metric(task)
    if split not in SPLITS:
        raise ValueError(f"scrolls split={split!r}: expected one of {SPLITS}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"scrolls limit={limit!r}: expected an int >= 0 (0: all)")
    note = ""
    if source == "auto":
        source, note = _auto_source(task, [split], hub)
        if log is not None:
            log(f"scrolls.source=auto: {note}")
    if source == "hub":
        location, rows = _hub_rows(task, split, hub)
    elif source == "local":
        location, rows = _file_rows(_sample_file(task, split))
    elif isinstance(source, (str, Path)) and Path(source).expanduser().is_dir():
        path = Path(source).expanduser() / task / f"{split}.jsonl"
        if not path.is_file():
            raise ValueError(f"scrolls.source={str(source)!r}: no {task}/{split}.jsonl in that directory")
        location, rows = _file_rows(path)
        source = "dir"
    else:
        raise ValueError(f"scrolls.source={source!r}: expected one of {SOURCES} or a directory holding "
                         "<task>/<split>.jsonl")
    examples = _group(rows, location, limit)
    if not examples:
        raise ValueError(f"scrolls: {task} {split} from {location} holds no rows")
    return ScrollsData(task=task, split=split, source=source, location=location, examples=tuple(examples), note=note)


def _sample_file(task: str, split: str) -> Path:
    path = SAMPLE_DIR / task / f"{split}.jsonl"
    if not path.is_file():
        held = "; ".join(f"{t} ({', '.join(s)})" for t, s in sample_tasks().items())
        raise ValueError(f"scrolls: the local sample has no {task} {split} split; it holds {held}")
    return path


def _auto_source(task: str, splits: Sequence[str], hub: str) -> tuple[str, str]:
    """``("hub", why)`` when ``datasets`` is installed and the hub answers, else ``("local", why)`` (an
    error when the local sample lacks one of ``splits``)."""
    from ..hub import check_hub_access, hub_endpoint

    local = f"using the local sample ({SAMPLE_DIR / task})"
    if importlib.util.find_spec("datasets") is None:
        why = f"the datasets package is not installed ({_INSTALL}); {local}"
    else:
        try:
            check_hub_access("scrolls.source=auto", what=f"{hub} on the hub", offline_vars=_OFFLINE_VARS,
                             advice=local)
            return "hub", f"the hub ({hub_endpoint()}) answers: reading {hub}"
        except ValueError as e:
            why = str(e).removeprefix("scrolls.source=auto: ")
    lacking = [s for s in splits if not (SAMPLE_DIR / task / f"{s}.jsonl").is_file()]
    if lacking:
        held = "; ".join(f"{t} ({', '.join(s)})" for t, s in sample_tasks().items())
        raise ValueError(f"scrolls.source=auto: no hub ({why.split(';')[0]}), and the local sample has no "
                         f"{task} {lacking[0]} split (it holds {held})")
    return "local", why


def _hub_rows(task: str, split: str, hub: str) -> tuple[str, Iterable[Mapping[str, Any]]]:
    """The rows of ``<task>/<split>.jsonl`` inside ``<hub>/<task>.zip`` on the hub, through ``datasets``."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"scrolls.source=hub needs the datasets package: {_INSTALL}") from None
    from ..hub import check_hub_access, hub_endpoint, offline_variable

    endpoint = hub_endpoint()
    url = f"{endpoint}/datasets/{hub}/resolve/main/{task}.zip"
    location = f"zip://{task}/{split}.jsonl::{url}"
    offline = offline_variable(_OFFLINE_VARS)
    if offline is None and urllib.parse.urlparse(endpoint).scheme in ("http", "https"):
        # fail in seconds, not after datasets' retries; offline, datasets reads its own cache
        check_hub_access("scrolls.source=hub", what=f"{hub} on the hub", offline_vars=_OFFLINE_VARS,
                         advice=f"use scrolls.source=local, or set {_OFFLINE_VARS[0]}=1 to read datasets' cache")
    try:
        ds = datasets.load_dataset("json", data_files={split: location}, split=split)
    except FileNotFoundError:
        why = f" ({offline} is set, and datasets has no cached copy)" if offline else ""
        raise ValueError(f"scrolls: no {split} split of {task} at {location}{why}") from None
    except OSError as e:   # connection errors (requests' and huggingface_hub's are OSErrors too)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        why = f"; {offline} is set, and datasets has no cached copy" if offline else ""
        raise ValueError(f"scrolls: reading {location} failed ({type(e).__name__}: {first}){why}") from None
    return location, ds


def _file_rows(path: Path) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{number}: not a valid JSON line") from None
        rows.append(row)
    return str(path), rows


def _group(rows: Iterable[Mapping[str, Any]], location: str, limit: int) -> list[ScrollsExample]:
    """Rows grouped by id in order of first appearance; the first ``limit`` ids (0: all)."""
    groups: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(rows, 1):
        if not isinstance(row, Mapping) or not all(isinstance(row.get(k), str) for k in ("id", "input")) \
                or not isinstance(row.get("output"), (str, type(None))):
            raise ValueError(f"{location}: row {number} is not a SCROLLS row (string id and input, string or null "
                             f"output), got keys {sorted(row) if isinstance(row, Mapping) else type(row).__name__}")
        key = row["id"]
        group = groups.get(key)
        if group is None:
            if limit and len(groups) == limit:
                continue      # later rows of the ids kept still count (an id's rows need not be adjacent)
            group = groups[key] = {"input": row["input"], "outputs": [], "pids": []}
        elif group["input"] != row["input"]:
            raise ValueError(f"{location}: row {number} (id {key!r}) has another input than the id's first row")
        if row["output"] is not None:
            group["outputs"].append(row["output"])
            group["pids"].append(str(row.get("pid", f"{key}_{len(group['pids'])}")))
    return [ScrollsExample(id=k, input=g["input"], outputs=tuple(g["outputs"]), pids=tuple(g["pids"]))
            for k, g in groups.items()]


# ==================================================================================================
# Configuration
# ==================================================================================================

def _fail(obj: Any, name: str, why: str, exc: type[Exception] = ValueError):
    raise exc(f"scrolls.{name}={getattr(obj, name)!r}: {why}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScrollsConfig:
    """The ``scrolls:`` section of a preset: which task, where from, and how examples become tokens."""

    task: str = "contract_nli"
    source: str = "auto"             # "auto", "hub", "local", or a directory holding <task>/<split>.jsonl
    hub: str = "tau/scrolls"         # the hub repository holding <task>.zip
    train_split: str = "train"
    eval_split: str = "validation"
    train_limit: int = 0             # inputs of the train split used (0: all)
    eval_limit: int = 0              # inputs evaluated (0: all)
    max_input: int = 0               # input tokens kept in training (0: what train_len leaves)
    max_output: int = 64             # output tokens trained on, and generated at evaluation
    eval_max_input: int = 0          # input tokens kept at evaluation (0: max_input); may exceed train_len
    keep: str = "start"              # which input tokens a cut keeps: "start" or "start_and_end"
    separator: str = "\n\nAnswer:\n"  # between input and output

    def __post_init__(self) -> None:
        if self.task not in TASK_METRIC:
            _fail(self, "task", f"not a SCROLLS task; expected one of {list(TASK_METRIC)}")
        if not isinstance(self.source, str) or not self.source:
            _fail(self, "source", f"expected one of {SOURCES} or a directory", TypeError)
        if self.source not in SOURCES and not Path(self.source).expanduser().is_dir():
            _fail(self, "source", f"expected one of {SOURCES} or an existing directory holding <task>/<split>.jsonl")
        if not isinstance(self.hub, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", self.hub):
            _fail(self, "hub", "expected a hub dataset repository, owner/name")
        for name in ("train_split", "eval_split"):
            if getattr(self, name) not in SPLITS:
                _fail(self, name, f"expected one of {SPLITS}")
        for name in ("train_limit", "eval_limit", "max_input", "eval_max_input"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, 0)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                _fail(self, name, "expected an int >= 0 (0: the default)")
        if isinstance(self.max_output, bool) or not isinstance(self.max_output, int) or self.max_output < 1:
            _fail(self, "max_output", "expected an int >= 1")
        if self.keep not in KEEP:
            _fail(self, "keep", f"expected one of {KEEP}")
        if not isinstance(self.separator, str) or not self.separator:
            _fail(self, "separator", "expected a non-empty string", TypeError)

    @property
    def metric(self) -> str:
        return TASK_METRIC[self.task]

    def resolved(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ScrollsConfig":
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise TypeError(f"config.scrolls: expected a mapping, got {type(d).__name__}")
        fields = sorted(f.name for f in dataclasses.fields(cls))
        bad = sorted(set(d) - set(fields))
        if bad:
            raise ValueError(f"scrolls.{bad[0]}: unknown key; scrolls accepts {fields}")
        return cls(**d)


def _preset_file(name: str | Path) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"config: {p} is not a file")
        return p
    candidate = SCROLLS_PRESET_DIR / f"{name}.yaml"
    if not candidate.is_file():
        known = sorted(x.stem for x in SCROLLS_PRESET_DIR.glob("*.yaml"))
        raise ValueError(f"preset={str(name)!r}: not a file and not a scrolls preset; scrolls presets: {known}")
    return candidate


def load_scrolls_config(name: str | Path | Mapping[str, Any] | None = "scrolls", overrides: Sequence[str] = ()):
    """``(ExperimentConfig, ScrollsConfig)`` from a scrolls preset (``hopekit/presets/scrolls/<name>.yaml``),
    a YAML file (e.g. a run's ``scrolls.yaml``) or a mapping, with dotted overrides (``train.steps=50``,
    ``scrolls.task=qasper``); every key is checked, an unknown one is an error naming it."""
    from ..config import ExperimentConfig, apply_overrides, load_yaml

    if name is None:
        name = "scrolls"
    d = dict(name) if isinstance(name, Mapping) else load_yaml(_preset_file(name))
    d = apply_overrides(d, list(overrides))
    section = d.pop("scrolls", None)
    return ExperimentConfig.from_dict(d), ScrollsConfig.from_dict(section)


# ==================================================================================================
# Batches
# ==================================================================================================

def _budget(scrolls: ScrollsConfig, train_len: int, separator_tokens: int) -> int:
    """The input tokens kept in training: ``max_input``, or what a row of ``train_len + 1`` tokens leaves
    after the separator, ``max_output`` output tokens and the end token."""
    room = train_len - separator_tokens - scrolls.max_output
    if room < 1:
        raise ValueError(f"train.train_len={train_len}: too short for the separator ({separator_tokens} tokens), "
                         f"scrolls.max_output={scrolls.max_output} and the end token, with any input left")
    if scrolls.max_input > room:
        raise ValueError(f"scrolls.max_input={scrolls.max_input}: with the separator ({separator_tokens} tokens), "
                         f"scrolls.max_output={scrolls.max_output} and the end token a row exceeds "
                         f"train.train_len + 1 = {train_len + 1} tokens; at most {room}")
    return scrolls.max_input or room


def _cut(ids: list[int], limit: int, keep: str) -> list[int]:
    if len(ids) <= limit:
        return ids
    if keep == "start":
        return ids[:limit]
    head = (limit + 1) // 2
    return ids[:head] + ids[len(ids) - (limit - head):]


def encode_pair(tokenizer: Any, text: str, output: str | None, *, max_input: int, max_output: int,
                separator: str, keep: str = "start") -> tuple[list[int], list[int], bool]:
    """``(prompt, answer, cut)``: the prompt is the input's tokens cut to ``max_input`` (``keep``) and the
    separator's; the answer the output's first ``max_output`` tokens, followed by the end token when
    nothing was cut from it (empty for ``output=None``); ``cut``: the input was cut."""
    ids = tokenizer.encode(text)
    prompt = _cut(ids, max_input, keep) + tokenizer.encode(separator)
    if output is None:
        return prompt, [], len(ids) > max_input
    out = tokenizer.encode(output)
    answer = out[:max_output] + ([tokenizer.eos_id] if len(out) <= max_output else [])
    return prompt, answer, len(ids) > max_input


class ScrollsBatches:
    """Training rows ``prompt + answer`` (:func:`encode_pair`) right-padded to ``train_len``, with the loss on
    the answer only, drawn in an order shuffled per epoch from ``(seed, epoch)``: ``batch(step)`` is a pure
    function of ``(seed, step)``. Rows are kept as int32 tensors. ``stream`` is the SHA-256 of every row (and
    of ``train_len`` and ``pad_id``) as a small tensor: :func:`hopekit.checkpoint.data_fingerprint` digests
    it, so a resume sees any change to the data."""

    def __init__(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int, train_len: int,
                 seed: int, pad_id: int):
        if not pairs:
            raise ValueError("ScrollsBatches: no training pairs")
        self.batch_size, self.train_len, self.seed, self.pad_id = batch_size, train_len, seed, pad_id
        self.rows: list[tuple[torch.Tensor, int]] = []           # (prompt + answer, len(prompt))
        h = hashlib.sha256(f"{train_len}:{pad_id}".encode())
        for i, (prompt, answer) in enumerate(pairs):
            if not len(prompt) or not len(answer) or len(prompt) + len(answer) > train_len + 1:
                raise ValueError(f"ScrollsBatches: pair {i} has {len(prompt)} prompt and {len(answer)} answer tokens; "
                                 f"needs >= 1 of each and at most train_len + 1 = {train_len + 1} together")
            seq = torch.tensor([*prompt, *answer], dtype=torch.int32)
            self.rows.append((seq, len(prompt)))
            h.update(f"|{len(prompt)}:".encode())
            h.update(seq.numpy().astype("<i4").tobytes())
        self.stream = torch.tensor(list(h.digest()), dtype=torch.long)
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def order(self, epoch: int) -> list[int]:
        """The rows of ``epoch`` in their shuffled order (from ``(seed, epoch)`` alone)."""
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            order = list(range(len(self.rows)))
            random.Random(f"scrolls:{self.seed}:{epoch}").shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def row(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of pair ``index``, each ``(train_len,)``."""
        seq, prompt = self.rows[index]
        n = len(seq)
        x = torch.full((self.train_len,), self.pad_id, dtype=torch.long)
        y = torch.full((self.train_len,), -1, dtype=torch.long)
        x[:n - 1] = seq[:-1]
        y[prompt - 1:n - 1] = seq[prompt:]                        # the targets that predict the answer
        return x, y

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``step·B … step·B + B − 1`` of the concatenated epoch orders."""
        n = len(self.rows)
        rows = [self.row(self.order(g // n)[g % n]) for g in range(step * self.batch_size, (step + 1) * self.batch_size)]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def epochs(self, steps: int) -> float:
        return steps * self.batch_size / len(self.rows)


# ==================================================================================================
# Generation
# ==================================================================================================

def generate_predictions(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], max_output: int, *,
                         pretrained: bool = False, progress: bool = False) -> list[str]:
    """Greedy continuation of each prompt by up to ``max_output`` tokens, decoded up to the first end
    token and stripped. ``pretrained``: a transformers model (:func:`hopekit.integrations.hf.generate`,
    which stops at the end token); else the reference decoder (``model.generate(ids, n, temperature=0)``)."""
    from tqdm.auto import tqdm

    if pretrained:
        from ..integrations.hf import generate as hf_generate
    device = next(iter(model.parameters())).device
    eos = tokenizer.eos_id
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for prompt in tqdm(prompts, desc="generating", unit="example", disable=None if progress else True):
                ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
                if pretrained:
                    full = hf_generate(model, ids, max_output, eos_token_id=eos)
                else:
                    full = model.generate(ids, max_output, temperature=0)
                new = full[0, len(prompt):].tolist()
                if eos in new:
                    new = new[:new.index(eos)]
                out.append(tokenizer.decode(new).strip())
    finally:
        model.train(was_training)
    return out


# ==================================================================================================
# The harness
# ==================================================================================================

#: the record fields that decide a SCROLLS number: an evaluation is skipped when rows with the same
#: values are already recorded
KEY_FIELDS = ("task", "model_digest", "method", "params", "split", "location", "eval_limit", "eval_max_input",
              "max_output", "separator", "keep", "tokenizer")
RECORDS_NAME = "records.jsonl"
SCROLLS_CONFIG_NAME = "scrolls.yaml"


@dataclasses.dataclass
class ScrollsResult:
    train: Any                       # hopekit.train.TrainResult
    metrics: dict[str, float]        # scrolls_metrics of the evaluation (with scrolls_score)
    predictions: list[str] | None    # None when the evaluation was already recorded (not repeated)
    data: ScrollsData                # the evaluated split
    records: list[dict[str, Any]]
    records_path: Path


def _tokenizer_of(config: Any) -> Any:
    if config.hf is not None:
        from ..integrations.hf import load_tokenizer

        tokenizer = load_tokenizer(config.hf)
    else:
        from ..data import tokenizer_from_config

        tokenizer = tokenizer_from_config(config.data)
        config.pe.check_tokenizer(tokenizer)
    if tokenizer.eos_id is None:
        raise ValueError(f"data.tokenizer={config.data.tokenizer!r}: has no end-of-text token to end an output with "
                         "(use 'byte', a BPE, or a tokenizer with one)")
    return tokenizer


def _key(fields: Mapping[str, Any]) -> str:
    return json.dumps({f: fields.get(f) for f in KEY_FIELDS}, sort_keys=True, default=list)


def _training_pairs(data: ScrollsData, tokenizer: Any, scrolls: ScrollsConfig, max_input: int
                    ) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Every (input, reference) pair of ``data`` encoded (:func:`encode_pair`), and how many inputs were cut."""
    pairs, cut = [], 0
    for ex in data.examples:
        for output in ex.outputs:
            prompt, answer, was_cut = encode_pair(tokenizer, ex.input, output, max_input=max_input,
                                                  max_output=scrolls.max_output, separator=scrolls.separator,
                                                  keep=scrolls.keep)
            pairs.append((prompt, answer))
            cut += was_cut
    if not pairs:
        raise ValueError(f"scrolls.train_split={data.split!r}: no reference outputs to train on")
    return pairs, cut


def run_scrolls(config: Any, scrolls: ScrollsConfig, out_dir: str | Path, *, resume: bool = False,
                progress: bool = True, log: Callable[[str], None] | None = print) -> ScrollsResult:
    """Fine-tune ``config``'s model on ``scrolls.task`` (its train split), then generate on the eval split,
    score with the task's metric and append records to ``out_dir/records.jsonl`` (module docstring).
    ``resume``: continue the training run in ``out_dir`` (as ``hopekit train --resume``); an evaluation
    already recorded for the same weights and settings is not repeated."""
    from .. import pe as pe_lib
    from ..config import dump_yaml
    from ..train import train
    from .records import append_records, make_record, model_descriptor, model_digest, read_records

    log = log or (lambda _m: None)
    out_dir = Path(out_dir)
    t = config.train
    tokenizer = _tokenizer_of(config)
    sep = tokenizer.encode(scrolls.separator)
    max_input = _budget(scrolls, t.train_len, len(sep))
    eval_max_input = scrolls.eval_max_input or max_input

    source = scrolls.source
    if source == "auto":   # decided once for both splits
        source, note = _auto_source(scrolls.task, [scrolls.train_split, scrolls.eval_split], scrolls.hub)
        log(f"scrolls.source=auto: {note}")
    train_data = load_scrolls(scrolls.task, scrolls.train_split, source, scrolls.train_limit, hub=scrolls.hub)
    eval_data = load_scrolls(scrolls.task, scrolls.eval_split, source, scrolls.eval_limit, hub=scrolls.hub)
    missing = [e.id for e in eval_data.examples if not e.outputs]
    if missing:
        raise ValueError(f"scrolls.eval_split={scrolls.eval_split!r}: {len(missing)} of {len(eval_data.examples)} inputs "
                         f"have no reference output (SCROLLS withholds the test split's); evaluate on validation")
    pairs, cut = _training_pairs(train_data, tokenizer, scrolls, max_input)
    batches = ScrollsBatches(pairs, batch_size=t.batch_size, train_len=t.train_len, seed=t.seed,
                             pad_id=tokenizer.eos_id)
    log(f"scrolls: {scrolls.task} {scrolls.train_split}: {len(train_data.examples)} inputs, {len(pairs)} pairs from "
        f"{train_data.location}; {cut} inputs cut to {max_input} tokens (keep {scrolls.keep}); "
        f"{batches.epochs(t.steps):.1f} epochs in {t.steps} steps")

    result = train(config, out_dir, resume=resume, batches=batches.batch,
                   vocab_size=None if config.hf is not None else tokenizer.vocab_size, progress=progress, log=log)
    (out_dir / SCROLLS_CONFIG_NAME).write_text(dump_yaml({**result.config.resolved(), "scrolls": scrolls.resolved()}))

    model, run_config = result.model, result.config
    params = pe_lib.to_config(run_config.pe)
    corpus = {"hub": scrolls.hub, "local": "scrolls_sample"}.get(eval_data.source, eval_data.location)
    common = dict(
        method=params["kind"], params=params, train_len=t.train_len,
        eval_len=eval_max_input + len(sep) + scrolls.max_output, task=f"scrolls/{scrolls.task}", seed=t.seed,
        model=model_descriptor(model), model_digest=model_digest(model), corpus=corpus, split=scrolls.eval_split,
        source=eval_data.source, location=eval_data.location, examples=len(eval_data.examples),
        eval_limit=scrolls.eval_limit, eval_max_input=eval_max_input, max_output=scrolls.max_output,
        separator=scrolls.separator, keep=scrolls.keep, tokenizer=tokenizer.name, train_steps=result.step,
        config=run_config.resolved(), scrolls=scrolls.resolved())
    records_path = out_dir / RECORDS_NAME
    main = score_key(scrolls.task)
    key = _key(common)
    recorded = [r for r in read_records(records_path) if _key(r) == key] if records_path.exists() else []
    if recorded:
        metrics = {r["metric"]: r["value"] for r in recorded}
        metrics["scrolls_score"] = metrics[main]
        log(f"scrolls: {scrolls.task} {scrolls.eval_split} of these weights is already recorded in {records_path}: "
            f"{main} {metrics[main]:.2f}")
        return ScrollsResult(result, metrics, None, eval_data, recorded, records_path)

    prompts = [encode_pair(tokenizer, ex.input, None, max_input=eval_max_input, max_output=scrolls.max_output,
                           separator=scrolls.separator, keep=scrolls.keep)[0] for ex in eval_data.examples]
    log(f"scrolls: generating up to {scrolls.max_output} tokens for {len(prompts)} {scrolls.eval_split} inputs "
        f"(inputs cut to {eval_max_input} tokens)")
    predictions = generate_predictions(model, tokenizer, prompts, scrolls.max_output,
                                       pretrained=config.hf is not None, progress=progress)
    metrics = scrolls_metrics(scrolls.task, predictions, [e.outputs for e in eval_data.examples])
    if scrolls.metric == "rouge" and "rouge/rougeLsum" not in metrics:
        log("scrolls: rouge/rougeLsum not computed: nltk's punkt sentence model is not installed "
            "(python -m nltk.downloader punkt_tab); the score, rouge/geometric_mean, does not use it")
    prediction_path = out_dir / f"predictions-{scrolls.eval_split}.jsonl"
    prediction_path.write_text("".join(
        json.dumps({"id": e.id, "prediction": p, "references": list(e.outputs)}, ensure_ascii=False) + "\n"
        for e, p in zip(eval_data.examples, predictions)))
    rows = [make_record(metric=name, value=value, primary=name == main, **common)
            for name, value in metrics.items() if name != "scrolls_score"]
    append_records(records_path, rows)
    log(f"scrolls: {scrolls.task} {scrolls.eval_split} ({len(predictions)} inputs, {eval_data.source}): "
        + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "scrolls_score")
        + f" (score: {main}); records {records_path}, predictions {prediction_path}")
    return ScrollsResult(result, metrics, predictions, eval_data, rows, records_path)
