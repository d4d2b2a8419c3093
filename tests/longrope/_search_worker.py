"""Search processes for tests/longrope/test_longrope_search.py: run as a script, alone or under torchrun.

    python tests/longrope/_search_worker.py JOB_JSON

``JOB_JSON``: ``{"kind": "synthetic" | "decoder", "out_dir", "config": {SearchConfig fields}, "resume": false,
"sleep": 0.0}``.

* ``synthetic`` runs :func:`hopekit.longrope.run_search` on :func:`synthetic_problem` (a deterministic
  distance to a hidden target; ``sleep`` seconds per evaluation, so a test can kill the process
  mid-iteration) and writes ``calls.json`` (this process's fitness calls by key) when it finishes.
* ``decoder`` runs :func:`hopekit.longrope.run.search_model` on :func:`tiny_decoder` (a random
  2-layer reference decoder, fixed seed) with :class:`~hopekit.longrope.fitness.PerplexityFitness` on
  :func:`synthetic_documents`, and writes ``calls-rank<r>.json`` (the candidates this rank scored) and
  ``result-rank<r>.json`` (best, population, curve without seconds). Under torchrun (WORLD_SIZE > 1)
  the gloo process group is initialised here.

It also holds what the in-process tests share with the subprocesses: :func:`synthetic_problem`,
:func:`tiny_decoder`, :func:`synthetic_documents`, :func:`comparable`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import time
from pathlib import Path
from typing import Any

#: the synthetic problem's search space: 8 pairs in [1, 10], n̂ in a few choices
PAIRS, LAMBDA_MAX, START_TOKENS = 8, 10.0, (0, 1, 2, 4)

#: decoder problem: vocabulary, width, training length, extension
VOCAB, D_MODEL, TRAIN_LEN, FACTOR = 48, 32, 16, 2.0


def synthetic_problem(pairs: int = PAIRS, lambda_max: float = LAMBDA_MAX, start_tokens=START_TOKENS, target_seed=11):
    """``(space, seeds, fitness)``: the PI/NTK/YaRN/linear-YaRN seeds at s = 8 and a deterministic
    fitness, 1 + squared distance (in λ units) to a hidden monotone target + 0.01·|n̂ − n̂*|."""
    from hopekit.longrope import SEED_METHODS, SearchSpace, seed_factors

    space = SearchSpace(pairs=pairs, lambda_max=lambda_max, start_tokens=tuple(start_tokens))
    rng = random.Random(target_seed)
    target = sorted(rng.randint(100, space.high) for _ in range(pairs))
    n_star = rng.choice(space.start_tokens)
    seeds = {m: space.snap(seed_factors(m, factor=8.0, pairs=pairs, base=1e4, train_len=64)) for m in SEED_METHODS}

    def fitness(c) -> float:
        return 1.0 + sum((v - t) ** 2 for v, t in zip(c.rescale, target)) / 1e4 + 0.01 * abs(c.start_tokens - n_star)

    return space, seeds, fitness


def comparable(result) -> dict[str, Any]:
    """What two runs of one search must agree on: best, population, curve without ``seconds``."""
    return {"best": result.best.key, "best_fitness": result.best_fitness,
            "population": [[c.key, f] for c, f in result.population],
            "curve": [{k: v for k, v in row.items() if k != "seconds"} for row in result.curve],
            "evaluations": result.evaluations}


def tiny_decoder(seed: int = 0):
    """A random 2-layer reference decoder, d_model 32, 2 heads of 16 (8 rotary pairs), RoPE."""
    import torch

    from hopekit.model import Decoder, ModelConfig

    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=2, n_heads=2, pe={"kind": "rope"})).eval()


def synthetic_documents(n: int = 3, length: int = 80, seed: int = 3):
    """``n`` random token documents of ``length`` (ids 1..VOCAB−1; 0 is left for a BOS)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (length,), generator=g) for _ in range(n)]


def _synthetic(job: dict, out: Path) -> None:
    from hopekit.longrope import SearchConfig, run_search

    space, seeds, fitness = synthetic_problem()
    calls: collections.Counter = collections.Counter()

    def slow(c):
        calls[c.key] += 1
        if job.get("sleep"):
            time.sleep(job["sleep"])
        return fitness(c)

    run_search(SearchConfig(**job["config"]), space, seeds, slow, out, resume=job.get("resume", False),
               progress=False, log=lambda s: None)
    (out / "calls.json").write_text(json.dumps(calls))


def _decoder(job: dict, out: Path) -> None:
    from hopekit import pe
    from hopekit.eval.extensions import with_pe
    from hopekit.longrope import SearchConfig
    from hopekit.longrope.run import search_model

    rank = int(os.environ.get("RANK", "0"))
    model = tiny_decoder()
    calls: list[str] = []

    def apply(params):
        calls.append(json.dumps(params.long_rescale) + f"/{params.start_tokens}")
        return with_pe(model, pe.to_config(params))

    output = search_model(apply, model.config.pe, synthetic_documents(), head_dim=model.config.head_dim,
                          train_len=TRAIN_LEN, factor=FACTOR, out_dir=out, config=SearchConfig(**job["config"]),
                          fitness_docs=2, bos=0, start_tokens=(0, 2), progress=False, log=lambda s: None,
                          resume=job.get("resume", False))
    (out / f"calls-rank{rank}.json").write_text(json.dumps(calls))
    (out / f"result-rank{rank}.json").write_text(json.dumps(comparable(output.result)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job_json")
    args = parser.parse_args()
    job = json.loads(args.job_json)
    import torch

    torch.set_num_threads(1)
    out = Path(job["out_dir"])
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        torch.distributed.init_process_group("gloo")
    try:
        {"synthetic": _synthetic, "decoder": _decoder}[job["kind"]](job, out)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
