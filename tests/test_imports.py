"""The core imports torch alone (torch itself may import numpy); transformers appears only in tests (and, later, integrations)."""

import subprocess
import sys


def test_pe_imports_with_torch_alone():
    code = ("import sys, hopekit.pe, hopekit.model; "
            "bad = [m for m in ('transformers', 'yaml', 'tokenizers', 'datasets', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
