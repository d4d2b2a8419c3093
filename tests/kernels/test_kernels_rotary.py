"""hopekit.kernels.rotary (the CPU fast path) against the float64 rotation and the pe/ reference.

Error model (what the thresholds encode, not tuned to pass): the fast path multiplies in float32 and
rounds once to x's dtype, so each output element o = x1·c − x2·s (or x2·c + x1·s) is within
½·ulp_dtype(o) (the final rounding, ≤ ½·eps_dtype·|o|) plus 2·eps_float32·(|x1·c| + |x2·s|) (two
products and a sum in float32; the cos/sin tables are float32 inputs, exact for the oracle too) of the
float64 rotation of the same inputs, plus half the subnormal spacing. Channels past the rotary dim and
pairs at angle 0 are bit-identical to x.

Most tests run the fast path's logic (layout handling, patterns, autograd) with its kernels left
uncompiled (``eager_kernels``): the same traced code, one op at a time, in milliseconds. The tests
marked slow compile it with inductor (seconds per pattern) and check the generated kernels.
"""

from __future__ import annotations

import math

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
def eager_kernels(monkeypatch):
    """The fast path at every size, its kernels uncompiled (the same code run op by op)."""
    monkeypatch.setattr(kr, "CPU_MIN_NUMEL", 0)
    monkeypatch.setattr(kr, "CPU_COMPILE_AFTER", 0)
    monkeypatch.setattr(kr, "_compiled", {})
    monkeypatch.setattr(kr, "_compile", lambda key: kr._kernel_inverse if key[4] else kr._kernel)
    calls = []
    rotate = kr._cpu_rotate
    monkeypatch.setattr(kr, "_cpu_rotate", lambda *a: calls.append(a[3]) or rotate(*a))
    return calls  # one entry per kernel run: its direction (True: the backward's -angle)


def poison_heap(nbytes: int) -> None:
    """Leave freed NaN bytes where the next allocations are likely to land (an unwritten output shows)."""
    torch.full((nbytes // 4 + 1024,), float("nan")).sum()  # allocated, filled, freed


# ------------------------------------------------------------------------------------------------
# every method, dtype, layout, shape
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("name", ROTARY)
def test_every_method_matches_the_float64_rotation(eager_kernels, name, fraction, dtype):
    enc = encoding(name, 64, fraction)
    feats = enc.features(torch.arange(37), seq_len=200)  # dynamic methods beyond train_len
    x = make_x(2, 3, 37, 64, dtype)
    out = enc.apply(x, feats)
    assert eager_kernels == [False]
    assert_rotation(out, x, feats.cos, feats.sin)
    assert out.stride() == x.stride()  # the decoder's layout is kept


@pytest.mark.parametrize("layout", ["bhtd", "bthd", "htd", "td"])
@pytest.mark.parametrize("T", [1, 7, 129])
@pytest.mark.parametrize("head_dim", [32, 48, 80, 96, 128, 256])
def test_head_dims_lengths_and_layouts(eager_kernels, head_dim, T, layout):
    H = 5  # an odd head count
    x = make_x(1, H, T, head_dim, torch.float32, "bhtd" if layout == "bhtd" else "bthd")
    x = {"htd": x[0], "td": x[0, 2]}.get(layout, x)
    feats = encoding("rope", head_dim).features(torch.arange(T))
    out = kr.apply_rotary(x, feats.cos, feats.sin)
    assert eager_kernels == [False]
    assert_rotation(out, x, feats.cos, feats.sin)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_random_positions(eager_kernels, dtype):
    """Randomized positions: one sorted random subset per sequence, cos/sin (B, 1, T, r/2)."""
    pos = RandomizedPositions(max_position=4096).sample(3, 29, generator=torch.Generator().manual_seed(1))
    enc = encoding("yarn", 48, 0.5)
    feats = enc.features(pos)
    assert feats.cos.shape == (3, 1, 29, 12)
    x = make_x(3, 5, 29, 48, dtype)
    assert_rotation(enc.apply(x, feats), x, feats.cos, feats.sin)
    assert eager_kernels == [False]


@pytest.mark.parametrize("name", ["rope", "dynamic_ntk", "longrope"])
def test_kv_cache_decoding_offsets(eager_kernels, name):
    """Positions past + 0 … past + T − 1 (one new token, then a chunk), and batched (B, T) positions."""
    enc = encoding(name, 64)
    for past, T in ((100, 1), (37, 7)):
        for pos in (torch.arange(past, past + T), torch.arange(past, past + T).repeat(2, 1) + torch.tensor([[0], [5]])):
            feats = enc.features(pos, seq_len=past + T + 5)
            x = make_x(2, 3, T, 64, torch.bfloat16)
            assert_rotation(enc.apply(x, feats), x, feats.cos, feats.sin)


def test_the_decoder_gets_the_fast_path_and_the_same_logits(eager_kernels):
    from hopekit.model import Decoder, ModelConfig

    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, pe={"kind": "rope"})).eval()
    idx = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        fast = model(idx)[0]
        with kernels.use_kernels(False):
            ref = model(idx)[0]
    assert len(eager_kernels) == 4  # q and k of 2 layers
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# exactness: angle 0, pass-through, poisoned memory
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_angle_zero_pairs_are_bit_identical(eager_kernels, dtype):
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
def test_every_output_element_is_written(eager_kernels, dtype):
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
def test_gradient_is_the_rotation_by_minus_angle(eager_kernels, layout, dtype):
    B, H, T, D = 2, 3, 19, 48
    shape = (B, T, H, D) if layout == "bthd" else (B, H, T, D)
    leaf = torch.randn(shape, dtype=dtype, requires_grad=True)
    x = leaf.transpose(1, 2) if layout == "bthd" else leaf
    feats = encoding("yarn", D, 0.5).features(torch.arange(5, 5 + T), seq_len=300)
    grad = torch.randn(B, T, H, D, dtype=dtype).transpose(1, 2)  # SDPA's layout
    kr.apply_rotary(x, feats.cos, feats.sin).backward(grad)
    assert eager_kernels == [False, True]
    x64 = leaf.detach().double().requires_grad_()
    x64_view = x64.transpose(1, 2) if layout == "bthd" else x64
    reference(x64_view, feats.cos.double(), feats.sin.double()).backward(grad.double())
    g, g64 = ((t.transpose(1, 2) if layout == "bthd" else t) for t in (leaf.grad, x64.grad))
    torch.testing.assert_close(g64, oracle(grad, feats.cos, -feats.sin), rtol=1e-12, atol=1e-12)
    assert_rotation(g, grad, feats.cos, -feats.sin)  # the float64 gradient is the rotation of grad by -angle
    assert leaf.grad.stride() == leaf.stride()


