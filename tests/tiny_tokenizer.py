"""A tiny tokenizer for random-init checkpoints, made with the `tokenizers` library: a byte-level BPE trained
on a few sentences up to the model's vocabulary size, so that every id of the vocabulary is a token and
text of these sentences' letters round-trips.

`mlx_lm.load` needs a tokenizer beside the weights, and chat generation needs a chat template; nothing here
is downloaded. Byte-level BPE is what Qwen2's tokenizer class rebuilds from a tokenizer.json (transformers
picks that class by model_type and keeps only the vocabulary and merges), so the same files serve every
dialect. Ids 0, 1, 2 are `<unk>`, `<s>` and `</s>` (the random Llama checkpoints' bos 1 and eos 2)."""

from __future__ import annotations

from pathlib import Path

SPECIAL = ["<unk>", "<s>", "</s>"]
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small model runs on the phone and the laptop",
    "every token is read once per step of decoding",
    "pack my box with five dozen liquor jugs",
    "how vexingly quick daft zebras jump",
    "sphinx of black quartz judge my vow",
    "the system says hello and the user asks a question",
    "the assistant answers with a short reply",
    "waltz bad nymph for quick jigs vex",
    "we write tests that build their own checkpoints",
]
# A template in the style of real ones: a role header per message, an end-of-turn token, and the generation
# prompt opening the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def write_tokenizer(directory: Path, vocab_size: int, chat_template: str | None = CHAT_TEMPLATE):
    """Save a tokenizer of exactly `vocab_size` tokens into `directory` with transformers' `save_pretrained`
    (tokenizer.json, tokenizer_config.json and, with a template, chat_template.jinja); return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = sorted(set("".join(s.replace(" ", "Ġ") for s in SENTENCES)))  # ByteLevel spells a space Ġ
    tok.train_from_iterator(
        SENTENCES,
        trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=alphabet, show_progress=False
        ),
    )
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:  # the sentences ran out of merges: fill the rest of the ids with tokens of their own
        tok.add_tokens([f"<extra_{i}>" for i in range(missing)])
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
    return fast
