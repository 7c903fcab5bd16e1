"""A tiny keyboard checkpoint (byte-level BPE tokenizer + random GPT-2) made in the test session."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A keyboard suggests the next word while you type.",
    "The model runs on the phone, the tablet and the laptop.",
    "There is nothing like a quiet morning with a good book.",
    "They thought the theory was thorough, though not the whole truth.",
    "Python is a programming language that lets you work quickly.",
    "Typing on a small screen is slow, so suggestions save time.",
    "We don't know what they'll think of it, but it's worth trying.",
]


def make_keyboard_checkpoint(directory: Path, vocab_size: int = 330, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from training.train import EOT, train_tokenizer

    tokenizer = train_tokenizer(SENTENCES * 4, vocab_size)
    eot = tokenizer.token_to_id(EOT)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=96, n_embd=48, n_layer=2, n_head=4,
                        initializer_range=0.1, bos_token_id=eot, eos_token_id=eot)
    directory.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT).save_pretrained(directory)
    # The n-gram baseline's training text, where a bundled model keeps it.
    (directory / "train.txt.gz").write_bytes(gzip.compress(("\n".join(SENTENCES) + "\n").encode()))
    return directory
