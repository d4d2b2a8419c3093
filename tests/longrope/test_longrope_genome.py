"""hopekit.longrope.genome: the search space, the seeds and the two operators.

Oracles: the definitions in the LongRoPE notes (a monotone vector of factors on the 0.01 grid within
[1, λ_max], genes drawn between their neighbours, crossover genes taken from parent 2 with probability
p/2), a running maximum written out by hand for ``snap``, float64 closed forms of the NTK and YaRN
factors (the pair-index ramp of the reference code, re-derived here), and transformers' own
``ROPE_INIT_FUNCTIONS["yarn"]``. Every property runs over many seeded draws.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from hopekit.longrope import GRID, SEED_METHODS, Candidate, SearchSpace, crossover, is_monotone, mutate, seed_factors


def random_space(rng: random.Random) -> SearchSpace:
    """A random space: 1–12 pairs, λ_max anywhere in [1, 20] (not only on the grid), sometimes an n̂ gene."""
    pairs = rng.randint(1, 12)
    lambda_max = rng.choice([1.0, 1.03, rng.uniform(1.0, 20.0), 1.25 * rng.randint(2, 16)])
    start = rng.choice([(0,), (0, 1, 2, 4, 8), (0, 4, 16, 64, 256), (3, 7)])
    return SearchSpace(pairs=pairs, lambda_max=lambda_max, start_tokens=start)


def random_member(space: SearchSpace, rng: random.Random) -> Candidate:
    """A uniformly random monotone candidate of ``space`` (sorted grid values)."""
    values = sorted(rng.randint(GRID, space.high) for _ in range(space.pairs))
    return Candidate(tuple(values), rng.choice(space.start_tokens))


def in_space(c: Candidate, space: SearchSpace) -> bool:
    """The membership rule written out: ints on the grid, 1 <= λ_0 <= … <= λ_last <= λ_max, n̂ a choice."""
    v = c.rescale
    return (len(v) == space.pairs and all(isinstance(x, int) for x in v)
            and all(a <= b for a, b in zip(v, v[1:])) and v[0] >= 100
            and v[-1] / 100 <= space.lambda_max + 1e-12 and c.start_tokens in space.start_tokens)


# ---- the space -----------------------------------------------------------------------------------

def test_high_is_lambda_max_rounded_down_onto_the_grid():
    for lam, want in ((10.0, 1000), (1.25 * 8, 1000), (1.0, 100), (2.999, 299), (3.0, 300), (1 + 0.1 * 3, 130)):
        assert SearchSpace(pairs=2, lambda_max=lam).high == want, lam


def test_candidate_key_round_trips_and_factors_are_hundredths():
    rng = random.Random(0)
    for _ in range(200):
        space = random_space(rng)
        c = random_member(space, rng)
        assert Candidate.from_key(c.key) == c
        assert c.factors() == tuple(v / 100 for v in c.rescale)
        assert space.contains(c) and in_space(c, space)


def test_contains_rejects_each_kind_of_outsider():
    space = SearchSpace(pairs=3, lambda_max=2.0, start_tokens=(0, 4))
    assert space.contains(Candidate((100, 150, 200), 4))
    for bad in (Candidate((100, 150), 0), Candidate((100, 160, 150), 0), Candidate((99, 150, 200), 0),
                Candidate((100, 150, 201), 0), Candidate((100, 150, 200), 2)):
        assert not space.contains(bad), bad


@pytest.mark.parametrize("kwargs, field", [
    (dict(pairs=0, lambda_max=2.0), "pairs"), (dict(pairs=True, lambda_max=2.0), "pairs"),
    (dict(pairs=2.0, lambda_max=2.0), "pairs"), (dict(pairs=2, lambda_max=0.5), "lambda_max"),
    (dict(pairs=2, lambda_max=math.inf), "lambda_max"), (dict(pairs=2, lambda_max="8"), "lambda_max"),
    (dict(pairs=2, lambda_max=2.0, start_tokens=()), "start_tokens"),
    (dict(pairs=2, lambda_max=2.0, start_tokens=(0, 0)), "start_tokens"),
    (dict(pairs=2, lambda_max=2.0, start_tokens=(-1,)), "start_tokens"),
])
def test_search_space_refuses_bad_settings_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SearchSpace\.{field}=") as e:
        SearchSpace(**kwargs)
    assert "\n" not in str(e.value)


def snap_oracle(factors, high: int) -> tuple[int, ...]:
    """Round to hundredths (ties to even, as Python rounds), clip to [100, high], then a running maximum."""
    out, floor = [], 100
    for f in factors:
        v = min(max(round(f * 100), 100), high)
        floor = max(floor, v)
        out.append(floor)
    return tuple(out)


def test_snap_is_grid_rounding_clipping_and_a_running_maximum():
    rng = random.Random(1)
    for _ in range(500):
        space = random_space(rng)
        factors = [rng.uniform(0.2, space.lambda_max + 3.0) for _ in range(space.pairs)]
        n = rng.choice(space.start_tokens)
        c = space.snap(factors, n)
        assert c.rescale == snap_oracle(factors, space.high)
        assert c.start_tokens == n
        assert space.contains(c)


def test_snap_keeps_a_member_unchanged_and_refuses_the_wrong_length():
    rng = random.Random(2)
    for _ in range(200):
        space = random_space(rng)
        c = random_member(space, rng)
        assert space.snap(c.factors(), c.start_tokens) == c
    with pytest.raises(ValueError, match="factors: has 3 entries.*2 pairs"):
        SearchSpace(pairs=2, lambda_max=2.0).snap([1.0, 1.0, 1.0])


# ---- mutation ------------------------------------------------------------------------------------

def test_every_mutant_is_monotone_on_the_grid_within_bounds_and_keeps_n_hat_in_its_choices():
    rng = random.Random(3)
    for trial in range(150):
        space = random_space(rng)
        draw = random.Random(trial)
        prob = rng.choice([0.05, 0.3, 1.0])
        parent = random_member(space, rng)
        for _ in range(40):
            child = mutate(parent, space, draw, prob)
            assert in_space(child, space), (space, parent, child)
            parent = child if draw.random() < 0.5 else parent        # walk as well as branch


def test_a_mutated_gene_is_drawn_between_its_new_left_and_old_right_neighbour():
    """Genes are visited in order: gene i lands in [child[i−1] (or 1), parent[i+1] (or λ_max)]."""
    rng = random.Random(4)
    for trial in range(300):
        space = random_space(rng)
        parent = random_member(space, rng)
        child = mutate(parent, space, random.Random(trial), 0.5)
        for i, v in enumerate(child.rescale):
            low = 100 if i == 0 else child.rescale[i - 1]
            high = space.high if i == space.pairs - 1 else parent.rescale[i + 1]
            assert low <= v <= high or v == parent.rescale[i], (i, parent, child)


def test_mutation_redraws_each_gene_with_probability_p_uniformly_over_its_whole_range():
    """One pair in [1, 3]: 201 grid values. A gene changes with probability p·200/201; every value of the
    range, both ends included, is reached, each about equally often."""
    space = SearchSpace(pairs=1, lambda_max=3.0)
    parent = Candidate((200,))
    draw, n, p = random.Random(5), 40_000, 0.3
    counts: dict[int, int] = {}
    changed = 0
    for _ in range(n):
        v = mutate(parent, space, draw, p).rescale[0]
        changed += v != 200
        counts[v] = counts.get(v, 0) + 1
    expect = p * 200 / 201
    assert abs(changed / n - expect) < 5 * math.sqrt(expect * (1 - expect) / n)
    redraws = {v: k for v, k in counts.items() if v != 200}
    assert set(redraws) == set(range(100, 301)) - {200}
    per_value = n * p / 201
    assert max(abs(k - per_value) for k in redraws.values()) < 6 * math.sqrt(per_value)


def test_mutation_redraws_the_n_hat_gene_with_probability_p_from_its_choices():
    space = SearchSpace(pairs=2, lambda_max=1.0, start_tokens=(0, 1, 2, 4))   # λ fixed at 1: only n̂ moves
    draw, n, p = random.Random(6), 20_000, 0.3
    seen = [mutate(Candidate((100, 100), 2), space, draw, p).start_tokens for _ in range(n)]
    assert set(seen) == {0, 1, 2, 4}
    moved = sum(s != 2 for s in seen) / n
    expect = p * 3 / 4
    assert abs(moved - expect) < 5 * math.sqrt(expect * (1 - expect) / n)
    # without an n̂ gene, n̂ never moves
    plain = SearchSpace(pairs=2, lambda_max=4.0)
    assert all(mutate(Candidate((100, 300)), plain, draw, 1.0).start_tokens == 0 for _ in range(200))


def test_mutation_of_a_pinned_space_returns_the_parent():
    space = SearchSpace(pairs=4, lambda_max=1.0)
    c = Candidate((100,) * 4)
    assert all(mutate(c, space, random.Random(i), 1.0) == c for i in range(20))


# ---- crossover -----------------------------------------------------------------------------------

def test_crossover_child_takes_each_gene_from_one_parent_and_differs_from_parent_1_only_by_parent_2_genes():
    rng = random.Random(7)
    accepted = 0
    for trial in range(400):
        space = random_space(rng)
        better, other = random_member(space, rng), random_member(space, rng)
        draw = random.Random(trial)
        for _ in range(10):
            child = crossover(better, other, draw, rng.choice([0.3, 1.0]))
            assert len(child.rescale) == space.pairs
            for i, (c, b, o) in enumerate(zip(child.rescale, better.rescale, other.rescale)):
                assert c in (b, o), (i, better, other, child)   # so it differs from parent 1 only by parent-2 genes
            assert child.start_tokens in (better.start_tokens, other.start_tokens)
            if is_monotone(child.rescale):                   # what the search accepts (plus "new")
                accepted += 1
                assert in_space(child, space)
    assert accepted > 1000


def test_crossover_takes_a_parent_2_gene_with_probability_p_over_2():
    pairs, n, p = 16, 3000, 0.3
    better = Candidate(tuple(range(100, 100 + pairs)), 0)
    other = Candidate(tuple(range(500, 500 + pairs)), 8)
    draw = random.Random(8)
    genes = starts = 0
    for _ in range(n):
        child = crossover(better, other, draw, p)
        genes += sum(c == o for c, o in zip(child.rescale, other.rescale))
        starts += child.start_tokens == 8
    q = p / 2
    assert abs(genes / (n * pairs) - q) < 5 * math.sqrt(q * (1 - q) / (n * pairs))
    assert abs(starts / n - q) < 5 * math.sqrt(q * (1 - q) / n)


def test_crossover_of_identical_parents_is_the_parent():
    c = Candidate((100, 120, 300), 4)
    assert all(crossover(c, c, random.Random(i), 1.0) == c for i in range(20))


# ---- seeds ---------------------------------------------------------------------------------------

#: (pairs, base, train_len, factor): tiny, the notes' LLaMA2 example (d 128, L 4096) at 64×, others
SEED_CASES = [(8, 10_000.0, 32, 4.0), (64, 10_000.0, 4096, 64.0), (16, 500.0, 128, 8.0), (48, 10_000.0, 2048, 32.0),
              (8, 10_000.0, 64, 2.5), (32, 500_000.0, 8192, 16.0)]


def yarn_ramp(pairs: int, base: float, train_len: int, beta_fast=32.0, beta_slow=1.0) -> list[float]:
    """ρ_i of the reference code's YaRN (the notes): i(q) = d·ln(L/(2πq)) / (2 ln b); i_lo = ⌊i(β_fast)⌋,
    i_hi = ⌈i(β_slow)⌉, clipped to [0, d−1]; +0.001 if equal; ρ_i = clip((i − i_lo)/(i_hi − i_lo), 0, 1)."""
    d = 2 * pairs

    def index(q):
        return d * math.log(train_len / (2 * math.pi * q)) / (2 * math.log(base))

    lo, hi = max(math.floor(index(beta_fast)), 0), min(math.ceil(index(beta_slow)), d - 1)
    if lo == hi:
        hi += 0.001
    return [min(max((i - lo) / (hi - lo), 0.0), 1.0) for i in range(pairs)]


@pytest.mark.parametrize("pairs, base, train_len, s", SEED_CASES)
def test_pi_seed_is_s_everywhere(pairs, base, train_len, s):
    assert seed_factors("pi", factor=s, pairs=pairs, base=base, train_len=train_len) == [s] * pairs


@pytest.mark.parametrize("pairs, base, train_len, s", SEED_CASES)
def test_ntk_seed_is_s_to_the_2i_over_r_minus_2(pairs, base, train_len, s):
    got = seed_factors("ntk", factor=s, pairs=pairs, base=base, train_len=train_len)
    r = 2 * pairs
    want = [s ** (2 * i / (r - 2)) for i in range(pairs)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(1.0, abs=1e-13) and got[-1] == pytest.approx(s, rel=1e-12)
    assert is_monotone(got)


@pytest.mark.parametrize("pairs, base, train_len, s", SEED_CASES)
def test_yarn_seed_is_theta_over_theta_prime_of_the_pair_index_ramp(pairs, base, train_len, s):
    got = seed_factors("yarn", factor=s, pairs=pairs, base=base, train_len=train_len)
    want = [1.0 / ((1 - rho) + rho / s) for rho in yarn_ramp(pairs, base, train_len)]
    assert got == pytest.approx(want, rel=1e-12)
    assert is_monotone(got) and got[0] >= 1.0 - 1e-12 and max(got) <= s * (1 + 1e-12)


@pytest.mark.parametrize("pairs, base, train_len, s", SEED_CASES)
def test_yarn_seed_equals_transformers_yarn_frequencies(pairs, base, train_len, s):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim = 2 * pairs
    cfg = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, rope_theta=base,
                      max_position_embeddings=int(train_len * s),
                      rope_scaling={"rope_type": "yarn", "factor": s, "original_max_position_embeddings": train_len})
    scaled, _ = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
    plain, _ = ROPE_INIT_FUNCTIONS["default"](cfg, "cpu")
    want = (plain.double() / scaled.double()).tolist()
    got = seed_factors("yarn", factor=s, pairs=pairs, base=base, train_len=train_len)
    assert got == pytest.approx(want, rel=2e-6)   # transformers computes in float32


@pytest.mark.parametrize("pairs, base, train_len, s", SEED_CASES)
def test_linear_yarn_seed_is_one_plus_s_minus_one_times_the_ramp(pairs, base, train_len, s):
    got = seed_factors("yarn_linear", factor=s, pairs=pairs, base=base, train_len=train_len)
    want = [1 + (s - 1) * rho for rho in yarn_ramp(pairs, base, train_len)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert is_monotone(got)


def test_linear_yarn_differs_from_yarn_as_the_notes_say_at_64x():
    """The notes' example: s = 64, d = 128, L = 4096, pair 30 gets 25.2 (linear in λ) instead of 1.61."""
    kw = dict(factor=64.0, pairs=64, base=10_000.0, train_len=4096)
    assert seed_factors("yarn_linear", **kw)[30] == pytest.approx(25.2, abs=0.05)
    assert seed_factors("yarn", **kw)[30] == pytest.approx(1.61, abs=0.005)


