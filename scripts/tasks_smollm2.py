#!/usr/bin/env python
"""Pass-key retrieval on SmolLM2-135M-Instruct at 2k–16k tokens with its own rope and two eval-time
extensions, written to ``docs/results/tasks/smollm2/`` (records.jsonl, report.md, figures).

    OMP_NUM_THREADS=1 nice -n 10 python scripts/tasks_smollm2.py            # the measurement (resumable)
    OMP_NUM_THREADS=1 python scripts/tasks_smollm2.py --time                 # time one 2048 and one 8192 instance

What it measures (``hopekit.eval.pretrained.evaluate_pretrained_tasks``; each entry of ``PLAN`` is the
same as ``hopekit eval --hf smollm2 [--pe KIND pe.factor=2] --task passkey --lengths 2048,4096,8192
eval.task_depths=[0,0.25,0.5,0.75,1] eval.task_instances=2 --records docs/results/tasks/smollm2/records.jsonl``):

* the ``passkey`` task in the standard format (Landmark Attention / YaRN / LongRoPE: instruction,
  filler, "The pass key is N. Remember it. N is the pass key.", filler, "What is the pass key? The pass
  key is"; a 5-digit key), with the format's own filler (``filler="auto"``: "The grass is green. The
  sky is blue. ..." repeated), SmolLM2's own tokenizer, no BOS, every instance exactly ``eval_len``
  tokens;
* variants: the model's own rope as transformers runs it (``rope``), ``yarn`` with factor 2 (targets
  2 × 8192 = 16384) and ``dynamic_ntk`` with factor 2 (HF's ``dynamic``: rope's spectrum up to 8192,
  NTK-scaled past it), both with SmolLM2's base and window;
* the grid (``PLAN``), cut to fit ~50 min on one CPU thread (one 16k forward takes ~3 min there): at
  2048, 4096 and 8192 (the model's window), depths 0, 0.25, 0.5, 0.75, 1 and 2 instances per cell
  (seeds 0, 1: the same instances for every variant) for ``rope`` and ``yarn``; ``dynamic_ntk`` only at
  2048 below the window (a forward of ℓ ≤ 8192 positions runs rope's spectrum, so its 4096 and 8192
  cells would repeat rope's; 2048 checks that hopekit's dynamic NTK equals transformers' rope there);
  at 16384 every variant at depths 0.5, 0 and 1 with one instance (seed 0) per cell;
* likelihood scoring (one forward; right when every answer token is the argmax: greedy decoding's
  verdict), float32, one intra-op thread;
* a check that the teacher-forced verdict is greedy decoding's on the real model: the 2048 cells of
  ``rope`` again under generation scoring (KV-cache greedy decoding), written to
  ``generation_check.jsonl`` (a separate file: the report's tables key a cell by method, length and
  depth, not by scoring), compared instance by instance.

Cells already in the records are skipped, so the script can be killed and rerun.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hopekit.config import EvalConfig  # noqa: E402
from hopekit.eval.pretrained import HFLogits, evaluate_pretrained_tasks  # noqa: E402
from hopekit.eval.records import read_records  # noqa: E402
from hopekit.eval.report import write_report  # noqa: E402
from hopekit.eval.tasks import score_likelihood, task_instances  # noqa: E402
from hopekit.integrations import hf  # noqa: E402

OUT = ROOT / "docs" / "results" / "tasks" / "smollm2"
LENGTHS = (2048, 4096, 8192, 16384)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROPE, YARN, DYNAMIC = None, {"kind": "yarn", "factor": 2}, {"kind": "dynamic_ntk", "factor": 2}
VARIANTS = (ROPE, YARN, DYNAMIC)
#: (variant, lengths, depths, instances per cell), in the order measured
PLAN = ((ROPE, (2048, 4096, 8192), DEPTHS, 2), (YARN, (2048, 4096, 8192), DEPTHS, 2), (DYNAMIC, (2048,), DEPTHS, 2),
        *((pe, (16384,), (depth,), 1) for depth in (0.5, 0.0, 1.0) for pe in VARIANTS))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def variant(lm: hf.PretrainedLM) -> hf.PretrainedLM:
    """A copy of ``lm`` to patch (evaluate_pretrained_tasks patches in place)."""
    return hf.PretrainedLM(copy.deepcopy(lm.model), lm.tokenizer, lm.name, lm.source, lm.hf_tokenizer)


def time_instances(lm: hf.PretrainedLM) -> None:
    """Seconds of one likelihood-scored passkey instance at 2048 and 8192 tokens, and the grid's estimate."""
    seconds = {}
    for L in (2048, 8192):
        insts = task_instances("passkey", lm.tokenizer, length=L, depth=0.5, instances=1, corpus="shakespeare",
                               split="test", style="standard")
        t0 = time.perf_counter()
        score_likelihood(HFLogits(lm.model), insts)
        seconds[L] = time.perf_counter() - t0
        log(f"one instance at {L}: {seconds[L]:.1f}s")
    # cost = a·L + b·L²: solved from the two points, extrapolated to 4096 and 16384
    b = (seconds[8192] / 8192 - seconds[2048] / 2048) / (8192 - 2048)
    a = seconds[2048] / 2048 - b * 2048
    per = {L: a * L + b * L * L for L in LENGTHS}
    full = len(DEPTHS) * 2 * len(VARIANTS) * sum(per.values())
    plan = sum(len(depths) * n * per[L] for _, lengths, depths, n in PLAN for L in lengths)
    log("estimate per instance: " + ", ".join(f"{L}: {s:.0f}s" for L, s in per.items())
        + f"; the full grid (every variant, length and depth, 2 instances): {full / 60:.0f} min; PLAN: {plan / 60:.0f} min")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT), help="results folder (records.jsonl, report.md)")
    parser.add_argument("--time", action="store_true", help="time one instance at 2048 and 8192 and stop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    t0 = time.perf_counter()
    base = hf.load_pretrained("smollm2")
    log(f"loaded smollm2 in {time.perf_counter() - t0:.0f}s; tokenizer {base.tokenizer.name}, "
        f"window {base.model.config.max_position_embeddings}")
    if args.time:
        time_instances(base)
        return 0
    for pe, lengths, depths, n in PLAN:
        t1 = time.perf_counter()
        ev = EvalConfig(tasks=("passkey",), task_depths=depths, task_instances=n, batch_size=1)
        evaluate_pretrained_tasks(variant(base), out / "records.jsonl", lengths=lengths, pe=pe, eval_config=ev,
                                  style="standard", progress=False, log=log)
        log(f"{pe or 'rope (own)'} at {lengths}, depths {depths}, {n} instance(s): {time.perf_counter() - t1:.0f}s")
    t1 = time.perf_counter()
    greedy = evaluate_pretrained_tasks(variant(base), out / "generation_check.jsonl", lengths=[LENGTHS[0]],
                                       eval_config=EvalConfig(tasks=("passkey",), task_depths=DEPTHS,
                                                              task_instances=2, task_scoring="generation",
                                                              batch_size=1),
                                       style="standard", progress=False, log=log)
    log(f"generation check: {time.perf_counter() - t1:.0f}s")
    forced = {r["depth"]: r["per_instance"] for r in read_records(out / "records.jsonl")
              if r["metric"] == "accuracy" and r["method"] == "rope" and r["eval_len"] == LENGTHS[0]}
    decoded = {r["depth"]: r["per_instance"] for r in greedy if r["metric"] == "accuracy"}
    agree = all(forced[d] == decoded[d] for d in DEPTHS)
    log(f"teacher-forced vs greedy verdicts at {LENGTHS[0]} (rope): {'agree' if agree else 'DISAGREE'} "
        f"(forced {forced}, greedy {decoded})")
    report, _ = write_report(out)
    log(f"wrote {report}; {(time.perf_counter() - t0) / 60:.1f} min in all")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
