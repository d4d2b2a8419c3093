"""hopekit.kernels.rotary (the CPU fast path) against the float64 rotation and the pe/ reference.

Error model (what the thresholds encode, not tuned to pass): the fast path multiplies in float32 and
rounds once to x's dtype, so each output element o = x1·c − x2·s (or x2·c + x1·s) is within
½·ulp_dtype(o) (the final rounding, ≤ ½·eps_dtype·|o|) plus 2·eps_float32·(|x1·c| + |x2·s|) (two
products and a sum in float32; the cos/sin tables are float32 inputs, exact for the oracle too) of the
float64 rotation of the same inputs, plus half the subnormal spacing. Channels past the rotary dim and
pairs at angle 0 are bit-identical to x. Stronger where it can be: the C kernel computes exactly what
``rotation`` computes eagerly (same float32 operations, no fused multiply-add), so the two are compared
bit for bit, and in float32 both equal the reference bit for bit.

The tests build the C kernel once (well under a second; cached in $HOPEKIT_CACHE) and run it at every
size (``fast``: CPU_MIN_NUMEL = 0); the AVX2 and plain-C builds are checked too where the CPU allows.
"""

from __future__ import annotations

import math
import platform
import warnings
from pathlib import Path

import pytest
import torch

from hopekit import kernels, pe
from hopekit.kernels import rotary as kr
from hopekit.pe.randomized import RandomizedPositions
from hopekit.pe.rotary import apply_rotary as reference

ROTARY = [name for name, m in pe.REGISTRY.items() if m.schedule is not None]  # the RoPE family
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS32 = torch.finfo(torch.float32).eps


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def encoding(name: str, head_dim: int, rotary_fraction: float = 1.0):
    config = {k: v for k, v in pe.example_config(name, head_dim).items() if k != "kind"}
    if rotary_fraction != 1.0:
        config["rotary_fraction"] = rotary_fraction
        if name == "longrope":  # one rescale factor per rotary pair
            pairs = int(head_dim * rotary_fraction) // 2
            config["short_rescale"] = [1.0 + 0.1 * i for i in range(pairs)]
            config["long_rescale"] = [1.0 + 0.5 * i for i in range(pairs)]
    return pe.build(name, head_dim=head_dim, **config)


def make_x(B: int, H: int, T: int, D: int, dtype: torch.dtype, layout: str = "bthd") -> torch.Tensor:
    """q as the decoder makes it (bthd: a transpose(1, 2) view of (B, T, H, D)), or contiguous (bhtd)."""
    if layout == "bthd":
        return torch.randn(B, T, H, D, dtype=dtype).transpose(1, 2)
    return torch.randn(B, H, T, D, dtype=dtype)


