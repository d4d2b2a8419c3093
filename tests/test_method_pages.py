"""docs/methods.md stays true: it is scripts/method_pages.py's output byte for byte, and every registered
method has a section."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from hopekit import pe

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("method_pages", ROOT / "scripts" / "method_pages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


def test_committed_page_is_the_scripts_output():
    text = load_script().render()
    assert (ROOT / "docs" / "methods.md").read_text() == text, "run: python scripts/method_pages.py"


def test_every_registered_method_has_a_section_and_a_summary_row():
    text = (ROOT / "docs" / "methods.md").read_text()
    sections = re.findall(r"^## `([a-z0-9_]+)`$", text, re.M)
    assert sections == list(pe.REGISTRY)
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| ", text.split("## `")[0], re.M)
    assert rows == list(pe.REGISTRY)
    for name in pe.REGISTRY:
        body = text.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        assert "**In tokens, bench shape**" in body and "**How the default was chosen.**" in body, name


def test_the_hyperbolic_section_says_its_default_is_local():
    body = (ROOT / "docs" / "methods.md").read_text().split("## `hope_hyperbolic`\n", 1)[1].split("\n## ", 1)[0]
    assert "**The default is local.**" in body and "not the paper's result" in body


def test_a_method_without_a_page_entry_is_refused(monkeypatch):
    module = load_script()
    monkeypatch.setitem(pe.REGISTRY, "new_method", pe.REGISTRY["nope"])
    try:
        module.render()
    except SystemExit as e:
        assert "new_method" in str(e)
    else:
        raise AssertionError("render() accepted a registered method with no page entry")
