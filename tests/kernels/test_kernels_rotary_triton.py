"""hopekit.kernels.triton_rotary against the float64 rotation, on CPU through Triton's interpreter.

``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a kernel (not when triton is imported, which
torch's inductor may have done already), so the fixture ``tr`` imports triton as usual, then loads a
private copy of the module with ``TRITON_INTERPRET=1`` set for that import only: its kernel is
interpreted (run on CPU tensors, each program in numpy), while ``hopekit.kernels.triton_rotary``,
triton's own kernels and the rest of the process are untouched (the kernel calls no ``triton.jit``
function of triton's, e.g. ``tl.cdiv``, which would not be interpreted).
The error model is that of test_kernels_rotary.py: float32 arithmetic, one rounding to x's dtype, so
½·eps_dtype·|o| + 2·eps_float32·(|x1·c| + |x2·s|) per element, half the subnormal spacing, pass-through
bit-identical. One exception: Triton 3.9's interpreter casts float32 to bfloat16 by truncation (its
``create_fp_trunc`` drops the rounding mode; numpy has no bfloat16), so interpreted bfloat16 results
get a whole ulp, eps·|o|, instead of half; a GPU rounds to nearest even and the ``gpu`` test holds it
to half an ulp. Shapes are small: the interpreter is slow; the larger cases are marked slow.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from hopekit import pe
from hopekit.pe.rotary import apply_rotary as reference

ROTARY = [name for name, m in pe.REGISTRY.items() if m.schedule is not None]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS32 = torch.finfo(torch.float32).eps


def encoding(name: str, head_dim: int, rotary_fraction: float = 1.0):
    config = {k: v for k, v in pe.example_config(name, head_dim).items() if k != "kind"}
    if rotary_fraction != 1.0:
        config["rotary_fraction"] = rotary_fraction
        if name == "longrope":  # one rescale factor per rotary pair
            pairs = int(head_dim * rotary_fraction) // 2
            config["short_rescale"] = [1.0 + 0.1 * i for i in range(pairs)]
            config["long_rescale"] = [1.0 + 0.5 * i for i in range(pairs)]
    return pe.build(name, head_dim=head_dim, **config)


def make_x(B, H, T, D, dtype, layout="bthd", device="cpu"):
    if layout == "bthd":
        return torch.randn(B, T, H, D, dtype=dtype, device=device).transpose(1, 2)
    return torch.randn(B, H, T, D, dtype=dtype, device=device)


def oracle(x, cos, sin):
    return reference(x.double(), cos.double(), sin.double())


def assert_rotation(out, x, cos, sin, ulps=0.5):
    """``out`` is the rotation of ``x`` within the error model of the module docstring (``ulps``: of the
    final rounding to x's dtype)."""
    assert out.dtype == x.dtype and out.shape == x.shape
    half = cos.shape[-1]
    x64, c, s = x.double(), cos.double(), sin.double()
    x1, x2 = x64[..., :half], x64[..., half:2 * half]
    spread = torch.cat([(x1 * c).abs() + (x2 * s).abs(), (x2 * c).abs() + (x1 * s).abs()], dim=-1)
    want = oracle(x, cos, sin)
    info = torch.finfo(x.dtype)
    bound = ulps * info.eps * want[..., :2 * half].abs() + 2 * EPS32 * spread + 0.5 * info.tiny * info.eps
    err = (out[..., :2 * half].double() - want[..., :2 * half]).abs()
    assert not out.isnan().any(), "NaN in the output"
    worst = float((err / bound).max()) if err.numel() else 0.0
    assert worst <= 1.0, f"{x.dtype}: error {float(err.max()):.3g} is {worst:.2f}x the bound"
    assert torch.equal(out[..., 2 * half:], x[..., 2 * half:].expand_as(out[..., 2 * half:])), "pass-through changed"


@pytest.fixture(scope="module")
def tr():
    """hopekit/kernels/triton_rotary.py loaded afresh with TRITON_INTERPRET=1: an interpreted kernel."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs triton (pip install triton)")
    import hopekit.kernels
    import triton.runtime.jit  # noqa: F401 - triton's own kernels stay compiled ones, whatever the order
    try:
        import triton.experimental.gluon  # noqa: F401 - imported at the first launch otherwise
    except ImportError:
        pass

    path = Path(hopekit.kernels.__file__).with_name("triton_rotary.py")
    spec = importlib.util.spec_from_file_location("hopekit.kernels._triton_rotary_interpreted", path)
    module = importlib.util.module_from_spec(spec)
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec.loader.exec_module(module)
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before
    assert type(module._rotary_kernel).__name__ == "InterpretedFunction"
    return module


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every output the kernel allocates starts as NaN: an element it does not write shows."""
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: empty_like(t, **kw).fill_(float("nan")))


