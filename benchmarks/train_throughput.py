"""Training throughput: hopekit's reference decoder vs transformers' LlamaForCausalLM, same shape.

Both models get the same width, depth, heads, SwiGLU width, vocabulary, tied embeddings and RoPE
(base 10 000, half-split), the same batch, AdamW, fp32, and SDPA attention. Steps of the two models
are interleaved (ours, theirs, ours, ...) so that machine noise hits both alike; we report the
median tokens/s of each and their ratio. Run:

    python benchmarks/train_throughput.py                 # CPU default shape
    python benchmarks/train_throughput.py --d-model 512 --layers 8 --heads 8 --seq 512 --batch 8

Needs ``transformers`` (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build_ours(args):
    from hopekit.model import Decoder, ModelConfig

    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                      ffn_hidden=args.ffn, pe={"kind": "rope", "base": 10000.0})
    return Decoder(cfg)


def build_hf(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.heads, max_position_embeddings=args.seq, rope_theta=10000.0,
                      tie_word_embeddings=True, attention_dropout=0.0, rms_norm_eps=1e-5)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", torch_dtype=torch.float32)
    model.config.use_cache = False
    return model


def step_fn(model, opt, x, y, hf: bool):
    if hf:
        loss = model(input_ids=x, labels=None, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(loss.flatten(0, 1), y.flatten())
    else:
        _, loss = model(x, targets=y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, theirs = build_ours(args), build_hf(args)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_hf, f"shapes differ: {n_ours} vs {n_hf} parameters"
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, theirs)}
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    inp, tgt = x[:, :-1], x[:, 1:]
    times: dict[str, list[float]] = {"hopekit": [], "transformers": []}
    for i in range(args.warmup + args.steps):
        for name, model in (("hopekit", ours), ("transformers", theirs)):
            t = time.perf_counter()
            step_fn(model, opts[model], inp, tgt, hf=model is theirs)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
    tokens = args.batch * args.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in med.items()}
    ratio = tps["hopekit"] / tps["transformers"]
    print(f"shape: d_model={args.d_model} layers={args.layers} heads={args.heads} ffn={args.ffn} "
          f"vocab={args.vocab} batch={args.batch} seq={args.seq}; {n_ours:,} parameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for k in times:
        print(f"{k:>13}: median {med[k] * 1000:8.1f} ms/step  {tps[k]:10.0f} tokens/s  "
              f"(p20 {sorted(times[k])[len(times[k]) // 5] * 1000:.1f} ms, {len(times[k])} steps)")
    print(f"ratio hopekit/transformers: {ratio:.2f}x")
    print(json.dumps({"benchmark": "train_throughput", "tokens_per_s": tps, "ratio": ratio, **vars(args)}))


if __name__ == "__main__":
    main()