def oracle(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return reference(x.double(), cos.double(), sin.double())


def assert_rotation(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """``out`` is the rotation of ``x`` within the error model of the module docstring."""
    assert out.dtype == x.dtype and out.shape == x.shape
    half = cos.shape[-1]
    x64, c, s = x.double(), cos.double(), sin.double()
    x1, x2 = x64[..., :half], x64[..., half:2 * half]
    spread = torch.cat([(x1 * c).abs() + (x2 * s).abs(), (x2 * c).abs() + (x1 * s).abs()], dim=-1)
    want = oracle(x, cos, sin)
    info = torch.finfo(x.dtype)
    bound = 0.5 * info.eps * want[..., :2 * half].abs() + 2 * EPS32 * spread + 0.5 * info.tiny * info.eps
    err = (out[..., :2 * half].double() - want[..., :2 * half]).abs()
    assert not out.isnan().any(), "NaN in the output"
    worst = float((err / bound).max()) if err.numel() else 0.0
    assert worst <= 1.0, f"{x.dtype}: error {float(err.max()):.3g} is {worst:.2f}x the bound"
    assert torch.equal(out[..., 2 * half:], x[..., 2 * half:].expand_as(out[..., 2 * half:])), "pass-through changed"


@pytest.fixture
def kernel_runs(monkeypatch):
    """The C kernel at every size; the list of its runs (each run's direction: True for -angle)."""
    if kr._native() is None:
        pytest.skip("no C compiler: the CPU kernel could not be built")
    monkeypatch.setattr(kr, "CPU_MIN_NUMEL", 0)
    calls = []
    rotate = kr._cpu_rotate
    monkeypatch.setattr(kr, "_cpu_rotate", lambda *a: calls.append(a[3]) or rotate(*a))
    return calls


def poison_heap(nbytes: int) -> None:
    """Leave freed NaN bytes where the next allocations are likely to land (an unwritten output shows)."""
    torch.full((nbytes // 4 + 1024,), float("nan")).sum()  # allocated, filled, freed


# ------------------------------------------------------------------------------------------------
# every method, dtype, layout, shape
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("name", ROTARY)
def test_every_method_matches_the_float64_rotation(kernel_runs, name, fraction, dtype):
    enc = encoding(name, 64, fraction)
    feats = enc.features(torch.arange(37), seq_len=200)  # dynamic methods beyond train_len
    x = make_x(2, 3, 37, 64, dtype)
    out = enc.apply(x, feats)
    assert kernel_runs == [False]
    assert_rotation(out, x, feats.cos, feats.sin)
    assert out.stride() == x.stride()  # the decoder's layout is kept


@pytest.mark.parametrize("layout", ["bhtd", "bthd", "htd", "td"])
@pytest.mark.parametrize("T", [1, 7, 129])
@pytest.mark.parametrize("head_dim", [32, 48, 80, 96, 128, 256])
def test_head_dims_lengths_and_layouts(kernel_runs, head_dim, T, layout):
    H = 5  # an odd head count
    x = make_x(1, H, T, head_dim, torch.float32, "bhtd" if layout == "bhtd" else "bthd")
    x = {"htd": x[0], "td": x[0, 2]}.get(layout, x)
    feats = encoding("rope", head_dim).features(torch.arange(T))
    out = kr.apply_rotary(x, feats.cos, feats.sin)
    assert kernel_runs == [False]
    assert_rotation(out, x, feats.cos, feats.sin)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_random_positions(kernel_runs, dtype):
    """Randomized positions: one sorted random subset per sequence, cos/sin (B, 1, T, r/2)."""
    pos = RandomizedPositions(max_position=4096).sample(3, 29, generator=torch.Generator().manual_seed(1))
    enc = encoding("yarn", 48, 0.5)
    feats = enc.features(pos)
    assert feats.cos.shape == (3, 1, 29, 12)
    x = make_x(3, 5, 29, 48, dtype)
    assert_rotation(enc.apply(x, feats), x, feats.cos, feats.sin)
    assert kernel_runs == [False]


@pytest.mark.parametrize("name", ["rope", "dynamic_ntk", "longrope"])
def test_kv_cache_decoding_offsets(kernel_runs, name):
    """Positions past + 0 … past + T − 1 (one new token, then a chunk), and batched (B, T) positions."""
    enc = encoding(name, 64)
    for past, T in ((100, 1), (37, 7)):
        for pos in (torch.arange(past, past + T), torch.arange(past, past + T).repeat(2, 1) + torch.tensor([[0], [5]])):
            feats = enc.features(pos, seq_len=past + T + 5)
            x = make_x(2, 3, T, 64, torch.bfloat16)
            assert_rotation(enc.apply(x, feats), x, feats.cos, feats.sin)


def test_the_decoder_gets_the_fast_path_and_the_same_logits(kernel_runs):
    from hopekit.model import Decoder, ModelConfig

    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, pe={"kind": "rope"})).eval()
    idx = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        fast = model(idx)[0]
        with kernels.use_kernels(False):
            ref = model(idx)[0]
    assert len(kernel_runs) == 4  # q and k of 2 layers
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# exactness: angle 0, pass-through, poisoned memory
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_angle_zero_pairs_are_bit_identical(kernel_runs, dtype):
    """Position 0 for every pair, and hope_highfreq's position-free pairs at every position."""
    enc = encoding("hope_highfreq", 64)
    inv_freq = enc.spectrum().inv_freq
    free = torch.nonzero(inv_freq == 0).flatten()
    assert 0 < len(free) < len(inv_freq)
    feats = enc.features(torch.arange(17))
    x = make_x(2, 3, 17, 64, dtype)
    out = enc.apply(x, feats)
    assert torch.equal(out[..., 0, :], x[..., 0, :])
    for i in free.tolist():
        assert torch.equal(out[..., i], x[..., i]) and torch.equal(out[..., 32 + i], x[..., 32 + i])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_output_element_is_written(kernel_runs, dtype):
    x = make_x(2, 3, 33, 80, dtype)
    feats = encoding("rope", 80, 0.6).features(torch.arange(33))
    poison_heap(x.numel() * x.element_size())
    out = kr.apply_rotary(x, feats.cos, feats.sin)
    assert_rotation(out, x, feats.cos, feats.sin)
    x[..., 0, 0] = float("inf")  # a non-finite input stays in its own pair
    out = kr.apply_rotary(x, feats.cos, feats.sin)
    assert out[..., 1:, :].isfinite().all()


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
def test_gradient_is_the_rotation_by_minus_angle(kernel_runs, layout, dtype):
    B, H, T, D = 2, 3, 19, 48
    shape = (B, T, H, D) if layout == "bthd" else (B, H, T, D)
    leaf = torch.randn(shape, dtype=dtype, requires_grad=True)
    x = leaf.transpose(1, 2) if layout == "bthd" else leaf
    feats = encoding("yarn", D, 0.5).features(torch.arange(5, 5 + T), seq_len=300)
    grad = torch.randn(B, T, H, D, dtype=dtype).transpose(1, 2)  # SDPA's layout
    kr.apply_rotary(x, feats.cos, feats.sin).backward(grad)
    assert kernel_runs == [False, True]
    x64 = leaf.detach().double().requires_grad_()
    x64_view = x64.transpose(1, 2) if layout == "bthd" else x64
    reference(x64_view, feats.cos.double(), feats.sin.double()).backward(grad.double())
    g, g64 = ((t.transpose(1, 2) if layout == "bthd" else t) for t in (leaf.grad, x64.grad))
    torch.testing.assert_close(g64, oracle(grad, feats.cos, -feats.sin), rtol=1e-12, atol=1e-12)
    assert_rotation(g, grad, feats.cos, -feats.sin)  # the float64 gradient is the rotation of grad by -angle
    assert leaf.grad.stride() == leaf.stride()


def test_cos_sin_that_need_a_gradient_take_the_reference(kernel_runs):
    x = make_x(1, 2, 5, 16, torch.float32)
    angle = torch.rand(5, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = angle.cos().float(), angle.sin().float()
    kr.apply_rotary(x, cos, sin).sum().backward()
    assert kernel_runs == [] and angle.grad is not None


# ------------------------------------------------------------------------------------------------
# dispatch: when the reference runs
# ------------------------------------------------------------------------------------------------

def test_small_tensors_take_the_reference(monkeypatch):
    monkeypatch.setattr(kr, "_cpu_rotate", lambda *a: pytest.fail("the kernel ran below CPU_MIN_NUMEL"))
    feats = encoding("rope", 64).features(torch.arange(9))
    x = make_x(2, 3, 9, 64, torch.bfloat16)
    assert x.numel() < kr.CPU_MIN_NUMEL
    assert torch.equal(kr.apply_rotary(x, feats.cos, feats.sin), reference(x, feats.cos, feats.sin))


@pytest.mark.parametrize("how", ["use_kernels", "env"])
def test_kernels_off_runs_the_reference(kernel_runs, monkeypatch, how):
    enc = encoding("rope", 64)
    feats = enc.features(torch.arange(9))
    x = make_x(2, 3, 9, 64, torch.bfloat16)
    if how == "env":
        monkeypatch.setenv(kernels.ENV_VAR, "reference")
        out = enc.apply(x, feats)
    else:
        with kernels.use_kernels(False):
            out = enc.apply(x, feats)
    assert kernel_runs == []
    assert torch.equal(out, reference(x, feats.cos, feats.sin))


@pytest.mark.parametrize("case", ["float64", "5 dims", "float64 cos", "cos over heads"])
def test_inputs_the_kernels_do_not_take_run_the_reference(kernel_runs, case):
    x, cos, sin = make_x(2, 3, 5, 16, torch.float32), torch.rand(5, 8), torch.rand(5, 8)
    if case == "float64":
        x = x.double()
    elif case == "5 dims":
        x = x[None]
    elif case == "float64 cos":
        cos, sin = cos.double(), sin.double()
    else:
        cos, sin = torch.rand(2, 3, 5, 8), torch.rand(2, 3, 5, 8)
    assert torch.equal(kr.apply_rotary(x, cos, sin), reference(x, cos, sin))
    assert kernel_runs == []


def test_integer_input_is_refused_like_the_reference():
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        kr.apply_rotary(torch.ones(2, 4, 8, dtype=torch.int64), torch.rand(4, 4), torch.rand(4, 4))


def test_autocast_leaves_the_dtype_alone(kernel_runs):
    """Under CPU autocast the rotation keeps x's dtype (as the reference: elementwise ops do not autocast)."""
    feats = encoding("rope", 32).features(torch.arange(11))
    for dtype in (torch.float32, torch.bfloat16):
        x = make_x(2, 3, 11, 32, dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = kr.apply_rotary(x, feats.cos, feats.sin)
            assert out.dtype == reference(x, feats.cos, feats.sin).dtype == dtype
        assert_rotation(out, x, feats.cos, feats.sin)


# ------------------------------------------------------------------------------------------------
# bit for bit, every build; a failing build; a compiled caller
# ------------------------------------------------------------------------------------------------

CASES = [  # (B, H, T, D, half, layout, batched): full-width rows written whole (D = 2·half, half % 32 = 0),
    #           rows through the row buffer (partial rotary, odd half), the head-blocked walk (bhtd, T > 32)
    (2, 3, 37, 64, 32, "bthd", False), (2, 3, 37, 64, 32, "bhtd", False), (1, 5, 70, 128, 64, "bhtd", True),
    (2, 3, 9, 80, 24, "bthd", True), (3, 2, 45, 96, 40, "bhtd", False), (1, 4, 33, 256, 128, "bthd", False),
    (2, 2, 5, 48, 8, "bhtd", True), (1, 1, 1, 32, 16, "bthd", False),
]


@pytest.mark.parametrize("stream", [False, True], ids=["cached stores", "streaming stores"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bit_for_bit_the_eager_rotation(kernel_runs, monkeypatch, case, stream):
    """Forward and inverse, every dtype, both store kinds; float32 also equals the reference bit for bit."""
    B, H, T, D, half, layout, batched = case
    monkeypatch.setattr(kr, "STREAM_MIN_BYTES", 0 if stream else 1 << 62)
    angle = torch.rand(B if batched else 1, 1, T, half, dtype=torch.float64) * 100
    cos, sin = angle.cos().float(), angle.sin().float()
    cos, sin = (cos, sin) if batched else (cos[0, 0], sin[0, 0])
    for dtype in DTYPES:
        x = make_x(B, H, T, D, dtype, layout)
        for inverse in (False, True):
            out = kr._cpu_rotate(x, cos, sin, inverse)
            assert out.stride() == x.stride()
            assert torch.equal(out, (kr.inverse_rotation if inverse else kr.rotation)(x, cos, sin)), (dtype, inverse)
        if dtype == torch.float32:
            assert torch.equal(kr._cpu_rotate(x, cos, sin, False), reference(x, cos, sin))


def test_threads_split_the_work_exactly(kernel_runs):
    x = make_x(2, 4, 300, 64, torch.bfloat16)
    feats = encoding("rope", 64).features(torch.arange(300))
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(kr.apply_rotary(x, feats.cos, feats.sin))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
@pytest.mark.parametrize("flags", [["-mavx2", "-mf16c", "-mfma", "-fopenmp"], ["-fopenmp"]], ids=["avx2", "plain C"])
def test_the_other_builds_compute_the_same(kernel_runs, monkeypatch, flags):
    """The AVX2 build (bfloat16/float16 vectorised too) and the plain-C one (float32 only) of the same source."""
    lib = kr._load(kr._build(flags))
    monkeypatch.setattr(kr, "_lib", list(lib))
    assert lib[1] == (7 if "-mavx2" in flags else 1)
    for B, H, T, D, half, layout, batched in CASES[:4]:
        angle = torch.rand(T, half, dtype=torch.float64) * 100
        cos, sin = angle.cos().float(), angle.sin().float()
        for dtype in DTYPES:
            x = make_x(B, H, T, D, dtype, layout)
            if not kr._native_takes(dtype):
                assert torch.equal(kr.apply_rotary(x, cos, sin), reference(x, cos, sin))
                continue
            assert torch.equal(kr._cpu_rotate(x, cos, sin, False), kr.rotation(x, cos, sin))


def test_a_failing_build_warns_once_and_runs_the_reference(monkeypatch):
    def no_compiler(flags=None):
        raise OSError("cc failed: cc: not found")

    monkeypatch.setattr(kr, "CPU_MIN_NUMEL", 0)
    monkeypatch.setattr(kr, "_lib", [])
    monkeypatch.setattr(kr, "_build", no_compiler)
    feats = encoding("rope", 32).features(torch.arange(11))
    x = make_x(2, 3, 11, 32, torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="could not build the CPU rotary kernel.*cc: not found"):
        assert torch.equal(kr.apply_rotary(x, feats.cos, feats.sin), reference(x, feats.cos, feats.sin))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(kr.apply_rotary(x, feats.cos, feats.sin), reference(x, feats.cos, feats.sin))


def test_double_backward(kernel_runs):
    """The backward is the same kernel by -angle, itself differentiable: d<grad_x(g), v>/dg is R(+angle)·v."""
    feats = encoding("llama3", 48, 0.5).features(torch.arange(3, 12), seq_len=80)
    x = make_x(2, 3, 9, 48, torch.float32).requires_grad_()
    g, v = torch.randn(2, 3, 9, 48, requires_grad=True), torch.randn(2, 3, 9, 48)
    (gx,) = torch.autograd.grad(kr.apply_rotary(x, feats.cos, feats.sin), x, g, create_graph=True)
    assert_rotation(gx.detach(), g.detach(), feats.cos, -feats.sin)
    (gg,) = torch.autograd.grad(gx, g, v)
    assert_rotation(gg, v, feats.cos, feats.sin)
    assert kernel_runs == [False, True, False]


def test_the_traced_arithmetic_has_the_reference_gradient():
    """``rotation`` (what a compiled caller traces) in float64: gradcheck and double backward."""
    feats = encoding("llama3", 8, 0.5).features(torch.arange(3, 7), seq_len=80)
    cos, sin = feats.cos.double(), feats.sin.double()
    x = torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: kr.rotation(t, cos, sin), (x,))
    assert torch.autograd.gradgradcheck(lambda t: kr.rotation(t, cos, sin), (x,))


@pytest.mark.slow
def test_under_the_callers_torch_compile_the_arithmetic_is_traced(kernel_runs):
    """Inside a compiled caller the rotation is plain float32 arithmetic for the caller's graph."""
    enc = encoding("rope", 32)
    feats = enc.features(torch.arange(13))

    def attention_input(x):
        return enc.apply(x, feats) * 2

    x = make_x(2, 3, 13, 32, torch.bfloat16)
    for backend in ("eager", "inductor"):
        out = torch.compile(attention_input, backend=backend, fullgraph=True)(x)
        torch.testing.assert_close(out, kr.rotation(x, feats.cos, feats.sin) * 2, rtol=0, atol=0)


def test_error_model_is_not_vacuous():
    """The bound rejects the reference's own bfloat16 arithmetic (cos/sin rounded to bfloat16), which the
    fast path improves on: the thresholds distinguish float32 arithmetic from bfloat16 arithmetic."""
    feats = encoding("rope", 64).features(torch.arange(200, 264))
    x = make_x(2, 4, 64, 64, torch.bfloat16)
    with pytest.raises(AssertionError, match="bound"):
        assert_rotation(reference(x, feats.cos, feats.sin), x, feats.cos, feats.sin)
    assert math.isfinite(float(oracle(x, feats.cos, feats.sin).abs().max()))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
def test_an_unwritable_cache_builds_into_a_private_directory(monkeypatch, tmp_path):
    """A cache directory the process cannot write: the build goes to a fresh mkdtemp directory (mode 0700,
    an unpredictable name), never to a fixed shared path another user could have filled first."""
    monkeypatch.setenv("HOPEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kr.os, "access", lambda path, mode: False)
    made = []
    real = kr.tempfile.mkdtemp
    monkeypatch.setattr(kr.tempfile, "mkdtemp", lambda **kw: made.append(real(dir=tmp_path, **kw)) or made[-1])
    path = kr._build(["-fopenmp"])
    assert made and path.parent == Path(made[0]) and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert kr._load(path)[1] == 1
