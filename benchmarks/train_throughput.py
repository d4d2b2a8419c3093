"""Training throughput: hopekit's reference decoder vs transformers' LlamaForCausalLM, same shape.

Both models get the same width, depth, heads, SwiGLU width, vocabulary, tied embeddings, RoPE (base
10 000, half-split), SDPA attention and the **same weights** (ours copied into theirs through
``hopekit.integrations.hf.export.DECODER_TO_LLAMA``; the first step's losses are checked to agree). One
training step is the same for both: forward, float32 cross-entropy of the logits against the targets,
backward, gradient clipping to norm 1, fused AdamW, zero_grad.

Precision policies (``--precision``): ``fp32`` (no autocast) and ``bf16`` (``torch.autocast`` to
bfloat16 around the forward and the loss; parameters and optimiser state fp32: what
``train.precision="bf16"`` does). ``both`` times every policy. Steps of every (policy, model) are
interleaved (ours, theirs, ours, ...) so that machine noise hits all alike; we report the median
ms/step and tokens/s of each and the ratio to transformers under the same policy. ``--compiled`` adds
our step with ``Decoder.compile_for_training``, ``--compiled-hf`` transformers' model under
``torch.compile`` (their first steps compile and are not counted).

On a shared machine, time CPU seconds of a single thread (``--threads 1 --clock cpu``): a process
waiting for a core then costs nothing, and the ratios stay honest. Run:

    python benchmarks/train_throughput.py                                  # fp32, wall clock
    python benchmarks/train_throughput.py --precision both --compiled --threads 1 --clock cpu
    python benchmarks/train_throughput.py --d-model 512 --layers 8 --heads 8 --seq 512 --batch 8

Needs ``transformers`` (``pip install -e '.[test]'``). bf16 is fast only on CPUs with native bf16
arithmetic (AVX512-BF16 or AMX; ``hopekit.train.cpu_has_native_bf16``); elsewhere it is emulated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F


def build_ours(args):
    from hopekit.model import Decoder, ModelConfig

    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                      n_kv_heads=args.kv_heads, ffn_hidden=args.ffn, pe={"kind": "rope", "base": 10000.0})
    return Decoder(cfg).train()


def build_hf(args, ours=None):
    """transformers' Llama of the same shape; with ``ours``, holding its weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads or args.heads, max_position_embeddings=args.seq,
                      rope_theta=10000.0, tie_word_embeddings=True, attention_dropout=0.0, rms_norm_eps=1e-5)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    if ours is not None:
        from hopekit.integrations.hf.export import DECODER_TO_LLAMA

        theirs = {}
        for name, value in ours.state_dict().items():
            parts = name.split(".")
            key = ".".join("{i}" if p.isdigit() else p for p in parts)
            layer = next((p for p in parts if p.isdigit()), None)
            if key in DECODER_TO_LLAMA:
                theirs[DECODER_TO_LLAMA[key].format(i=layer)] = value
        missing, unexpected = model.load_state_dict(theirs, strict=False)
        missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
        assert not missing and not unexpected, (missing, unexpected)
    return model.train()


def make_step(model, hf: bool, precision: str):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())

    def step(x, y):
        with autocast:
            if hf:
                loss = F.cross_entropy(model(input_ids=x, use_cache=False).logits.float().flatten(0, 1), y.flatten())
            else:
                _, loss = model(x, targets=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None, help="grouped-query attention (default: --heads)")
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default="fp32")
    p.add_argument("--compiled", action="store_true", help="also time our step under Decoder.compile_for_training")
    p.add_argument("--compiled-hf", action="store_true",
                   help="also time transformers' model under torch.compile")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of every variant first")
    p.add_argument("--steps", type=int, default=15, help="timed steps of every variant")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: perf_counter; cpu: this process' CPU seconds (all threads), robust to waiting "
                        "for a busy core (use with --threads 1)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    inp, tgt = x[:, :-1], x[:, 1:]
    variants = {}  # (precision, name) -> step
    for prec in precisions:
        ours = build_ours(args)
        theirs = build_hf(args, ours)  # same weights
        variants[prec, "hopekit"] = make_step(ours, False, prec)
        variants[prec, "transformers"] = make_step(theirs, True, prec)
        if args.compiled:
            torch.manual_seed(0)
            mine = build_ours(args).compile_for_training()
            mine.load_state_dict(ours.state_dict())
            variants[prec, "hopekit compiled"] = make_step(mine, False, prec)
        if args.compiled_hf:
            theirs_c = build_hf(args, ours)
            theirs_c.compile()  # nn.Module.compile: forward through torch.compile, parameters unchanged
            variants[prec, "transformers compiled"] = make_step(theirs_c, True, prec)
    # same weights, same batch: the first step's losses agree (float32 rounding; bf16 rounding under autocast)
    first = {key: float(step(inp, tgt)) for key, step in variants.items()}
    for (prec, name), loss in first.items():
        ref = first[prec, "hopekit"]
        tol = 1e-4 if prec == "fp32" else 2e-2
        assert abs(loss - ref) <= tol * abs(ref), f"{prec} {name}: first-step loss {loss} vs hopekit's {ref}"

    times = {key: [] for key in variants}
    for i in range(args.warmup + args.steps):
        for key, step in variants.items():
            t = clock()
            step(inp, tgt)
            if i >= args.warmup:
                times[key].append(clock() - t)
    tokens = args.batch * args.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in med.items()}
    n_params = sum(q.numel() for q in build_ours(args).parameters())
    from hopekit.train import cpu_has_native_bf16

    print(f"shape: d_model={args.d_model} layers={args.layers} heads={args.heads} "
          f"kv_heads={args.kv_heads or args.heads} ffn={args.ffn} vocab={args.vocab} batch={args.batch} "
          f"seq={args.seq}; {n_params:,} parameters; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, {args.steps} steps (median; p25-p75); CPU native bf16: {cpu_has_native_bf16()}")
    print(f"{'precision':<10}{'model':<22}{'ms/step':>10}{'p25-p75':>18}{'tokens/s':>11}{'vs transformers':>17}")
    summary = {}
    for (prec, name), ts in times.items():
        q = statistics.quantiles(ts, n=4)
        ratio = tps[prec, name] / tps[prec, "transformers"]
        print(f"{prec:<10}{name:<22}{med[prec, name] * 1e3:>10.1f}{q[0] * 1e3:>8.1f}-{q[2] * 1e3:<8.1f}"
              f"{tps[prec, name]:>12.0f}{ratio:>16.2f}x")
        summary[f"{prec}/{name}"] = {"ms_per_step": med[prec, name] * 1e3, "tokens_per_s": tps[prec, name],
                                     "vs_transformers": ratio}
    if len(precisions) == 2:
        for name in sorted({name for _, name in variants}):
            print(f"bf16 / fp32 speed, {name}: {tps['bf16', name] / tps['fp32', name]:.2f}x")
    print(json.dumps({"benchmark": "train_throughput", "results": summary, "cpu_native_bf16": cpu_has_native_bf16(),
                      **vars(args)}))


if __name__ == "__main__":
    main()
