"""The batched branch scorers of the keyboard's word search on the CPU (the registry's `cpu_branch_scorer`: GPT-2's
`ane_model/gpt2_branches.py`), for every family that has one, on its torch-ane test checkpoints: many short
continuations of one cached context scored in one batch must give the logits of running each continuation through
the cache, and adopting a scored branch the logits of prefilling it."""

from __future__ import annotations

import numpy as np
import pytest

from convert.checkpoint import load_checkpoint
from ondevice.backends.torch_ane import TorchCausalLM
from ondevice.parity import TOLERANCES, compare
from tests.families import TORCH_ANE, cases, ids, make

FP32 = TOLERANCES["fp32"]
SCORED = cases(TORCH_ANE, causal=True, needs="cpu_branch_scorer")


@pytest.fixture(scope="module", params=SCORED, ids=ids(SCORED))
def ckpt(request, family_root):
    return load_checkpoint(make(request.param, family_root))


def _ids(vocab: int, length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


def test_branch_logits_equal_one_continuation_at_a_time(ckpt):
    vocab = ckpt.config.vocab_size
    lm = TorchCausalLM(ckpt.config, ckpt.weights)
    assert lm.branches is not None  # the family's scorer, not the prefill-and-trim fallback
    context = _ids(vocab, 30, seed=6)
    continuations = [_ids(vocab, 3, seed=s) for s in range(5)]
    lm.prefill(context)
    batched = lm.branch_logits(continuations)
    assert lm.length == 30  # the batch left the cache as it was
    one_by_one = []
    for continuation in continuations:
        one_by_one.append(lm.prefill(continuation)[-1])
        lm.trim(30)
    assert compare("branch", batched, np.stack(one_by_one)).within(FP32)


def test_branches_on_remembered_parents_equal_whole_continuations(ckpt):
    """The word search extends beams one token at a time: a deeper branch runs its last token on top of its
    parent's remembered keys and values, and must give the logits of running the whole continuation."""
    vocab = ckpt.config.vocab_size
    lm = TorchCausalLM(ckpt.config, ckpt.weights)
    lm.prefill(_ids(vocab, 25, seed=7))
    paths = [_ids(vocab, 3, seed=s) for s in range(4)]
    for depth in (1, 2, 3):
        lm.branch_logits([p[:depth] for p in paths])  # parents, then children on top of them
    stepped = lm.branch_logits([p[:3] for p in paths])
    lm.branches.forget()
    whole = lm.branch_logits([p[:3] for p in paths])
    one_by_one = []
    for path in paths:
        one_by_one.append(lm.prefill(path)[-1])
        lm.trim(25)
    assert compare("stepped", stepped, np.stack(one_by_one)).within(FP32)
    assert compare("whole", whole, np.stack(one_by_one)).within(FP32)


def test_adopting_a_branch_equals_prefilling_it(ckpt):
    """When typed text turns a scored branch into context, its keys and values move into the cache: the next
    logits must be those of prefilling the same tokens; a branch from before the cache changed is never adopted."""
    vocab = ckpt.config.vocab_size
    context, path, after = _ids(vocab, 20, seed=8), _ids(vocab, 2, seed=9), _ids(vocab, 3, seed=10)
    adopted, prefilled = TorchCausalLM(ckpt.config, ckpt.weights), TorchCausalLM(ckpt.config, ckpt.weights)
    adopted.prefill(context)
    adopted.branch_logits([path[:1]])
    adopted.branch_logits([path])
    assert adopted.adopt_branch(path) and adopted.length == 22
    prefilled.prefill(context + path)
    assert compare("after", adopted.prefill(after), prefilled.prefill(after)).within(FP32)

    adopted.trim(20)
    adopted.branch_logits([path])
    adopted.trim(19)
    adopted.prefill(after[:1])  # back to 20 tokens, but no longer the context the branch continued
    assert not adopted.adopt_branch(path) and adopted.length == 20
