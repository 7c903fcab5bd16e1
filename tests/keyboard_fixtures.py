"""A tiny keyboard checkpoint (byte-level BPE tokenizer + random GPT-2) made in the test session."""

from __future__ import annotations

import gzip
import json
import math
import re
import string
from pathlib import Path

import numpy as np
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
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=96,
        n_embd=48,
        n_layer=2,
        n_head=4,
        initializer_range=0.1,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    directory.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT).save_pretrained(directory)
    # The n-gram baseline's training text, where a bundled model keeps it.
    (directory / "train.txt.gz").write_bytes(gzip.compress(("\n".join(SENTENCES) + "\n").encode()))
    return directory


# Tokenizers of the Llama family, trained here with `tokenizers` on a few hundred lines of the bundled model's
# training text, in the two ways real checkpoints mark where words begin.
TOKENIZER_STYLES = ("byte-level", "sentencepiece-bpe", "sentencepiece-unigram")
_BYTES = [f"<0x{b:02X}>" for b in range(256)]
_SENTENCEPIECE_SPECIALS = ["<unk>", "<s>", "</s>"]
# Llama 3's pre-tokenizer split (Qwen2's differs only in how it groups digits).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def training_lines(count: int = 300) -> list[str]:
    from bundled_models import keyboard_gpt2_path

    text = gzip.decompress((keyboard_gpt2_path() / "train.txt.gz").read_bytes()).decode()
    return text.splitlines()[:count]


