"""hopekit.longrope.search: the elitist loop, its history, state file, resume and torch.distributed.

Oracles: a deterministic synthetic fitness (the distance to a hidden target, tests/longrope/_search_worker.py)
whose calls are counted by key; the state file read back after every iteration; an uninterrupted run of
the same search (for in-process interruptions, for a SIGKILLed subprocess and for two gloo ranks); the
arithmetic of the loop (P + T·(mutations + crossovers) evaluations).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hopekit.longrope import EVALUATIONS_NAME, STATE_NAME, Candidate, SearchConfig, SearchError, SearchSpace, run_search
from tests.longrope._search_worker import comparable, synthetic_problem

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_search_worker.py")

#: a small search: P 8 = 4 parents + 2 mutations + 2 crossovers
SMALL = dict(population=8, parents=4, mutations=2, crossovers=2)


def quiet(**kw):
    return dict(progress=False, log=lambda s: None, **kw)


class Counted:
    """A fitness that counts its calls by key and can 'die' (raise ``Killed``) at call number ``kill_at``."""

    class Killed(BaseException):
        pass

    def __init__(self, fitness, kill_at: int | None = None):
        self.fitness, self.kill_at = fitness, kill_at
        self.calls: collections.Counter = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def __call__(self, c: Candidate) -> float:
        if self.kill_at is not None and self.total + 1 >= self.kill_at:
            raise Counted.Killed
        self.calls[c.key] += 1
        return self.fitness(c)


def states(out: Path, monkeypatch):
    """Copies of the state file, taken each time the search writes it (after each committed iteration);
    the ``on_iteration`` returned alongside does nothing (it runs before the state is written)."""
    from hopekit.longrope import search as search_module

    seen: list[dict] = []
    write = search_module._Search._write_state

    def keep(self):
        write(self)
        state = json.loads((out / STATE_NAME).read_text())
        if state["iteration"] >= 0:          # (iteration −1: the settings, written before any evaluation)
            seen.append(state)
    monkeypatch.setattr(search_module._Search, "_write_state", keep)
    return seen, lambda row: None


def history_of(out: Path) -> dict[str, float]:
    return json.loads((out / STATE_NAME).read_text())["history"]


# ---- the loop ------------------------------------------------------------------------------------

@pytest.mark.parametrize("trial", range(6))
def test_no_candidate_is_evaluated_twice_and_every_one_is_a_member_of_the_space(tmp_path, trial):
    space, seeds, fitness = synthetic_problem(pairs=3 + trial, lambda_max=[1.5, 3.0, 10.0][trial % 3])
    f = Counted(fitness)
    cfg = SearchConfig(**SMALL, iterations=8, seed=trial)
    result = run_search(cfg, space, seeds, f, tmp_path, **quiet())
    assert max(f.calls.values()) == 1
    assert all(space.contains(Candidate.from_key(k)) for k in f.calls)
    assert set(f.calls) == set(history_of(tmp_path))
    assert result.evaluations == f.total == len(history_of(tmp_path))
    # the log holds each evaluation once, with the value the fitness gave
    rows = [json.loads(line) for line in (tmp_path / EVALUATIONS_NAME).read_text().splitlines()]
    assert [r["key"] for r in rows] == list(f.calls)
    assert all(r["fitness"] == fitness(Candidate.from_key(r["key"])) for r in rows)


@pytest.mark.parametrize("trial", range(4))
def test_population_stays_at_p_ranked_distinct_and_the_parents_survive(tmp_path, trial, monkeypatch):
    space, seeds, fitness = synthetic_problem()
    cfg = SearchConfig(population=10, parents=4, mutations=3, crossovers=3, iterations=6, seed=trial)
    seen, on_iteration = states(tmp_path, monkeypatch)
    run_search(cfg, space, seeds, fitness, tmp_path, on_iteration=on_iteration, **quiet())
    assert [s["iteration"] for s in seen] == list(range(7))
    for s in seen:
        pop = s["population"]
        keys = [k for k, _ in pop]
        assert len(pop) == cfg.population and len(set(keys)) == len(keys)
        assert pop == sorted(pop, key=lambda kf: (kf[1], kf[0]))                  # ranked, ties by key
        assert all(v == fitness(Candidate.from_key(k)) == s["history"][k] for k, v in pop)
    for before, after in zip(seen, seen[1:]):
        parents = [k for k, _ in before["population"][:cfg.parents]]
        keys = {k for k, _ in after["population"]}
        assert set(parents) <= keys                                              # elitist: the top-k survive
        new = keys - set(parents)
        assert len(new) == cfg.mutations + cfg.crossovers and not new & set(before["history"])


def test_the_initial_population_is_the_seeds_plus_mutants(tmp_path, monkeypatch):
    space, seeds, fitness = synthetic_problem()
    seen, on_iteration = states(tmp_path, monkeypatch)
    run_search(SearchConfig(**SMALL, iterations=0), space, seeds, fitness, tmp_path, on_iteration=on_iteration,
               **quiet())
    keys = {k for k, _ in seen[0]["population"]}
    assert {c.key for c in seeds.values()} <= keys and len(keys) == 8


@pytest.mark.parametrize("trial", range(5))
def test_elitism_best_never_worsens_and_ends_at_most_the_best_seed(tmp_path, trial):
    space, seeds, fitness = synthetic_problem(target_seed=trial)
    result = run_search(SearchConfig(**SMALL, iterations=10, seed=trial), space, seeds, fitness, tmp_path, **quiet())
    bests = [row["best"] for row in result.curve]
    assert all(a >= b for a, b in zip(bests, bests[1:]))
    assert result.best_fitness <= min(fitness(c) for c in seeds.values())
    history = history_of(tmp_path)
    assert result.best_fitness == min(history.values()) == fitness(result.best)   # the best ever seen is kept
    assert result.curve[-1]["best_key"] == result.best.key


@pytest.mark.parametrize("cfg", [dict(SMALL, iterations=5), dict(population=12, parents=6, mutations=6, crossovers=0,
                                                                   iterations=3),
                                 dict(population=6, parents=2, mutations=0, crossovers=4, iterations=4)])
def test_evaluations_are_p_plus_iterations_times_children(cfg):
    space, seeds, fitness = synthetic_problem()
    f = Counted(fitness)
    result = run_search(SearchConfig(**cfg), space, seeds, f, **quiet())
    want = cfg["population"] + cfg["iterations"] * (cfg["mutations"] + cfg["crossovers"])
    assert f.total == result.evaluations == want
    assert [row["evaluations"] for row in result.curve] == [
        cfg["population"] + i * (cfg["mutations"] + cfg["crossovers"]) for i in range(cfg["iterations"] + 1)]
    assert not result.stopped_early


def test_same_seed_same_search_other_seed_other_path():
    space, seeds, fitness = synthetic_problem()
    runs = [comparable(run_search(SearchConfig(**SMALL, iterations=6, seed=s), space, seeds, fitness, **quiet()))
            for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0]["population"] != runs[2]["population"]


def test_a_short_search_is_a_prefix_of_a_longer_one():
    """``iterations`` does not steer the generator, so T = 3 is the first rows of T = 6."""
    space, seeds, fitness = synthetic_problem()
    short = comparable(run_search(SearchConfig(**SMALL, iterations=3), space, seeds, fitness, **quiet()))
    long = comparable(run_search(SearchConfig(**SMALL, iterations=6), space, seeds, fitness, **quiet()))
    assert short["curve"] == long["curve"][:4]


@pytest.mark.parametrize("kwargs, field", [
    (dict(population=10, parents=4, mutations=2, crossovers=2), "population"),
    (dict(population=4, parents=1, mutations=1, crossovers=2), "parents"),
    (dict(SMALL, parents=0, population=4), "parents"),
    (dict(SMALL, iterations=-1), "iterations"),
    (dict(SMALL, mutation_prob=0.0), "mutation_prob"),
    (dict(SMALL, crossover_prob=1.5), "crossover_prob"),
    (dict(SMALL, mutation_prob=True), "mutation_prob"),
    (dict(SMALL, crossover_retries=0), "crossover_retries"),
    (dict(SMALL, seed=-1), "seed"),
    (dict(SMALL, seed=1.5), "seed"),
    (dict(SMALL, patience=0), "patience"),
    (dict(SMALL, min_gain=-0.1), "min_gain"),
    (dict(SMALL, population=True), "population"),
])
def test_bad_search_settings_are_one_line_value_errors_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SearchConfig\.{field}=") as e:
        SearchConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_defaults_are_the_papers():
    cfg = SearchConfig()
    assert (cfg.population, cfg.parents, cfg.mutations, cfg.crossovers, cfg.iterations) == (64, 32, 16, 16, 40)
    assert (cfg.mutation_prob, cfg.crossover_prob, cfg.crossover_retries) == (0.3, 0.3, 20)
    assert cfg.min_gain == 0.001


def test_patience_stops_a_stalled_search():
    space, seeds, _ = synthetic_problem()
    f = Counted(lambda c: 1.0)                                                   # nothing ever improves
    result = run_search(SearchConfig(**SMALL, iterations=20, patience=3), space, seeds, f, **quiet())
    assert result.stopped_early
    assert [row["iteration"] for row in result.curve] == [0, 1, 2, 3]
    assert f.total == 8 + 3 * 4


def test_patience_lets_an_improving_search_run_to_the_end():
    space, seeds, _ = synthetic_problem()
    counter = iter(range(10**6))
    result = run_search(SearchConfig(**SMALL, iterations=8, patience=2), space, seeds,
                        lambda c: 1000.0 - next(counter), **quiet())                 # each new one is the best
    assert not result.stopped_early and len(result.curve) == 9


def test_a_search_that_ran_every_iteration_did_not_stop_early():
    space, seeds, _ = synthetic_problem()
    f = Counted(lambda c: 1.0)
    result = run_search(SearchConfig(**SMALL, iterations=1, patience=1), space, seeds, f, **quiet())
    assert f.total == 8 + 1 * 4 and len(result.curve) == 2          # every iteration ran ...
    assert not result.stopped_early                                   # ... so it did not stop early


def test_an_exhausted_space_raises_search_error():
    # one pair in [1, 1.05]: six candidates in all
    space = SearchSpace(pairs=1, lambda_max=1.05)
    seeds = {"rope": Candidate((100,))}
    with pytest.raises(SearchError, match="exhausted"):
        run_search(SearchConfig(population=8, parents=4, mutations=2, crossovers=2), space, seeds, lambda c: 1.0,
                   **quiet())
    f = Counted(lambda c: c.rescale[0] / 100)
    with pytest.raises(SearchError, match="exhausted"):                          # 4 + 2 = 6: the 2nd iteration
        run_search(SearchConfig(population=4, parents=2, mutations=1, crossovers=1, iterations=5), space, seeds, f,
                   **quiet())
    assert f.total == 6 and max(f.calls.values()) == 1


def test_non_finite_fitness_ranks_last(tmp_path, monkeypatch):
    space, seeds, fitness = synthetic_problem()
    bad = {c.key: v for c, v in zip(list(seeds.values())[:2], (math.nan, math.inf))}

    def f(c):
        if c.key in bad:
            return bad[c.key]
        return math.nan if c.rescale[0] % 7 == 0 else fitness(c)

    seen, on_iteration = states(tmp_path, monkeypatch)
    result = run_search(SearchConfig(**SMALL, iterations=5), space, seeds, f, tmp_path, on_iteration=on_iteration,
                        **quiet())
    assert math.isfinite(result.best_fitness)
    for s in seen:
        values = [v for _, v in s["population"]]
        finite = [math.isfinite(v) for v in values]
        assert finite == sorted(finite, reverse=True)                        # every finite one ranks first
        assert not any(math.isnan(v) for v in values)                        # NaN is held as +inf
    assert all(v == math.inf for k, v in history_of(tmp_path).items() if k in bad)


def test_seeds_are_checked_deduplicated_and_bounded_by_p():
    space, seeds, fitness = synthetic_problem()
    with pytest.raises(SearchError, match="seed .*outside the search space"):
        run_search(SearchConfig(**SMALL), space, {"bad": Candidate((100,) * (space.pairs - 1))}, fitness, **quiet())
    with pytest.raises(SearchError, match="outside"):
        run_search(SearchConfig(**SMALL), space, {"bad": Candidate((100,) * space.pairs, 3)}, fitness, **quiet())
    many = {str(i): Candidate((100 + i,) * space.pairs) for i in range(5)}
    with pytest.raises(SearchError, match="5 distinct seeds.*population=4"):
        run_search(SearchConfig(population=4, parents=2, mutations=1, crossovers=1), space, many, fitness, **quiet())
    f = Counted(fitness)
    twice = {"a": Candidate((150,) * space.pairs), "b": Candidate((150,) * space.pairs)}
    run_search(SearchConfig(**SMALL, iterations=1), space, twice, f, **quiet())
    assert max(f.calls.values()) == 1 and f.total == 8 + 4


# ---- resume --------------------------------------------------------------------------------------

RESUME_CFG = SearchConfig(**SMALL, iterations=4, seed=3)
RESUME_TOTAL = 8 + 4 * 4


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    space, seeds, fitness = synthetic_problem()
    result = run_search(RESUME_CFG, space, seeds, fitness, out, **quiet())
    return comparable(result), json.loads((out / STATE_NAME).read_text())


def _strip_seconds(state: dict) -> dict:
    state = dict(state)
    state.pop("seconds")
    state["curve"] = [{k: v for k, v in row.items() if k != "seconds"} for row in state["curve"]]
    return state


@pytest.mark.parametrize("kill_at", range(9, RESUME_TOTAL + 1))
def test_a_search_killed_after_any_evaluation_resumes_to_the_same_result_without_recomputing(
        tmp_path, uninterrupted, kill_at):
    """Killed before evaluation ``kill_at`` (of 24; the initial population is 1–8): the resumed run reads
    the killed iteration's evaluations back and reaches the uninterrupted result, state file included."""
    space, seeds, fitness = synthetic_problem()
    with pytest.raises(Counted.Killed):
        run_search(RESUME_CFG, space, seeds, Counted(fitness, kill_at), tmp_path, **quiet())
    logged = len((tmp_path / EVALUATIONS_NAME).read_text().splitlines())
    assert logged == kill_at - 1
    again = Counted(fitness)
    result = run_search(RESUME_CFG, space, seeds, again, tmp_path, resume=True, **quiet())
    want, want_state = uninterrupted
    assert comparable(result) == want
    assert again.total == RESUME_TOTAL - logged                   # nothing logged is computed again
    assert not set(again.calls) & {json.loads(line)["key"] for line in
                                   (tmp_path / EVALUATIONS_NAME).read_text().splitlines()[:logged]}
    assert _strip_seconds(json.loads((tmp_path / STATE_NAME).read_text())) == _strip_seconds(want_state)
    # and the log now holds every evaluation exactly once
    keys = [json.loads(line)["key"] for line in (tmp_path / EVALUATIONS_NAME).read_text().splitlines()]
    assert sorted(keys) == sorted(want_state["history"])


