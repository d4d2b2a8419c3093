"""LongRoPE's evolutionary search (Ding et al. 2024, Algorithm 1 as the public code runs it).

::

    space = SearchSpace(pairs=16, lambda_max=1.25 * 8)
    result = run_search(SearchConfig(population=64, parents=32, mutations=16, crossovers=16, iterations=40),
                        space, seeds={"pi": space.snap([8.0] * 16)}, fitness=my_fitness, out_dir="search/")
    result.best, result.best_fitness, result.curve

**The loop.** The population starts as the seeds plus mutants of randomly chosen seeds, ``population``
in all, each evaluated. Every iteration keeps the ``parents`` best (elitist: the best candidate ever
seen is never dropped, so the final best is never worse than the best seed), adds ``mutations`` mutants
of random parents and ``crossovers`` crossovers of two distinct parents (the better one first; after
``crossover_retries`` failed draws, a mutant of it instead), and evaluates the new ones:
``parents + mutations + crossovers`` must equal ``population``, so the population keeps its size.
Candidates are ranked by fitness (lower is better), ties by their key. A child is accepted only if it is
monotone, in bounds and **new**: never evaluated before (the history) and not already made this
iteration, so no candidate is evaluated twice. With ``patience`` set, the search stops early when the
best improved by less than ``min_gain`` over the last ``patience`` iterations (the code's 20 and 0.001).

**Several processes.** Under ``torchrun`` (``torch.distributed`` initialised) every rank runs the same
seeded generator, so every rank makes the same candidates; the new candidates of an iteration are dealt
out round-robin, each rank evaluates its share, and the fitnesses are gathered on every rank. With a
deterministic fitness the result equals a one-process run. Only rank 0 writes files.

**Files** (``out_dir``, rank 0): ``search_state.json`` (rewritten atomically after every iteration:
the configuration, the iteration, the population with fitnesses, the history, the generator state and
the per-iteration curve) and ``evaluations.jsonl`` (one line per evaluation, appended as each
finishes). ``resume=True`` restarts from the state file; evaluations of an iteration that was killed
half-way are read back from ``evaluations.jsonl`` instead of being recomputed The generator state and the history are
restored exactly, so a resumed search gives the same result, bit for bit, as one that was never
interrupted. The state is first written before any evaluation (iteration −1: the settings and the
generator's initial state), so even a log of an unfinished initial population is reused only by a search
with the same settings. A resume may ask for more ``iterations`` (the number of iterations never steers the
generator: a 3-iteration search is the first rows of a 6-iteration one); every other setting must match.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .genome import Candidate, SearchSpace, crossover, mutate

__all__ = ["SearchConfig", "SearchResult", "run_search", "STATE_NAME", "EVALUATIONS_NAME", "SearchError"]

STATE_NAME = "search_state.json"
EVALUATIONS_NAME = "evaluations.jsonl"
_FORMAT = 1
#: draws per child before the search space is declared exhausted
_MAX_DRAWS = 10_000


class SearchError(ValueError):
    """A search that cannot start or continue (bad settings, a state file of another search)."""


def _check_int(obj: Any, name: str, low: int) -> int:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{type(obj).__name__}.{name}={value!r}: expected an int >= {low}")
    return value


def _check_prob(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{type(obj).__name__}.{name}={value!r}: expected a probability in (0, 1]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """The evolution's settings; the defaults are the paper's (§4.1) and the public code's."""

    population: int = 64
    parents: int = 32
    mutations: int = 16
    crossovers: int = 16
    iterations: int = 40
    mutation_prob: float = 0.3
    crossover_prob: float = 0.3
    crossover_retries: int = 20
    seed: int = 0
    patience: int | None = None
    min_gain: float = 0.001

    def __post_init__(self) -> None:
        for name, low in (("population", 2), ("parents", 1), ("mutations", 0), ("crossovers", 0),
                          ("iterations", 0), ("crossover_retries", 1), ("seed", 0)):
            _check_int(self, name, low)
        _check_prob(self, "mutation_prob")
        _check_prob(self, "crossover_prob")
        if self.parents + self.mutations + self.crossovers != self.population:
            raise ValueError(f"SearchConfig.population={self.population}: must equal parents + mutations + crossovers "
                             f"= {self.parents} + {self.mutations} + {self.crossovers}, so the population keeps its size")
        if self.mutations + self.crossovers < 1:
            raise ValueError(f"SearchConfig.parents={self.parents}: equals the population, so no child would be made; "
                             f"keep fewer parents than population={self.population}")
        if self.crossovers and self.parents < 2:
            raise ValueError(f"SearchConfig.parents={self.parents}: crossovers need at least 2 parents")
        if self.patience is not None:
            _check_int(self, "patience", 1)
        if not isinstance(self.min_gain, (int, float)) or not self.min_gain >= 0:
            raise ValueError(f"SearchConfig.min_gain={self.min_gain!r}: expected a number >= 0")


