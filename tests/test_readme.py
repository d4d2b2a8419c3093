"""The README stays true: its method table matches the registry, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from hopekit import pe

ROOT = Path(__file__).resolve().parents[1]


def expected_table() -> list[str]:
    return [f"| `{n}` | {', '.join(m.capabilities) or 'none'} | {m.summary} |" for n, m in pe.REGISTRY.items()]


def test_method_table_matches_registry():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- methods-table.*?-->\n(.*?)<!-- /methods-table -->", text, re.S).group(1)
    rows = [line for line in block.strip().splitlines()[2:]]
    assert rows == expected_table(), "\n".join(expected_table())


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(c for c in commands if "pytest" in c)
    # the part after venv creation/activation is what CI must run verbatim
    tail = test_cmd.split("&& ", 2)[2]
    assert tail in (ROOT / ".ci" / "run").read_text()


def test_no_bare_hope_name():
    # the rule's own check: the two unrelated HoPEs are only ever registered by their full names
    assert {name for name in pe.REGISTRY if name.startswith("hope")} == {"hope_hyperbolic", "hope_highfreq"}
    sources = [ROOT / "src", ROOT / "benchmarks"]  # code, presets (src/hopekit/presets) and benchmark configs
    for path in [p for d in sources for pattern in ("*.py", "*.yaml") for p in d.rglob(pattern)]:
        src = path.read_text()
        assert not re.search(r"(def|class) hope\b|[\"']hope[\"']|\bimport hope\b|\bkind:\s*hope\b(?!_)", src), path
