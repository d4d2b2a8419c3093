"""The command-line entry points run and print what they promise."""

from hopekit import pe
from hopekit.cli import main


def test_demo_prints_every_method(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for name in pe.REGISTRY:
        assert f"\n{name}" in out
    # hope_highfreq's floor: 16 position-free pairs at head_dim 64, L = 512 (papers/hope_highfreq.md)
    row = next(line for line in out.splitlines() if line.startswith("hope_highfreq"))
    assert abs(float(row.split()[-1]) - 16.0) < 0.5