@dataclasses.dataclass
class SearchResult:
    best: Candidate
    best_fitness: float
    population: list[tuple[Candidate, float]]
    #: one row per iteration (0 = the initial population): iteration, best, best_key, evaluations, seconds
    curve: list[dict[str, Any]]
    evaluations: int
    #: every candidate evaluated: key -> fitness
    history: dict[str, float] = dataclasses.field(default_factory=dict)
    stopped_early: bool = False


# ---- distribution -------------------------------------------------------------------------------

def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(local: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return local
    import torch.distributed as dist

    parts: list[dict[str, float] | None] = [None] * world
    dist.all_gather_object(parts, local)
    merged: dict[str, float] = {}
    for part in parts:
        merged.update(part or {})
    return merged


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.inf


# ---- the search ---------------------------------------------------------------------------------

class _Search:
    def __init__(self, config: SearchConfig, space: SearchSpace, seeds: Mapping[str, Candidate],
                 fitness: Callable[[Candidate], float], out_dir: Path | None, *, meta: Mapping[str, Any],
                 progress: bool, log: Callable[[str], None], on_iteration: Callable[[dict[str, Any]], None] | None):
        self.config, self.space, self.fitness, self.out_dir = config, space, fitness, out_dir
        self.seeds = dict(seeds)
        self.meta = dict(meta)
        self.log, self.progress, self.on_iteration = log, progress, on_iteration
        self.rank, self.world = _dist()
        self.rng = random.Random(config.seed)
        self.history: dict[str, float] = {}        # every candidate evaluated and committed
        self.cache: dict[str, float] = {}          # evaluations read back from a killed iteration
        self.population: list[tuple[Candidate, float]] = []
        self.curve: list[dict[str, Any]] = []
        self.iteration = -1
        self.seconds = 0.0

    # -- state ------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"search": dataclasses.asdict(self.config),
                "space": {"pairs": self.space.pairs, "lambda_max": self.space.lambda_max,
                          "start_tokens": list(self.space.start_tokens)},
                "seeds": {name: c.key for name, c in self.seeds.items()}, **self.meta}

    def _write_state(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        state = {"format": _FORMAT, "config": self.describe(), "iteration": self.iteration,
                 "population": [[c.key, f] for c, f in self.population], "history": self.history,
                 "rng": _jsonable_state(self.rng.getstate()), "curve": self.curve, "seconds": self.seconds}
        path = self.out_dir / STATE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)

    def load(self) -> None:
        path = self.out_dir / STATE_NAME
        if not path.exists():
            raise SearchError(f"--resume: no {STATE_NAME} in {self.out_dir}; start the search without --resume")
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SearchError(f"{path}: not a readable search state ({e})") from None
        if state.get("format") != _FORMAT:
            raise SearchError(f"{path}: format {state.get('format')!r}, this hopekit writes {_FORMAT}")
        saved, now = state["config"], json.loads(json.dumps(self.describe()))
        for cfg in (saved, now):            # more iterations may be asked for: they do not steer the generator
            cfg.get("search", {}).pop("iterations", None)
        if saved != now:
            from ..config import config_differences

            diff = config_differences(saved, now)
            raise SearchError(f"{path}: made by a different search ({'; '.join(diff[:4])}); use another output "
                              f"directory or the same settings")
        self.iteration = state["iteration"]
        self.population = [(Candidate.from_key(k), _finite(f)) for k, f in state["population"]]
        self.history = {k: _finite(f) for k, f in state["history"].items()}
        self.rng.setstate(_rng_state(state["rng"]))
        self.curve = state["curve"]
        self.seconds = state["seconds"]
        self._read_evaluations()

    def _read_evaluations(self) -> None:
        evaluations = self.out_dir / EVALUATIONS_NAME
        if evaluations.exists():  # (absent when a search was killed before its first evaluation)
            for line in evaluations.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue                                    # a line cut by the kill
                if row["key"] not in self.history:
                    self.cache[row["key"]] = _finite(row["fitness"])

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, candidates: Sequence[Candidate], label: str) -> list[float]:
        todo = [c for c in candidates if c.key not in self.cache]
        mine = todo[self.rank::self.world]
        local: dict[str, float] = {}
        bar = None
        if self.progress and self.rank == 0 and mine:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), desc=label, unit="cand", leave=False, dynamic_ncols=True)
        for c in mine:
            local[c.key] = _finite(self.fitness(c))
            if self.out_dir is not None and self.world == 1:
                self._append_evaluation(c.key, local[c.key])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        results = _gather(local, self.world)
        if self.out_dir is not None and self.world > 1 and self.rank == 0:
            for c in todo:
                self._append_evaluation(c.key, results[c.key])
        out = []
        for c in candidates:
            value = self.cache.pop(c.key) if c.key in self.cache else results[c.key]
            self.history[c.key] = value
            out.append(value)
        return out

    def _append_evaluation(self, key: str, value: float) -> None:
        with open(self.out_dir / EVALUATIONS_NAME, "a") as f:
            f.write(json.dumps({"key": key, "fitness": value}) + "\n")

    # -- operators --------------------------------------------------------------------------------
    def _is_new(self, c: Candidate, made: set[str]) -> bool:
        return self.space.contains(c) and c.key not in self.history and c.key not in made

    def _mutant(self, parent: Candidate, made: set[str]) -> Candidate:
        for _ in range(_MAX_DRAWS):
            child = mutate(parent, self.space, self.rng, self.config.mutation_prob)
            if self._is_new(child, made):
                return child
        raise SearchError(f"no new candidate after {_MAX_DRAWS} mutations of {parent.key}: the search space "
                          f"(pairs {self.space.pairs}, lambda_max {self.space.lambda_max}) is exhausted; widen it "
                          f"or lower the population")

    def _crossover(self, a: tuple[Candidate, float], b: tuple[Candidate, float], made: set[str]) -> Candidate:
        better, other = (a, b) if (a[1], a[0].key) <= (b[1], b[0].key) else (b, a)
        for _ in range(self.config.crossover_retries):
            child = crossover(better[0], other[0], self.rng, self.config.crossover_prob)
            if self._is_new(child, made):
                return child
        return self._mutant(better[0], made)

    @staticmethod
    def _ranked(pop: list[tuple[Candidate, float]]) -> list[tuple[Candidate, float]]:
        return sorted(pop, key=lambda cf: (cf[1], cf[0].key))

    # -- loop -------------------------------------------------------------------------------------
    def _initial(self) -> list[Candidate]:
        made: set[str] = set()
        out: list[Candidate] = []
        for c in self.seeds.values():
            if not self.space.contains(c):
                raise SearchError(f"seed {c.key}: outside the search space (monotone, in [1, {self.space.lambda_max}], "
                                  f"start_tokens in {list(self.space.start_tokens)})")
            if c.key not in made:
                made.add(c.key)
                out.append(c)
        if len(out) > self.config.population:
            raise SearchError(f"{len(out)} distinct seeds: more than SearchConfig.population={self.config.population}")
        seeds = list(out)
        while len(out) < self.config.population:
            child = self._mutant(self.rng.choice(seeds), made)
            made.add(child.key)
            out.append(child)
        return out

    def _children(self) -> list[Candidate]:
        cfg = self.config
        parents = self.population[:cfg.parents]
        made: set[str] = set()
        children: list[Candidate] = []
        for _ in range(cfg.mutations):
            child = self._mutant(self.rng.choice(parents)[0], made)
            made.add(child.key)
            children.append(child)
        for _ in range(cfg.crossovers):
            i, j = self.rng.sample(range(len(parents)), 2)
            child = self._crossover(parents[i], parents[j], made)
            made.add(child.key)
            children.append(child)
        return children

    def _commit(self, started: float) -> None:
        self.seconds += time.perf_counter() - started
        best, value = self.population[0]
        row = {"iteration": self.iteration, "best": value, "best_key": best.key,
               "evaluations": len(self.history), "seconds": round(self.seconds, 3)}
        self.curve.append(row)
        if self.on_iteration is not None and self.rank == 0:
            self.on_iteration(row)      # before the state: a kill in between redoes the iteration, losing nothing
        self._write_state()

    def _stalled(self) -> bool:
        p = self.config.patience
        if p is None or len(self.curve) <= p:
            return False
        return self.curve[-1 - p]["best"] - self.curve[-1]["best"] < self.config.min_gain

    def run(self) -> SearchResult:
        cfg = self.config
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iterations + 1, initial=self.iteration + 1, desc="longrope search",
                       unit="iter", dynamic_ncols=True)
            if self.curve:
                bar.set_postfix(best_ppl=f"{self.curve[-1]['best']:.4g}")
        stopped = False
        try:
            if self.iteration < 0:
                started = time.perf_counter()
                pop = self._initial()
                self.population = self._ranked(list(zip(pop, self.evaluate(pop, "initial population"))))
                self.iteration = 0
                self._commit(started)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(best_ppl=f"{self.population[0][1]:.4g}")
            while self.iteration < cfg.iterations:
                if self._stalled():
                    stopped = True
                    self.log(f"stopping early: the best improved by < {cfg.min_gain} over {cfg.patience} iterations")
                    break
                started = time.perf_counter()
                children = self._children()
                scored = list(zip(children, self.evaluate(children, f"iteration {self.iteration + 1}")))
                self.population = self._ranked(self.population[:cfg.parents] + scored)
                self.iteration += 1
                self._commit(started)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(best_ppl=f"{self.population[0][1]:.4g}")
        finally:
            if bar is not None:
                bar.close()
        best, value = self.population[0]
        return SearchResult(best=best, best_fitness=value, population=list(self.population), curve=list(self.curve),
                            evaluations=len(self.history), history=dict(self.history), stopped_early=stopped)