@pytest.mark.parametrize("kill_at", [1, 5])
def test_a_search_killed_during_the_initial_population_can_be_resumed(tmp_path, uninterrupted, kill_at):
    space, seeds, fitness = synthetic_problem()
    with pytest.raises(Counted.Killed):
        run_search(RESUME_CFG, space, seeds, Counted(fitness, kill_at), tmp_path, **quiet())
    again = Counted(fitness)
    result = run_search(RESUME_CFG, space, seeds, again, tmp_path, resume=True, **quiet())
    assert comparable(result) == uninterrupted[0]
    assert again.total == RESUME_TOTAL - (kill_at - 1)


def test_a_torn_last_line_of_the_log_is_recomputed(tmp_path, uninterrupted):
    space, seeds, fitness = synthetic_problem()
    with pytest.raises(Counted.Killed):
        run_search(RESUME_CFG, space, seeds, Counted(fitness, 15), tmp_path, **quiet())
    log = tmp_path / EVALUATIONS_NAME
    text = log.read_text()
    log.write_text(text[:-9])                                      # the kill cut the last line
    again = Counted(fitness)
    assert comparable(run_search(RESUME_CFG, space, seeds, again, tmp_path, resume=True, **quiet())) == uninterrupted[0]
    assert again.total == RESUME_TOTAL - 13