def check(out, x, cos, sin):
    """assert_rotation for the interpreter, which truncates float32 to bfloat16."""
    assert_rotation(out, x, cos, sin, ulps=1.0 if x.dtype == torch.bfloat16 else 0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_fast_path_is_the_triton_kernel(dtype):
    from hopekit.kernels import rotary as kr

    feats = encoding("yarn", 96, 0.5).features(torch.arange(7, 7 + 300), seq_len=4096)
    cos, sin = feats.cos.cuda(), feats.sin.cuda()
    leaf = torch.randn(2, 300, 5, 96, dtype=dtype, device="cuda", requires_grad=True)
    x = leaf.transpose(1, 2)
    out = kr.apply_rotary(x, cos, sin)
    assert out.stride() == x.stride()
    assert_rotation(out.detach().cpu(), x.detach().cpu(), cos.cpu(), sin.cpu())
    grad = torch.randn_like(out)
    out.backward(grad)
    assert_rotation(leaf.grad.transpose(1, 2).cpu(), grad.cpu(), cos.cpu(), -sin.cpu())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["bhtd", "bthd", "htd", "td"])
def test_dtypes_and_layouts(tr, layout, dtype):
    x = make_x(2, 3, 13, 64, dtype, "bhtd" if layout == "bhtd" else "bthd")
    x = {"htd": x[0], "td": x[0, 1]}.get(layout, x)
    feats = encoding("rope", 64).features(torch.arange(13))
    out = tr.apply_rotary(x, feats.cos, feats.sin)
    check(out, x, feats.cos, feats.sin)
    if x.dim() == 4:
        assert out.stride() == x.stride()  # a transpose(1, 2) view stays one

@pytest.mark.parametrize("head_dim, T", [
    pytest.param(d, t, marks=[pytest.mark.slow] if d * t > 80 * 129 else [])
    for d in (32, 48, 80, 96, 128, 256) for t in (1, 7, 129)])
def test_head_dims_and_lengths(tr, head_dim, T):
    x = make_x(1, 3, T, head_dim, torch.bfloat16)
    feats = encoding("ntk", head_dim).features(torch.arange(T))
    check(tr.apply_rotary(x, feats.cos, feats.sin), x, feats.cos, feats.sin)

@pytest.mark.parametrize("fraction", [pytest.param(1.0, marks=pytest.mark.slow), 0.5,
                                      pytest.param(0.25, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ROTARY)
def test_every_method_and_partial_rotary(tr, name, fraction):
    if 64 * fraction < 2 * 2:
        pytest.skip("rotary dim too small")
    enc = encoding(name, 64, fraction)
    feats = enc.features(torch.arange(21), seq_len=300)
    x = make_x(2, 5, 21, 64, torch.float16)
    check(tr.apply_rotary(x, feats.cos, feats.sin), x, feats.cos, feats.sin)

@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, marks=pytest.mark.slow), torch.bfloat16,
                                   pytest.param(torch.float16, marks=pytest.mark.slow)], ids=str)