def _jsonable_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state(saved: list) -> tuple:
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def run_search(config: SearchConfig, space: SearchSpace, seeds: Mapping[str, Candidate],
               fitness: Callable[[Candidate], float], out_dir: str | Path | None = None, *, resume: bool = False,
               meta: Mapping[str, Any] | None = None, progress: bool = True,
               log: Callable[[str], None] = print,
               on_iteration: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Run (or with ``resume`` continue) a search; see the module docstring. ``fitness(candidate)`` is
    the value to minimise (perplexity); a non-finite value ranks last. ``meta``: JSON-able facts the
    state file records and a resume must match (the model, the data, the target). ``on_iteration``
    (rank 0) receives each iteration's curve row as it is committed. Without ``out_dir`` nothing is
    written and ``resume`` is unavailable."""
    out = None if out_dir is None else Path(out_dir)
    search = _Search(config, space, seeds, fitness, out, meta=meta or {}, progress=progress, log=log,
                     on_iteration=on_iteration)
    if out is not None:
        if resume:
            search.load()
        elif search.rank == 0:
            if (out / STATE_NAME).exists() or (out / EVALUATIONS_NAME).exists():
                raise SearchError(f"{out}: holds a search already; pass --resume to continue it, or choose "
                                  f"another directory")
            out.mkdir(parents=True, exist_ok=True)
            search._write_state()   # iteration -1: the settings, so that a resume of a search killed during its
            #                         initial population is checked against them before its log is reused
    elif resume:
        raise SearchError("resume=True needs out_dir, where the state file is")
    return search.run()