def byte_level_tokenizer(lines: list[str], vocab_size: int, specials: list[str], bos: str | None):
    """Llama 3 / Qwen style: a regex split, then byte-level BPE ("Ġ" marks a word's leading space); Llama 3's
    template puts its begin-of-text token before every encoded text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(lines, trainer)
    if bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    return tokenizer


def sentencepiece_bpe_tokenizer(lines: list[str], vocab_size: int):
    """Llama 2 style (the legacy conversion of its SentencePiece model): "▁" marks a word's leading space and
    is prepended to the text, BPE with the 256 "<0xNN>" byte-fallback tokens after <unk>, <s>, </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    learner.train_from_iterator(
        lines,
        trainers.BpeTrainer(vocab_size=vocab_size - len(_SENTENCEPIECE_SPECIALS) - len(_BYTES), show_progress=False),
    )
    learned = json.loads(learner.to_str())["model"]
    pieces = [p for p, _ in sorted(learned["vocab"].items(), key=lambda item: item[1])]
    vocab = {p: i for i, p in enumerate(_SENTENCEPIECE_SPECIALS + _BYTES + pieces)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(_SENTENCEPIECE_SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def sentencepiece_unigram_tokenizer(lines: list[str], vocab_size: int):
    """Mistral-like: a Metaspace pre-tokenizer ("▁" before each word, prefix space on the first) and a
    Unigram model with byte fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    learner = Tokenizer(models.Unigram())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    learner.train_from_iterator(
        lines,
        trainers.UnigramTrainer(
            vocab_size=vocab_size - len(_SENTENCEPIECE_SPECIALS) - len(_BYTES),
            unk_token="<unk>",
            special_tokens=["<unk>"],
            show_progress=False,
        ),
    )
    pieces = [(p, score) for p, score in json.loads(learner.to_str())["model"]["vocab"] if p != "<unk>"]
    vocab = [(p, 0.0) for p in _SENTENCEPIECE_SPECIALS] + [(b, -100.0) for b in _BYTES] + pieces
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Metaspace(replacement="▁", prepend_scheme="first"), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer.add_special_tokens(_SENTENCEPIECE_SPECIALS)
    return tokenizer


# The causal LMs predictive text is checked on, by name: a registered family and its factory's overrides (every
# Llama dialect; a family registered without an entry here runs as its default random checkpoint).
KEYBOARD_CASES = {
    "gpt2": ("gpt2", dict(n_embd=48, n_positions=96)),
    "llama": ("llama", dict(max_position_embeddings=96)),
    "mistral": ("llama", dict(dialect="mistral", max_position_embeddings=96)),
    "qwen2": ("llama", dict(dialect="qwen2", max_position_embeddings=96)),
    "qwen3": ("llama", dict(dialect="qwen3", max_position_embeddings=96)),
}


def keyboard_dialects() -> list[str]:
    """Every registered causal family's keyboard cases (its name alone where KEYBOARD_CASES has none)."""
    from convert.registry import FAMILIES

    found = []
    for family in FAMILIES.values():
        if family.is_causal and family.ane_model is not None:
            found += [name for name, (owner, _) in KEYBOARD_CASES.items() if owner == family.name] or [family.name]
    return found


def make_family_keyboard_checkpoint(
    directory: Path, dialect: str, style: str, vocab_size: int = 520, pad_vocab: int = 0, seed: int = 0
) -> Path:
    """A random-init causal LM (`dialect`: a name of `keyboard_dialects()`) with a tokenizer of `style`
    (TOKENIZER_STYLES) whose vocabulary the model's matches (plus `pad_vocab` unused ids, as Qwen pads)."""
    from transformers import PreTrainedTokenizerFast

    from convert.registry import FAMILIES

    # Real vocabularies (32k-150k tokens) hold a spaced piece for every letter ("Ġk", "▁k"), so that any word
    # starts with a word-start token; a 500-token one learns them from lines that spell the alphabet.
    lines = training_lines() + [" ".join(string.ascii_letters)] * 100
    if style == "byte-level":
        qwen = dialect.startswith("qwen")
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if qwen else ["<|begin_of_text|>", "<|end_of_text|>"]
        tokenizer = byte_level_tokenizer(lines, vocab_size, specials, None if qwen else "<|begin_of_text|>")
        bos_token, eos_token, unk_token = specials[0], specials[-1], None
    elif style == "sentencepiece-bpe":
        tokenizer = sentencepiece_bpe_tokenizer(lines, vocab_size)
        bos_token, eos_token, unk_token = "<s>", "</s>", "<unk>"
    elif style == "sentencepiece-unigram":
        tokenizer = sentencepiece_unigram_tokenizer(lines, vocab_size)
        bos_token, eos_token, unk_token = "<s>", "</s>", "<unk>"
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    bos, eos = tokenizer.token_to_id(bos_token), tokenizer.token_to_id(eos_token)
    family, overrides = KEYBOARD_CASES.get(dialect, (dialect, {}))
    FAMILIES[family].make_random_checkpoint(
        directory,
        seed=seed,
        vocab_size=tokenizer.get_vocab_size() + pad_vocab,
        initializer_range=0.1,
        bos_token_id=bos,
        eos_token_id=eos,
        **overrides,
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos_token, eos_token=eos_token, unk_token=unk_token
    ).save_pretrained(directory)
    return directory


def brute_force(predictor, model, text: str, max_tokens: int, k: int) -> list[tuple[str, float]]:
    """Every spelling of up to `max_tokens` tokens that agrees with the typed letters, scored by the transformers
    model on the full context (no cache, no beam, no pruning by probability): P(tokens) x P(the next token ends
    the word), summed over the spellings of a word. The enumeration only skips spellings whose letters
    contradict what was typed."""
    from ondevice.keyboard.words import split_partial

    context, partial, bare = split_partial(text)
    classes = predictor.classes
    bare = classes.first_word_is_bare(context, bare)
    ctx = predictor.context.token_ids(context)
    first = np.flatnonzero(classes.starts_bare if bare else classes.starts_word)
    conts = np.flatnonzero(classes.continues_word)
    want = partial.lower()

    def agrees(word: str) -> bool:
        return word.lower().startswith(want) or want.startswith(word.lower())

    spellings: list[tuple[tuple[int, ...], str]] = []
    frontier = [((int(t),), classes.strings[t][0 if bare else 1 :]) for t in first]
    for depth in range(max_tokens):
        frontier = [(seq, word) for seq, word in frontier if agrees(word)]
        spellings += [(seq, word) for seq, word in frontier if word.lower().startswith(want)]
        if depth + 1 < max_tokens:
            frontier = [((*seq, int(t)), word + classes.strings[t]) for seq, word in frontier for t in conts]
    boundary = torch.from_numpy(~classes.continues_word)
    words: dict[str, list] = {}
    for length in range(1, max_tokens + 1):
        batch_all = [(seq, word) for seq, word in spellings if len(seq) == length]
        for chunk in range(0, len(batch_all), 2048):
            batch = batch_all[chunk : chunk + 2048]
            ids = torch.tensor([ctx + list(seq) for seq, _ in batch])
            with torch.no_grad():
                logprobs = model(ids).logits.double().log_softmax(-1)
            n = len(ctx)
            for row, (seq, word) in enumerate(batch):
                lp = sum(logprobs[row, n - 1 + i, t].item() for i, t in enumerate(seq))
                lp += torch.logsumexp(logprobs[row, -1][boundary], 0).item()
                entry = words.setdefault(word.lower(), [0.0, word, 0.0])
                entry[0] += math.exp(lp)
                if math.exp(lp) > entry[2]:
                    entry[1:] = [word, math.exp(lp)]
    ranked = sorted(words.values(), key=lambda v: v[0], reverse=True)[:k]
    return [(w, p) for p, w, _ in ranked]


class RecordingPredictor:
    """A predictor that keeps every text it was asked about and the words it showed: a held-out replay
    (`evaluate_file`) measures the model card's figures and, from the same calls, what a user saw."""

    def __init__(self, predictor):
        self._predictor = predictor
        self.shown: list[tuple[str, list[str]]] = []

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)

    def suggest(self, text: str):
        suggestions = self._predictor.suggest(text)
        self.shown.append((text, [s.word for s in suggestions]))
        return suggestions


_CAPITAL = re.compile(r"[A-Z]")


def capitals_allowed(word: str, typed: str, before: str, lexicon, in_text) -> bool:
    """Every capital of `word` is one the user typed there, the first letter at the start of a sentence, one of
    the word's form (the lexicon's, or the user's own in this text), or the rest of a word begun in capitals
    (two or more typed, as with caps lock: "AB" -> "ABOUT"). `in_text`: `lexicon.for_text(before)`."""
    from ondevice.keyboard.lexicon import sentence_start

    forms = {lexicon.form(word.lower()), in_text.form(word.lower())}
    letters = [c for c in typed if c.isalpha()]
    in_capitals = len(letters) >= 2 and all(c.isupper() for c in letters)
    for match in _CAPITAL.finditer(word):
        i = match.start()
        if i < len(typed):
            if typed[i] != word[i]:
                return False
        elif not (
            in_capitals or (i == 0 and sentence_start(before)) or any(len(f) > i and f[i] == word[i] for f in forms)
        ):
            return False
    return True


def assert_real_words_with_allowed_capitals(shown: list[tuple[str, list[str]]], lexicon) -> int:
    """Every word shown is a word of the lexicon (or of the user's text), starts with the letters typed, as
    typed, and has only allowed capitals; so is each word of a phrase, the ones after the first as next words
    after those before them. Returns how many words were checked."""
    from ondevice.keyboard.words import split_partial

    checked = 0
    indexes: dict[str, object] = {}
    for text, suggestions in shown:
        _, partial, _ = split_partial(text)
        for suggestion in suggestions:
            before = text[: len(text) - len(partial)]
            for i, word in enumerate(suggestion.split(" ")):
                typed = partial if i == 0 else ""
                if before not in indexes:
                    indexes[before] = lexicon.for_text(before)
                in_text = indexes[before]
                assert word.lower() in in_text, (text, suggestion)
                assert capitals_allowed(word, typed, before, lexicon, in_text), (text, suggestion)
                assert word.startswith(typed), (text, suggestion)
                before += word + " "
                checked += 1
    return checked


ALLOWED_DROP = 0.02  # how far below the model card's figures CI lets next-word Acc@3 and KSR@3 fall


def replay_ci_subset(subset: str) -> tuple[dict, dict, RecordingPredictor]:
    """Replay the bundled model on the model card's CI subset `subset` (a key of evaluation.json, which names
    its held-out file and line count): (the recorded figures, the live ones, the predictor with what it showed)."""
    from bundled_models import keyboard_gpt2_path
    from ondevice.keyboard import Predictor
    from ondevice.keyboard.report import evaluate_file

    bundle = keyboard_gpt2_path()
    recorded = json.loads((bundle / "evaluation.json").read_text())
    predictor = RecordingPredictor(Predictor("keyboard-gpt2"))
    held_out = bundle / Path(recorded[subset]["eval_file"]).name
    live = evaluate_file(predictor, held_out, recorded[f"{subset}_lines"])
    return recorded[subset], live, predictor


def assert_not_regressed(recorded: dict, live: dict) -> None:
    for metric in ("next_word_acc3", "ksr3"):
        assert live["model"][metric] >= recorded["model"][metric] - ALLOWED_DROP, metric
