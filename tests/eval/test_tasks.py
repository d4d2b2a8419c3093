"""Synthetic long-context tasks: deterministic, exactly ``length`` tokens, information at ``depth``, and
two scorings that agree with each other and with oracles."""

import pytest
import torch
from torch import nn

from hopekit.data import ByteTokenizer
from hopekit.eval.tasks import TASKS, make_task, score_generation, score_likelihood
from hopekit.model import Decoder, ModelConfig

TOK = ByteTokenizer()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("filler", ["corpus", "repeat"])
def test_instances_are_deterministic_exact_in_length_and_place_their_information_at_depth(task, filler):
    marker = {"passkey": " The pass key is", "copy": " <copy>", "needle": " The best thing to do in",
              "kv": " Key-value pairs:"}[task]
    for length in (600, 901):
        for depth in (0.0, 0.25, 0.5, 1.0):
            a = make_task(task, TOK, length=length, depth=depth, seed=4, filler=filler)
            assert a == make_task(task, TOK, length=length, depth=depth, seed=4, filler=filler)
            assert len(a.prompt) + len(a.answer) == length
            assert TOK.decode(a.prompt[a.position:]).startswith(marker)
            assert a.meta["filler_before"] == round(depth * a.meta["filler_tokens"]) and a.meta["filler_tokens"] > 0
    instances = {tuple(make_task(task, TOK, length=600, depth=0.5, seed=s, filler=filler).prompt) for s in range(6)}
    assert len(instances) > 1                                            # the seed changes the instance


@pytest.mark.parametrize("task", TASKS)
def test_the_answer_is_what_the_prompt_holds(task):
    inst = make_task(task, TOK, length=600, depth=0.3, seed=1)
    text, answer = TOK.decode(inst.prompt), TOK.decode(inst.answer)
    if task == "passkey":
        assert answer == " " + inst.meta["passkey"] and f"The pass key is {inst.meta['passkey']}." in text
    elif task == "copy":
        assert answer == inst.meta["span"] and f"<copy>{answer}</copy>" in text
    elif task == "needle":
        assert answer == f" {inst.meta['activity']}." and f"{inst.meta['city']} is to {inst.meta['activity']}." in text
    else:
        assert answer == " " + inst.meta["value"] and f"{inst.meta['key']}: {inst.meta['value']}." in text
        assert text.count(inst.meta["key"]) == 2                        # listed once, asked once


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="task='nope'"):
        make_task("nope", TOK, length=100, depth=0.5, seed=0)
    with pytest.raises(ValueError, match="depth=1.5"):
        make_task("passkey", TOK, length=400, depth=1.5, seed=0)
    with pytest.raises(ValueError, match="length=50: too short"):
        make_task("passkey", TOK, length=50, depth=0.5, seed=0)
    with pytest.raises(ValueError, match="filler='x'"):
        make_task("passkey", TOK, length=400, depth=0.5, seed=0, filler="x")


class Oracle(nn.Module):
    """Logits that put all mass on the next token of a known sequence (a perfect model of it)."""

    def __init__(self, sequence: list[int], vocab: int = 257):
        super().__init__()
        self.sequence, self.vocab = sequence, vocab
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        T = x.shape[1]
        logits = torch.zeros(1, T, self.vocab)
        logits[0, torch.arange(T), torch.tensor(self.sequence[1:T + 1])] = 30.0
        return logits


def test_a_perfect_model_scores_every_answer_and_a_shuffled_answer_scores_none():
    insts = [make_task("passkey", TOK, length=400, depth=d, seed=s) for s, d in enumerate((0.1, 0.5, 0.9))]
    for inst in insts:
        oracle = Oracle(inst.prompt + inst.answer)
        s = score_likelihood(oracle, [inst])[0]
        assert s.correct and s.token_accuracy == 1.0 and s.mean_rank == 1.0 and s.nll < 1e-3
    # the oracle of one instance asked another's pass key (same prompt, another answer): wrong digits
    a, b = insts[0], insts[1]
    swapped = type(a)(**{**a.__dict__, "answer": b.answer})
    s = score_likelihood(Oracle(a.prompt + a.answer), [swapped])[0]
    assert not s.correct and s.mean_rank > 1


def test_teacher_forced_argmax_equals_greedy_generation_through_the_cache():
    """``correct`` of the likelihood scoring is exactly greedy decoding's exact match: on an instance whose
    answer is the model's own greedy continuation both say right at every token; on the task's answer
    both give the same per-token verdict up to the first error."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=257, d_model=32, n_layers=2, n_heads=2, pe={"kind": "rope"})).eval()
    inst = make_task("kv", TOK, length=500, depth=0.5, seed=2)
    generated = model.generate(torch.tensor([inst.prompt]), len(inst.answer), temperature=0)[0, len(inst.prompt):]
    own = type(inst)(**{**inst.__dict__, "answer": generated.tolist()})
    assert score_likelihood(model, [own])[0].correct and score_generation(model, [own])[0].correct
    like, gen = score_likelihood(model, [inst])[0], score_generation(model, [inst])[0]
    assert like.correct == gen.correct
    assert like.mean_rank >= 1.0 and like.nll > 0


@pytest.mark.parametrize("style,length", [("compact", 128), ("standard", 1024)])
def test_the_copied_span_is_in_the_prompt_once_between_its_markers(style, length):
    for seed in range(40):
        inst = make_task("copy", TOK, length=length, depth=0.5, seed=seed, style=style, split="test")
        text = TOK.decode(inst.prompt)
        span = inst.meta["span"]
        assert text.count(span) == 1 and TOK.decode(inst.answer) == span
        marked = f" <{span}> " if style == "compact" else f" <copy>{span}</copy> "
        assert marked in text


def test_kv_keys_are_distinct_and_the_answer_is_the_asked_keys_value():
    for seed in range(200):
        inst = make_task("kv", TOK, length=256, depth=0.3, seed=seed, style="compact", split="test")
        text = TOK.decode(inst.prompt)
        keys = [pair.split(":")[0].strip() for pair in text.split(".") if ":" in pair][:4]
        assert len(set(keys)) == 4, text
        assert f"{inst.meta['key']}: {inst.meta['value']}." in text and TOK.decode(inst.answer) == f" {inst.meta['value']}"


@pytest.mark.parametrize("style", ["compact", "standard"])
def test_min_length_is_the_longest_template_over_every_needle(style):
    from hopekit.eval.tasks import _ACTIVITIES, _CITIES, min_length

    need = min_length("needle", TOK, style=style)
    fixed = []
    for city in _CITIES:
        for activity in _ACTIVITIES:   # every needle fits at the bound, with at least one filler token
            inst = make_task("needle", TOK, length=need, depth=0.5, seed=0, style=style, needle=(city, activity))
            assert inst.meta["filler_tokens"] >= 1
            fixed.append(need - inst.meta["filler_tokens"])
    assert need == max(fixed) + 1            # and the bound is tight: the longest needle has exactly one
    with pytest.raises(ValueError, match="too short"):
        longest = (max(_CITIES, key=len), max(_ACTIVITIES, key=len))
        make_task("needle", TOK, length=need - 2, depth=0.5, seed=0, style=style, needle=longest)