def test_float64_gradcheck_and_double_backward(eager_kernels):
    feats = encoding("llama3", 8, 0.5).features(torch.arange(3, 7), seq_len=80)
    cos, sin = feats.cos.double(), feats.sin.double()
    x = torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True)
    fn = lambda t: kr._CpuRotation.apply(t, cos, sin, False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_cos_sin_that_need_a_gradient_take_the_reference(eager_kernels):
    x = make_x(1, 2, 5, 16, torch.float32)
    angle = torch.rand(5, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = angle.cos().float(), angle.sin().float()
    kr.apply_rotary(x, cos, sin).sum().backward()
    assert eager_kernels == [] and angle.grad is not None


# ------------------------------------------------------------------------------------------------
# dispatch: when the reference runs
# ------------------------------------------------------------------------------------------------

def test_small_tensors_take_the_reference_and_never_compile(monkeypatch):
    monkeypatch.setattr(kr, "_compile", lambda key: pytest.fail("compiled below CPU_MIN_NUMEL"))
    feats = encoding("rope", 64).features(torch.arange(9))
    x = make_x(2, 3, 9, 64, torch.bfloat16)
    assert x.numel() < kr.CPU_MIN_NUMEL
    assert torch.equal(kr.apply_rotary(x, feats.cos, feats.sin), reference(x, feats.cos, feats.sin))


def test_the_reference_runs_until_a_compile_pays_off(eager_kernels, monkeypatch):
    """Calls of CPU_MIN_NUMEL elements or more take the reference until it has rotated CPU_COMPILE_AFTER
    elements in them (a one-off call never pays for a compile); smaller calls do not count."""
    monkeypatch.setattr(kr, "CPU_MIN_NUMEL", 2 * 3 * 9 * 64)
    monkeypatch.setattr(kr, "CPU_COMPILE_AFTER", 3 * 2 * 3 * 9 * 64)
    monkeypatch.setattr(kr, "_rented", 0)
    feats = encoding("rope", 64).features(torch.arange(9))
    small, x = make_x(1, 3, 9, 64, torch.bfloat16), make_x(2, 3, 9, 64, torch.bfloat16)
    for _ in range(5):
        assert torch.equal(kr.apply_rotary(small, feats.cos, feats.sin), reference(small, feats.cos, feats.sin))
    for _ in range(3):
        assert torch.equal(kr.apply_rotary(x, feats.cos, feats.sin), reference(x, feats.cos, feats.sin))
    assert eager_kernels == []
    assert_rotation(kr.apply_rotary(x, feats.cos, feats.sin), x, feats.cos, feats.sin)
    assert eager_kernels == [False]


@pytest.mark.parametrize("how", ["use_kernels", "env"])
def test_kernels_off_runs_the_reference(eager_kernels, monkeypatch, how):
    enc = encoding("rope", 64)
    feats = enc.features(torch.arange(9))
    x = make_x(2, 3, 9, 64, torch.bfloat16)
    if how == "env":
        monkeypatch.setenv(kernels.ENV_VAR, "reference")
        out = enc.apply(x, feats)
    else:
        with kernels.use_kernels(False):
            out = enc.apply(x, feats)
    assert eager_kernels == []
    assert torch.equal(out, reference(x, feats.cos, feats.sin))


@pytest.mark.parametrize("case", ["float64", "5 dims", "float64 cos", "cos over heads"])
def test_inputs_the_kernels_do_not_take_run_the_reference(eager_kernels, case):
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
    assert eager_kernels == []


def test_integer_input_is_refused_like_the_reference():
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        kr.apply_rotary(torch.ones(2, 4, 8, dtype=torch.int64), torch.rand(4, 4), torch.rand(4, 4))


def test_autocast_leaves_the_dtype_alone(eager_kernels):
    """Under CPU autocast the rotation keeps x's dtype (as the reference: elementwise ops do not autocast)."""
    feats = encoding("rope", 32).features(torch.arange(11))
    for dtype in (torch.float32, torch.bfloat16):
        x = make_x(2, 3, 11, 32, dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = kr.apply_rotary(x, feats.cos, feats.sin)
            assert out.dtype == reference(x, feats.cos, feats.sin).dtype == dtype
        assert_rotation(out, x, feats.cos, feats.sin)


def test_a_failing_compiler_falls_back_to_the_reference_once(monkeypatch):
    """No working C++ compiler: one warning, the same rotation this call, the reference from then on."""
    from torch._dynamo.exc import BackendCompilerFailed

    class NoCompiler(BackendCompilerFailed):
        def __init__(self):  # the base's signature differs between torch versions
            Exception.__init__(self, "no C++ compiler")

    def broken(*args):
        raise NoCompiler()

    monkeypatch.setattr(kr, "CPU_MIN_NUMEL", 0)
    monkeypatch.setattr(kr, "CPU_COMPILE_AFTER", 0)
    monkeypatch.setattr(kr, "_cpu_broken", False)
    monkeypatch.setattr(kr, "_compiled", {})
    monkeypatch.setattr(kr, "_compile", lambda key: broken)
    feats = encoding("rope", 32).features(torch.arange(11))
    x = make_x(2, 3, 11, 32, torch.float32)
    with pytest.warns(RuntimeWarning, match="could not compile"):
        assert_rotation(kr.apply_rotary(x, feats.cos, feats.sin), x, feats.cos, feats.sin)
    assert kr._cpu_broken
    assert torch.equal(kr.apply_rotary(x, feats.cos, feats.sin), reference(x, feats.cos, feats.sin))


# ------------------------------------------------------------------------------------------------
# compiled (inductor): seconds per pattern
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def compiled_kernels(monkeypatch):
    monkeypatch.setattr(kr, "CPU_MIN_NUMEL", 0)
    monkeypatch.setattr(kr, "CPU_COMPILE_AFTER", 0)
    monkeypatch.setattr(kr, "_cpu_broken", False)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compiled_forward_backward_every_layout(compiled_kernels, dtype):
    from torch._dynamo.utils import counters

    for layout in ("bthd", "bhtd"):
        graphs = counters["stats"]["unique_graphs"]
        for T, D in ((7, 64), (129, 96), (1, 48), (33, 80), (40, 64)):
            enc = encoding("yarn", D)
            feats = enc.features(torch.arange(3, 3 + T), seq_len=300)
            leaf = torch.randn((2, T, 5, D) if layout == "bthd" else (2, 5, T, D), dtype=dtype, requires_grad=True)
            x = leaf.transpose(1, 2) if layout == "bthd" else leaf
            poison_heap(x.numel() * x.element_size())
            out = kr.apply_rotary(x, feats.cos, feats.sin)
            assert_rotation(out.detach(), x.detach(), feats.cos, feats.sin)
            assert out.stride() == x.stride()
            grad = torch.randn_like(out)
            out.backward(grad)
            g = leaf.grad.transpose(1, 2) if layout == "bthd" else leaf.grad
            assert_rotation(g, grad, feats.cos, -feats.sin)
        # forward and backward graphs, plus at most one more per size specialised to 1 (T = 1)
        assert counters["stats"]["unique_graphs"] - graphs <= 4


@pytest.mark.slow
def test_compiled_partial_batched_inference_autocast(compiled_kernels):
    pos = RandomizedPositions(max_position=512).sample(2, 21, generator=torch.Generator().manual_seed(0))
    feats = encoding("longrope", 64, 0.5).features(pos, seq_len=600)
    for dtype in DTYPES:
        x = make_x(2, 3, 21, 64, dtype)
        with torch.inference_mode():
            assert_rotation(kr.apply_rotary(x, feats.cos, feats.sin), x, feats.cos, feats.sin)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = kr.apply_rotary(x, feats.cos, feats.sin)
        assert_rotation(out, x, feats.cos, feats.sin)


@pytest.mark.slow
def test_under_the_callers_torch_compile_the_arithmetic_is_traced(compiled_kernels):
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
