"""Milliseconds per training step of the default bench's models, variant against variant, same run.

One step is what ``hopekit.train`` does per step: forward with the loss, backward, gradient clipping,
AdamW (``hopekit.train.build_optimizer``), zero_grad. The shape is the default bench's (the preset's
model, ``train_len``, ``batch_size``, ``grad_clip``), for each of its methods, on random byte tokens.

Variants run in separate worker processes that stay alive for the whole run: ``eager`` and
``compiled`` (``Decoder.compile_for_training``) of this checkout, and ``REF`` for every ``--against``
git revision (e.g. the commit before a speed-up; eager, its own code extracted with ``git archive``).
The parent interleaves them — one round = ``--steps`` timed steps of every (method, variant) in turn —
so machine noise hits all variants alike; it reports the median ms/step over all rounds, the spread
(25th-75th percentile) and each variant's speed-up over the first one. The first two steps of every
worker are timed apart (``first steps``: for ``compiled`` that is the compile time, warm or cold
inductor cache, which the run reports) and never counted. ``--lanes N`` starts N workers per variant
that train the same method at the same moment (as N bench runs side by side would), one thread each
by default, and reports throughput: each round's wall time divided by all their steps. Run:

    python benchmarks/bench_train_step.py --against 8c8c1f0           # all methods, eager vs compiled vs 8c8c1f0
    python benchmarks/bench_train_step.py --methods rope,alibi --variants eager --rounds 9
    python benchmarks/bench_train_step.py --threads 1                   # one intra-op thread per worker
    python benchmarks/bench_train_step.py --lanes 2                     # two 1-thread runs side by side
    python benchmarks/bench_train_step.py --threads 1 --clock cpu       # CPU seconds: on a shared machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# --- worker (one per variant, in its own process) ------------------------------------------------

def worker(variant: str, threads: int, preset: str, clock_name: str = "wall") -> None:
    import torch

    from hopekit import train as train_lib
    from hopekit.config import ExperimentConfig, load_yaml, preset_path
    from hopekit.model import Decoder

    if threads:
        torch.set_num_threads(threads)
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    raw = load_yaml(preset_path(preset))
    models: dict[str, tuple] = {}

    def setup(method: str):
        pe = raw["methods"][method]
        cfg = ExperimentConfig.from_dict({**raw["experiment"], "pe": pe})
        torch.manual_seed(0)
        model = Decoder(cfg.model_config(vocab_size=257)).train()
        if variant == "compiled":
            model.compile_for_training()
        opt = train_lib.build_optimizer(model, cfg.train)
        g = torch.Generator().manual_seed(0)
        shape = (cfg.train.batch_size, cfg.train.train_len)
        x, y = torch.randint(0, 256, shape, generator=g), torch.randint(0, 256, shape, generator=g)

        def step():
            _, loss = model(x, targets=y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = time.perf_counter()  # wall: compiling happens partly in inductor's worker processes
        step()
        step()
        return step, time.perf_counter() - t

    for line in sys.stdin:
        req = json.loads(line)
        method = req["method"]
        first = None
        if method not in models:
            models[method] = setup(method)
            first = models[method][1]
        step = models[method][0]
        times = []
        for _ in range(req["steps"]):
            t = clock()
            step()
            times.append(clock() - t)
        print(json.dumps({"times": times, "first": first, "threads": torch.get_num_threads()}), flush=True)


# --- parent ----------------------------------------------------------------------------------------

def extract(ref: str, into: Path) -> Path:
    """The ``src`` tree of git revision ``ref`` under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="bench_default", help="bench preset whose experiment and methods to time")
    p.add_argument("--methods", default="", help="comma-separated subset of the preset's methods (default: all)")
    p.add_argument("--variants", default="eager,compiled", help="of this checkout: eager, compiled")
    p.add_argument("--against", action="append", default=[], help="git revision to time as well (eager); repeatable")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="timed steps per (method, variant) per round")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per worker (0: torch's default with one lane, 1 with more)")
    p.add_argument("--lanes", type=int, default=1,
                   help="workers per variant training side by side (the same method at once); with more than "
                        "one, a step's time is the round's wall time / (lanes x steps): throughput")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: perf_counter; cpu: each worker's CPU seconds (robust to waiting for a busy core; "
                        "use with --threads 1 and one lane)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.clock == "cpu" and args.lanes > 1:
        raise SystemExit("--clock cpu: times one worker's CPU seconds; with --lanes > 1 use --clock wall")
    if args.worker:
        worker(args.worker, args.threads, args.preset, args.clock)
        return

    sys.path.insert(0, str(REPO / "src"))
    from hopekit.config import load_yaml, preset_path

    all_methods = list(load_yaml(preset_path(args.preset))["methods"])
    methods = [m for m in args.methods.split(",") if m] or all_methods
    unknown = sorted(set(methods) - set(all_methods))
    if unknown:
        raise SystemExit(f"--methods: {unknown} not in preset {args.preset} ({', '.join(all_methods)})")
    threads = args.threads or (1 if args.lanes > 1 else 0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    try:
        sources = {v: REPO / "src" for v in args.variants.split(",") if v}
        for ref in args.against:
            sources[ref] = extract(ref, tmp / ref.replace("/", "_"))
        workers: dict[str, list[subprocess.Popen]] = {}
        for name, src in sources.items():
            env = {**os.environ, "PYTHONPATH": str(src)}
            mode = "compiled" if name == "compiled" else "eager"
            workers[name] = [subprocess.Popen(
                [sys.executable, __file__, "--worker", mode, "--threads", str(threads), "--preset", args.preset,
                 "--clock", args.clock],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp) for _ in range(args.lanes)]
        times = {(m, v): [] for m in methods for v in workers}
        first: dict[tuple[str, str], float] = {}
        seen_threads = set()
        for r in range(args.rounds):
            for m in methods:
                for v, lanes in workers.items():
                    t = time.perf_counter()
                    for w in lanes:  # all lanes of a variant run the same method at the same time
                        w.stdin.write(json.dumps({"method": m, "steps": args.steps}) + "\n")
                        w.stdin.flush()
                    replies = [json.loads(w.stdout.readline()) for w in lanes]
                    wall = time.perf_counter() - t
                    if args.lanes == 1:
                        times[m, v] += replies[0]["times"]
                    else:  # throughput: this round's wall time per step of all lanes together
                        times[m, v].append(wall / (args.lanes * args.steps))
                    seen_threads.update(reply["threads"] for reply in replies)
                    if replies[0]["first"] is not None:
                        first[m, v] = max(reply["first"] for reply in replies)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        for lanes in workers.values():
            for w in lanes:
                w.stdin.close()
                w.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    names = list(workers)
    what = "ms/step" if args.lanes == 1 else f"ms/step of {args.lanes} lanes together (round wall / steps)"
    print(f"{what}, median of {args.rounds} rounds x {args.steps} steps (p25-p75); threads {sorted(seen_threads)}; "
          f"speed-up = {names[0]} / variant")
    head = f"{'method':<16}" + "".join(f"{v:>26}" for v in names) + "".join(f"{'x ' + v:>14}" for v in names[1:])
    print(head)
    summary = {}
    for m in methods:
        med = {v: statistics.median(times[m, v]) * 1e3 for v in names}
        q = {v: statistics.quantiles(times[m, v], n=4) for v in names}
        cells = "".join(f"{med[v]:>9.1f} ({q[v][0] * 1e3:6.1f}-{q[v][2] * 1e3:6.1f})" for v in names)
        ratios = "".join(f"{med[names[0]] / med[v]:>14.2f}" for v in names[1:])
        print(f"{m:<16}{cells}{ratios}")
        summary[m] = med
    total = {v: sum(summary[m][v] for m in methods) for v in names}
    print(f"{'sum':<16}" + "".join(f"{total[v]:>26.1f}" for v in names)
          + "".join(f"{total[names[0]] / total[v]:>14.2f}" for v in names[1:]))
    print("first two steps (s; compile time for 'compiled'): " + ", ".join(
        f"{m}/{v} {first[m, v]:.1f}" for m in methods for v in names if (m, v) in first))
    print(json.dumps({"benchmark": "bench_train_step", "ms_per_step": summary, "first_steps_s":
                      {f"{m}/{v}": s for (m, v), s in first.items()}, **{k: v for k, v in vars(args).items()
                                                                          if k != "worker"}}))


if __name__ == "__main__":
    main()