def test_seeds_at_factor_one_are_all_ones_and_an_unknown_seed_is_refused():
    for method in SEED_METHODS:
        assert seed_factors(method, factor=1.0, pairs=8, base=1e4, train_len=64) == pytest.approx([1.0] * 8, abs=1e-12)
    with pytest.raises(ValueError, match="seed method 'linear'"):
        seed_factors("linear", factor=2.0, pairs=8, base=1e4, train_len=64)


@pytest.mark.parametrize("pairs, base, train_len, s", SEED_CASES)
def test_every_seed_snaps_into_the_paper_and_the_code_space(pairs, base, train_len, s):
    for lambda_max in (1.25 * s, 1 + s):
        space = SearchSpace(pairs=pairs, lambda_max=lambda_max)
        for method in SEED_METHODS:
            factors = seed_factors(method, factor=s, pairs=pairs, base=base, train_len=train_len)
            c = space.snap(factors)
            assert space.contains(c)
            assert c.rescale == snap_oracle(factors, space.high)
            # the seeds are monotone already, so snapping only rounds
            assert max(abs(v / 100 - f) for v, f in zip(c.rescale, factors)) <= 0.005 + 1e-9


def test_seed_factors_are_computed_in_float64():
    got = seed_factors("ntk", factor=3.0, pairs=8, base=1e4, train_len=64)
    assert all(isinstance(v, float) for v in got)
    assert torch.tensor(got, dtype=torch.float64).tolist() == got