def test_resuming_a_finished_search_evaluates_nothing(tmp_path, uninterrupted):
    space, seeds, fitness = synthetic_problem()
    run_search(RESUME_CFG, space, seeds, fitness, tmp_path, **quiet())
    again = Counted(fitness)
    assert comparable(run_search(RESUME_CFG, space, seeds, again, tmp_path, resume=True, **quiet())) == uninterrupted[0]
    assert again.total == 0


def test_a_finished_search_extended_with_more_iterations_equals_a_longer_search(tmp_path):
    """``iterations`` does not steer the generator (test_a_short_search_is_a_prefix_of_a_longer_one), so a
    resume may ask for more: a 2-iteration search resumed to 4 is the 4-iteration search, evaluating only
    the new iterations' children."""
    space, seeds, fitness = synthetic_problem()
    longer = run_search(SearchConfig(**SMALL, iterations=4), space, seeds, fitness, **quiet())
    run_search(SearchConfig(**SMALL, iterations=2), space, seeds, fitness, tmp_path, **quiet())
    again = Counted(fitness)
    extended = run_search(SearchConfig(**SMALL, iterations=4), space, seeds, again, tmp_path, resume=True, **quiet())
    assert comparable(extended) == comparable(longer)
    assert again.total == longer.evaluations - (SMALL["population"] + 2 * (SMALL["mutations"] + SMALL["crossovers"]))