def test_batched_positions_and_kv_cache_offsets(tr, dtype):
    from hopekit.pe.randomized import RandomizedPositions

    pos = RandomizedPositions(max_position=2048).sample(3, 17, generator=torch.Generator().manual_seed(2))
    for positions in (pos, torch.arange(100, 101), torch.arange(40, 47).repeat(3, 1) + torch.arange(3)[:, None]):
        feats = encoding("dynamic_ntk", 48, 0.5).features(positions, seq_len=int(positions.max()) + 1)
        T = positions.shape[-1]
        x = make_x(3, 5, T, 48, dtype)
        check(tr.apply_rotary(x, feats.cos, feats.sin), x, feats.cos, feats.sin)

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_angle_zero_is_bit_identical(tr, dtype):
    enc = encoding("hope_highfreq", 64)
    free = torch.nonzero(enc.spectrum().inv_freq == 0).flatten().tolist()
    feats = enc.features(torch.arange(9))
    x = make_x(2, 3, 9, 64, dtype)
    out = tr.apply_rotary(x, feats.cos, feats.sin)
    assert torch.equal(out[..., 0, :], x[..., 0, :])
    for i in free:
        assert torch.equal(out[..., i], x[..., i]) and torch.equal(out[..., 32 + i], x[..., 32 + i])

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
def test_backward_is_the_rotation_by_minus_angle(tr, layout, dtype):
    shape = (2, 11, 3, 80) if layout == "bthd" else (2, 3, 11, 80)
    leaf = torch.randn(shape, dtype=dtype, requires_grad=True)
    x = leaf.transpose(1, 2) if layout == "bthd" else leaf
    feats = encoding("llama3", 80, 0.6).features(torch.arange(30, 41), seq_len=500)
    out = tr.apply_rotary(x, feats.cos, feats.sin)
    grad = torch.randn(2, 11, 3, 80, dtype=dtype).transpose(1, 2)
    out.backward(grad)
    g = leaf.grad.transpose(1, 2) if layout == "bthd" else leaf.grad
    check(g, grad, feats.cos, -feats.sin)
    x64 = x.detach().double().requires_grad_()
    reference(x64, feats.cos.double(), feats.sin.double()).backward(grad.double())
    torch.testing.assert_close(x64.grad, oracle(grad, feats.cos, -feats.sin), rtol=1e-12, atol=1e-12)

def test_expanded_gradient_and_double_backward(tr):
    feats = encoding("rope", 16).features(torch.arange(5))
    x = torch.randn(2, 3, 5, 16, requires_grad=True)
    out = tr.apply_rotary(x, feats.cos, feats.sin)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)  # grad of sum: an expanded, stride-0 tensor
    check(g.detach(), torch.ones_like(x), feats.cos, -feats.sin)
    (gg,) = torch.autograd.grad((g * x).sum(), x)                 # through the backward kernel again
    check(gg, torch.ones_like(x), feats.cos, -feats.sin)

@pytest.mark.parametrize("case, match", [
    ("int", "x: expected a float32, bfloat16 or float16 tensor"),
    ("float64 cos", "cos: expected a float32 tensor"),
    ("cos length", r"cos: expected shape \(T=5, r/2\)"),
    ("cos too wide", r"cos: expected shape"),
    ("shapes differ", "cos, sin: shapes differ"),
    ("5 dims", r"x: expected shape \(T, D\)"),
])
def test_bad_inputs_get_one_clear_line(tr, case, match):
    x, cos, sin = torch.randn(2, 3, 5, 16), torch.rand(5, 8), torch.rand(5, 8)
    x = {"int": x.long(), "5 dims": x[None]}.get(case, x)
    if case == "float64 cos":
        cos = cos.double()
    elif case == "cos length":
        cos, sin = torch.rand(4, 8), torch.rand(4, 8)
    elif case == "cos too wide":
        cos, sin = torch.rand(5, 9), torch.rand(5, 9)
    elif case == "shapes differ":
        sin = torch.rand(5, 4)
    with pytest.raises((TypeError, ValueError), match=match):
        tr.apply_rotary(x, cos, sin)

@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_longer_inputs(tr, dtype):
    """Several programs per row and many rows: T 1000 with batched cos/sin, D 128 partial."""
    from hopekit.pe.randomized import RandomizedPositions

    pos = RandomizedPositions(max_position=8192).sample(2, 1000, generator=torch.Generator().manual_seed(3))
    feats = encoding("longrope", 128, 0.75).features(pos, seq_len=8192)
    x = make_x(2, 4, 1000, 128, dtype)
    check(tr.apply_rotary(x, feats.cos, feats.sin), x, feats.cos, feats.sin)
