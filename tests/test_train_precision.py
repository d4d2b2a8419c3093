"""train.precision: native-bf16 detection on CPU, the ``auto`` rule, and what a run logs about both.

The detection is monkeypatched wherever a result depends on it, so these tests pass the same on CPUs
with and without native bf16."""

from __future__ import annotations

import pytest
import torch

from hopekit import train as train_lib
from hopekit.train import cpu_has_native_bf16, resolve_precision
from tests._train_worker import run, tiny

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw avx512_vnni {extra}
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp {extra}
CPU implementer\t: 0x41
"""


@pytest.fixture
def capabilities(monkeypatch):
    """Set what the CPU reports: ``capabilities({"avx512_bf16": True})``."""
    def set_to(caps):
        monkeypatch.setattr(train_lib, "_cpu_capabilities", lambda: dict(caps))
    return set_to


@pytest.mark.parametrize("text, native", [
    (X86_CPUINFO.format(extra="avx512_bf16"), True),
    (X86_CPUINFO.format(extra="amx_bf16 amx_tile"), True),
    (X86_CPUINFO.format(extra="amx_tile avx512_fp16"), False),   # AMX without its bf16 unit, fp16 only
    (X86_CPUINFO.format(extra=""), False),                        # avx512 alone: bf16 is emulated
    (ARM_CPUINFO.format(extra="bf16 i8mm"), True),
    (ARM_CPUINFO.format(extra="svebf16"), True),
    (ARM_CPUINFO.format(extra="sve"), False),
    ("", False),
])
def test_native_bf16_from_cpuinfo_flags(text, native, capabilities):
    flags = train_lib._flags_from_cpuinfo(text)
    assert ("avx512f" in flags) == ("flags" in text)  # the first flags line is read, not the second CPU's
    capabilities(flags)
    assert cpu_has_native_bf16() is native


def test_native_bf16_from_torch_capabilities(capabilities):
    capabilities({"avx512_f": True, "avx512_bf16": False, "amx_bf16": False, "architecture": "x86_64"})
    assert cpu_has_native_bf16() is False
    capabilities({"avx512_f": True, "avx512_bf16": True, "architecture": "x86_64"})
    assert cpu_has_native_bf16() is True


def test_capabilities_fall_back_to_proc_cpuinfo_without_torch_s(monkeypatch):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    caps = train_lib._cpu_capabilities.__wrapped__()  # uncached
    assert isinstance(caps, dict)
    assert isinstance(cpu_has_native_bf16(), bool)  # the real machine, whatever it has


@pytest.mark.parametrize("native", [False, True])
def test_auto_is_bf16_on_cuda_and_fp32_elsewhere_with_or_without_native_bf16(native, capabilities):
    capabilities({"avx512_bf16": native})
    assert resolve_precision("auto", "cuda") == resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("auto", "cpu") == resolve_precision("auto", "mps") == "fp32"
    for device in ("cpu", "cuda"):
        assert resolve_precision("fp32", device) == "fp32"
        assert resolve_precision("bf16", device) == "bf16"


def test_unknown_precision_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"train\.precision='fp16'"):
        resolve_precision("fp16", "cpu")


def test_cpu_runs_log_emulated_bf16_and_auto_trains_exactly_as_fp32(tmp_path, capabilities):
    capabilities({})  # no native bf16
    lines: list[str] = []
    bf16 = run(tiny(steps=1, warmup_steps=1, precision="bf16", checkpoint_every=0), tmp_path / "bf16", log=lines.append)
    assert any("matmuls are emulated" in line for line in lines)
    assert any("bf16 autocast" in line for line in lines if line.startswith("model:"))

    capabilities({"amx_bf16": True})  # native bf16: auto still trains in fp32, and says bf16 may be faster
    lines.clear()
    auto = run(tiny(steps=1, warmup_steps=1, precision="auto", checkpoint_every=0), tmp_path / "auto", log=lines.append)
    assert any("native bf16" in line and "train.precision=bf16" in line for line in lines)
    assert not any("matmuls are emulated" in line for line in lines)
    fp32 = run(tiny(steps=1, warmup_steps=1, precision="fp32", checkpoint_every=0), tmp_path / "fp32")
    assert auto.losses == fp32.losses                       # bit for bit: no autocast
    assert abs(bf16.losses[0] - fp32.losses[0]) < 2e-2 * fp32.losses[0] and bf16.losses != fp32.losses


@pytest.mark.slow
def test_a_compiled_run_logs_its_first_compiling_step(tmp_path):
    lines: list[str] = []
    run(tiny(steps=2, compile=True, checkpoint_every=0), tmp_path, log=lines.append)
    assert sum("first (compiling) step" in line for line in lines) == 1
