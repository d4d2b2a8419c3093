"""The datasets of the local test tasks, read from the JSONL files beside this module (no hub access):
``custom_dataset`` functions of lm-eval task YAMLs, called with the task's metadata as keywords."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _test_split(name: str) -> dict:
    import datasets

    rows = [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def multiple_choice(**metadata) -> dict:
    return _test_split("mc.jsonl")


def text(**metadata) -> dict:
    return _test_split("text.jsonl")


def questions(**metadata) -> dict:
    return _test_split("qa.jsonl")
