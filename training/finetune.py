"""Continue training the bundled keyboard model on a mix of its documentation text and general English:

    python -m training.finetune --base bundled_models/keyboard-gpt2 --out build/keyboard-general --threads 1

General English: the glosses of WordNet 3.0 (Debian's `wordnet-base`, WordNet 3.0 licence: use, copy,
modify and distribute with its notice), 117,000 definitions of nouns, verbs, adjectives and adverbs written as
sentences: reference prose over the whole everyday vocabulary. WordNet's usage examples are not trained on:
they are the everyday held-out set (`training/everyday.py`), so the two share a database but no text.

Recipe: the base model's weights and tokenizer, AdamW (betas 0.9/0.95, weight decay 0.1), `--lr` after 50
warm-up steps then cosine to 10%, batches of 32 x 128-token windows, half from each text, dropout 0.1, bf16
autocast, seed 1234. Deterministic for a given seed and torch build; sized for about 45 minutes on one
thread of a 2-core CPU."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from training.everyday import fetch_wordnet
from training.train import mean_loss, token_stream

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def glosses(wordnet_dir: Path) -> list[str]:
    """Every WordNet gloss's definitions (not its quoted examples), as sentences."""
    found = []
    for name in DATA_FILES:
        for line in (wordnet_dir / name).read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            for part in line.split("|", 1)[1].split(";"):
                part = part.strip()
                if not part or part.startswith('"') or len(part.split()) < 4:
                    continue
                sentence = part[0].upper() + part[1:]
                found.append(sentence if sentence[-1] in ".?!" else sentence + ".")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("bundled_models/keyboard-gpt2"))
    parser.add_argument("--out", type=Path, default=Path("build/keyboard-general"))
    parser.add_argument("--wordnet-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=45.0, help="stop early past this wall time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as tmp:
        source = "local copy"
        wordnet_dir = args.wordnet_dir
        if wordnet_dir is None:
            wordnet_dir, source = fetch_wordnet(Path(tmp))
        general = glosses(wordnet_dir)
    docs = gzip.decompress((args.base / "train.txt.gz").read_bytes()).decode().splitlines()
    heldout = (args.base / "heldout.txt").read_text().splitlines()
    everyday = (args.base / "heldout-everyday.txt").read_text().splitlines()
    tokenizer = Tokenizer.from_file(str(args.base / "tokenizer.json"))
    streams = [token_stream(tokenizer, docs), token_stream(tokenizer, general)]
    checks = {"docs": token_stream(tokenizer, heldout), "everyday": token_stream(tokenizer, everyday)}
    model = GPT2LMHeadModel.from_pretrained(args.base, dtype=torch.float32).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    window, batch, warmup = model.config.n_positions, 32, 50
    gen = torch.Generator().manual_seed(1234)
    started, log = time.time(), []

    def losses() -> dict:
        return {name: round(mean_loss(model, stream, window, 4, 16, "cpu"), 4) for name, stream in checks.items()}

    log.append({"step": 0, **losses(), "minutes": 0.0})
    print(json.dumps(log[-1]), flush=True)
    step = 0
    for step in range(args.steps):
        progress = max(0, step - warmup) / max(1, args.steps - warmup)
        cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
        lr = args.lr * (step + 1) / warmup if step < warmup else args.lr * cosine
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = []
        for i, stream in enumerate(streams):
            starts = torch.randint(0, len(stream) - window - 1, (batch // 2 + (i == 0) * (batch % 2),), generator=gen)
            rows += [stream[s : s + window] for s in starts]
        x = torch.stack(rows)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        minutes = (time.time() - started) / 60
        if (step + 1) % 100 == 0 or step + 1 == args.steps or minutes > args.minutes:
            log.append(
                {"step": step + 1, "train_loss": round(loss.item(), 4), **losses(), "minutes": round(minutes, 1)}
            )
            print(json.dumps(log[-1]), flush=True)
        if minutes > args.minutes:
            break
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval().half().save_pretrained(args.out)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "train.txt.gz",
        "heldout.txt",
        "heldout-everyday.txt",
        "generation_config.json",
    ):
        if (args.base / name).is_file():
            shutil.copyfile(args.base / name, args.out / name)
    base_training = json.loads((args.base / "training.json").read_text())
    base_training["finetune"] = {
        "source": source,
        "licence": "WordNet 3.0 licence (Princeton University)",
        "general_sentences": len(general),
        "general_words": sum(len(s.split()) for s in general),
        "general_tokens": len(streams[1]),
        "steps": step + 1,
        "lr": args.lr,
        "batch": batch,
        "mix": "half documentation, half WordNet glosses",
        "threads": args.threads,
        "torch": torch.__version__,
        "log": log,
        "minutes": round((time.time() - started) / 60, 1),
    }
    (args.out / "training.json").write_text(json.dumps(base_training, indent=2) + "\n")
    print(json.dumps(base_training["finetune"], indent=2))


if __name__ == "__main__":
    main()