@pytest.mark.parametrize("change, named", [
    (dict(config=SearchConfig(**SMALL, iterations=4, seed=4)), "search.seed: saved 3, now 4"),
    (dict(config=SearchConfig(**SMALL, iterations=4, seed=3, mutation_prob=0.5)), "search.mutation_prob"),
    (dict(space=SearchSpace(pairs=8, lambda_max=12.0, start_tokens=(0, 1, 2, 4))), "space.lambda_max"),
    (dict(meta={"model": "other"}), "model: saved 'tiny', now 'other'"),
    (dict(seeds=("pi",)), "seeds.ntk"),
])
def test_resume_with_a_different_search_is_refused_naming_the_difference(tmp_path, change, named):
    space, seeds, fitness = synthetic_problem()
    with pytest.raises(Counted.Killed):
        run_search(RESUME_CFG, space, seeds, Counted(fitness, 12), tmp_path, meta={"model": "tiny"}, **quiet())
    if "seeds" in change:
        change = {"seeds": {name: seeds[name] for name in change["seeds"]}}
    kw = {**dict(config=RESUME_CFG, space=space, seeds=seeds, meta={"model": "tiny"}), **change}
    with pytest.raises(SearchError, match="made by a different search") as e:
        run_search(kw["config"], kw["space"], kw["seeds"], fitness, tmp_path, resume=True, meta=kw["meta"], **quiet())
    assert named in str(e.value) and "\n" not in str(e.value)


