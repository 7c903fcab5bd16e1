"""Train the bundled keyboard model, from the Debian package to a Hugging Face checkpoint, in one command:

    python -m training.train --out bundled_models/keyboard-gpt2

Recipe: a byte-level BPE tokenizer (8192 tokens) trained with `tokenizers` on the training split,
then a GPT-2 (4 layers, width 256, 4 heads, 128 positions: iOS 17's keyboard model is a 6-layer,
width-512 GPT-2; ours is scaled to a 1M-token corpus, a 25 MB budget and a 2-core CPU hour) trained
with AdamW on random 128-token windows. The forward pass runs under bf16 autocast (weights, optimiser
and loss stay fp32): on a CPU with AMX (this machine's) a step takes 0.64 s instead of 0.90 s, which
buys 3000 steps within the hour: 32 minutes alone on this 2-core machine with two threads (the
default); `--threads 1` when other jobs share the machine (two threads waiting on each other behind a
third job ran 3-5 s a step here). Deterministic for a given seed and torch build. Runs on CUDA when
asked (`--device cuda`)."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import TypedDict

import torch
from tqdm import tqdm

from training.corpus import build_corpus

EOT = "<|endoftext|>"


class Recipe(TypedDict):
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    dropout: float
    steps: int
    batch: int
    lr: float
    warmup: int
    weight_decay: float
    seed: int
    autocast: str  # "bf16": train under bf16 autocast


RECIPE = Recipe(
    vocab_size=8192,
    n_positions=128,
    n_embd=256,
    n_layer=4,
    n_head=4,
    dropout=0.1,
    steps=3000,
    batch=32,
    lr=1e-3,
    warmup=100,
    weight_decay=0.1,
    seed=1234,
    autocast="bf16",
)


def train_tokenizer(lines: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def token_stream(tokenizer, lines: list[str]) -> torch.Tensor:
    """Every paragraph preceded by <|endoftext|>, as at inference, so the model learns text starts."""
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(lines):
        ids.append(eot)
        ids.extend(encoding.ids)
    return torch.tensor(ids, dtype=torch.long)


def learning_rate(step: int, recipe: Recipe) -> float:
    if step < recipe["warmup"]:
        return recipe["lr"] * (step + 1) / recipe["warmup"]
    progress = (step - recipe["warmup"]) / max(1, recipe["steps"] - recipe["warmup"])
    return recipe["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def mean_loss(model, stream: torch.Tensor, window: int, batches: int, batch: int, device: str) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(batches):
        starts = torch.randint(0, len(stream) - window - 1, (batch,), generator=gen)
        x = torch.stack([stream[s : s + window] for s in starts]).to(device)
        losses.append(model(x, labels=x).loss.item())
    model.train()
    return sum(losses) / len(losses)


def train(out: Path, work: Path, html_root: Path | None, device: str, steps: int | None, threads: int = 2) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    recipe: Recipe = {**RECIPE, "steps": steps or RECIPE["steps"]}
    torch.manual_seed(recipe["seed"])
    provenance = build_corpus(work, html_root)
    train_lines = (work / "train.txt").read_text().splitlines()
    heldout_lines = (work / "heldout.txt").read_text().splitlines()

    tokenizer = train_tokenizer(train_lines, recipe["vocab_size"])
    train_ids, heldout_ids = token_stream(tokenizer, train_lines), token_stream(tokenizer, heldout_lines)
    eot = tokenizer.token_to_id(EOT)
    config = GPT2Config(
        vocab_size=recipe["vocab_size"],
        n_positions=recipe["n_positions"],
        n_embd=recipe["n_embd"],
        n_layer=recipe["n_layer"],
        n_head=recipe["n_head"],
        resid_pdrop=recipe["dropout"],
        embd_pdrop=recipe["dropout"],
        attn_pdrop=recipe["dropout"],
        bos_token_id=eot,
        eos_token_id=eot,
    )
    # transformers decorates `to` with functools.wraps, whose typeshed type binds no `self`
    model = GPT2LMHeadModel(config).to(device).train()  # type: ignore[arg-type]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe["lr"],
        betas=(0.9, 0.95),
    )
    window, gen = recipe["n_positions"], torch.Generator().manual_seed(recipe["seed"])
    started, log = time.time(), []
    bar = tqdm(range(recipe["steps"]), desc="training", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        starts = torch.randint(0, len(train_ids) - window - 1, (recipe["batch"],), generator=gen)
        x = torch.stack([train_ids[s : s + window] for s in starts]).to(device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=recipe["autocast"] == "bf16"):
            loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 300 == 0 or step + 1 == recipe["steps"]:
            log.append(
                {
                    "step": step + 1,
                    "train_loss": round(loss.item(), 4),
                    "heldout_loss": round(mean_loss(model, heldout_ids, window, 8, 16, device), 4),
                    "minutes": round((time.time() - started) / 60, 1),
                }
            )
            tqdm.write(json.dumps(log[-1]))

    out.mkdir(parents=True, exist_ok=True)
    model.eval().half().cpu().save_pretrained(out)  # fp16 on disk: 5.3M parameters in ~11 MB
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT
    )
    fast.save_pretrained(out)
    metadata = {
        "recipe": recipe,
        "corpus": provenance,
        "train_tokens": len(train_ids),
        "heldout_tokens": len(heldout_ids),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device,
        "threads": threads,
        "torch": torch.__version__,
        "log": log,
        "minutes": round((time.time() - started) / 60, 1),
    }
    (out / "training.json").write_text(json.dumps(metadata, indent=2) + "\n")
    # Beside the model: the n-gram baseline's training text and the held-out text of its evaluation.
    (out / "train.txt.gz").write_bytes(gzip.compress((work / "train.txt").read_bytes(), mtime=0))
    shutil.copyfile(work / "heldout.txt", out / "heldout.txt")
    return metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bundled_models/keyboard-gpt2"))
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("build/keyboard-corpus"),
        help="where the corpus (train.txt, heldout.txt) is written",
    )
    parser.add_argument(
        "--html-root",
        type=Path,
        default=None,
        help="an already unpacked python3.11-doc html directory (default: apt-get download it)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help=f"default {RECIPE['steps']}")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation and model card")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(train(args.out, args.work, args.html_root, args.device, args.steps, args.threads), indent=2))
    if not args.no_eval:
        from training.model_card import main as write_model_card

        sys.argv = [sys.argv[0], str(args.out)]
        write_model_card()


if __name__ == "__main__":
    main()