def test_starting_into_a_directory_with_a_search_is_refused_and_resume_needs_a_state(tmp_path):
    space, seeds, fitness = synthetic_problem()
    with pytest.raises(SearchError, match="no search_state.json"):
        run_search(RESUME_CFG, space, seeds, fitness, tmp_path / "empty", resume=True, **quiet())
    with pytest.raises(SearchError, match="needs out_dir"):
        run_search(RESUME_CFG, space, seeds, fitness, resume=True, **quiet())
    run_search(SearchConfig(**SMALL, iterations=1), space, seeds, fitness, tmp_path, **quiet())
    f = Counted(fitness)
    with pytest.raises(SearchError, match="holds a search already"):
        run_search(SearchConfig(**SMALL, iterations=1), space, seeds, f, tmp_path, **quiet())
    assert f.total == 0
    (tmp_path / STATE_NAME).write_text("{not json")
    with pytest.raises(SearchError, match="not a readable search state"):
        run_search(SearchConfig(**SMALL, iterations=1), space, seeds, f, tmp_path, resume=True, **quiet())


# ---- subprocesses: SIGKILL, two gloo ranks -------------------------------------------------------

def worker(job: dict, *, nproc: int = 1) -> subprocess.Popen:
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.Popen([*launcher, str(WORKER), json.dumps(job)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


KILL_CFG = dict(SMALL, iterations=6, seed=5)
KILL_TOTAL = 8 + 6 * 4


def test_sigkill_mid_iteration_then_resume_is_bit_identical_and_recomputes_nothing(tmp_path):
    out = tmp_path / "killed"
    proc = worker({"kind": "synthetic", "out_dir": str(out), "config": KILL_CFG, "sleep": 0.15})
    state_path, log = out / STATE_NAME, out / EVALUATIONS_NAME
    committed = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_path.exists():
                state = json.loads(state_path.read_text())
                if state["iteration"] >= 2 and log.exists() and \
                        len(log.read_text().splitlines()) > len(state["history"]):
                    committed = state                  # ≥ 2 iterations committed, the next one under way
                    break
            time.sleep(0.01)
        assert committed is not None and proc.poll() is None, "the search did not reach iteration 3 in time"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    at_kill = json.loads(state_path.read_text())
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    recovered = len(lines) - len(at_kill["history"])
    assert at_kill["iteration"] >= 2 and 1 <= recovered <= 4, (at_kill["iteration"], recovered)

    finish(worker({"kind": "synthetic", "out_dir": str(out), "config": KILL_CFG, "resume": True}))
    calls = json.loads((out / "calls.json").read_text())
    space, seeds, fitness = synthetic_problem()
    whole = tmp_path / "whole"
    want = comparable(run_search(SearchConfig(**KILL_CFG), space, seeds, fitness, whole, **quiet()))
    final = json.loads(state_path.read_text())
    assert _strip_seconds(final) == _strip_seconds(json.loads((whole / STATE_NAME).read_text()))
    assert final["population"] == want["population"] and final["curve"][-1]["best_key"] == want["best"]
    assert sum(calls.values()) == KILL_TOTAL - len(lines)       # the killed iteration's evaluations were read back
    assert max(calls.values()) == 1 and not set(calls) & {r["key"] for r in lines}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The decoder search (tests/longrope/_search_worker.py) under torchrun with 2 gloo ranks and in
    one process, started together (~20 s: the tests using it are marked slow)."""
    base = tmp_path_factory.mktemp("ranks")
    cfg = dict(population=8, parents=4, mutations=2, crossovers=2, iterations=3, seed=1)
    jobs = {n: {"kind": "decoder", "out_dir": str(base / f"nproc{n}"), "config": cfg} for n in (1, 2)}
    procs = {n: worker(job, nproc=n) for n, job in jobs.items()}
    for p in procs.values():
        finish(p)
    return {n: Path(job["out_dir"]) for n, job in jobs.items()}, cfg


@pytest.mark.slow
def test_two_gloo_ranks_reach_the_one_process_result(two_ranks):
    dirs, _ = two_ranks
    one = json.loads((dirs[1] / "result-rank0.json").read_text())
    assert json.loads((dirs[2] / "result-rank0.json").read_text()) == one
    assert json.loads((dirs[2] / "result-rank1.json").read_text()) == one      # every rank returns the result
    s1, s2 = (_strip_seconds(json.loads((dirs[n] / STATE_NAME).read_text())) for n in (1, 2))
    assert s1["history"] == s2["history"] and s1["population"] == s2["population"] and s1["curve"] == s2["curve"]
    # a real model: the candidates' perplexities differ
    assert len(set(s1["history"].values())) > len(s1["history"]) // 2


@pytest.mark.slow
def test_two_gloo_ranks_each_evaluate_about_half_the_candidates(two_ranks):
    dirs, cfg = two_ranks
    total = cfg["population"] + cfg["iterations"] * (cfg["mutations"] + cfg["crossovers"])
    one = json.loads((dirs[1] / "calls-rank0.json").read_text())
    r0, r1 = (json.loads((dirs[2] / f"calls-rank{r}.json").read_text()) for r in (0, 1))
    assert len(one) == total
    assert sorted(r0 + r1) == sorted(one) and not set(r0) & set(r1)             # split, none twice
    # round-robin per iteration: at most one more per iteration on rank 0
    assert abs(len(r0) - len(r1)) <= cfg["iterations"] + 1 and min(len(r0), len(r1)) >= total // 2 - cfg["iterations"]


@pytest.mark.slow
def test_two_gloo_ranks_write_the_evaluation_log_once(two_ranks):
    dirs, _ = two_ranks
    for n in (1, 2):
        keys = [json.loads(line)["key"] for line in (dirs[n] / EVALUATIONS_NAME).read_text().splitlines()]
        assert sorted(keys) == sorted(json.loads((dirs[n] / STATE_NAME).read_text())["history"])


@pytest.mark.slow
def test_two_gloo_ranks_write_one_result_record(two_ranks):
    dirs, cfg = two_ranks
    for n in (1, 2):
        rows = [json.loads(line) for line in (dirs[n] / "records.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows if r["metric"] == "search_best_ppl"] == list(range(cfg["iterations"] + 1))
        assert sum(r["metric"] == "search_result_ppl" for r in rows) == 1, n


def test_a_log_of_an_unfinished_initial_population_is_reused_only_by_the_same_search(tmp_path):
    """The settings are written before the first evaluation, so a search killed during its initial
    population cannot lend its fitnesses to a resume with other settings (another model, another p)."""
    space, seeds, fitness = synthetic_problem()
    with pytest.raises(Counted.Killed):
        run_search(RESUME_CFG, space, seeds, Counted(fitness, 5), tmp_path, meta={"model": "A"}, **quiet())
    assert json.loads((tmp_path / STATE_NAME).read_text())["iteration"] == -1
    other = SearchConfig(**{**dataclasses.asdict(RESUME_CFG), "mutation_prob": 0.5})
    with pytest.raises(SearchError, match="made by a different search"):
        run_search(other, space, seeds, fitness, tmp_path, resume=True, meta={"model": "A"}, **quiet())
    with pytest.raises(SearchError, match="model: saved 'A', now 'B'"):
        run_search(RESUME_CFG, space, seeds, fitness, tmp_path, resume=True, meta={"model": "B"}, **quiet())
