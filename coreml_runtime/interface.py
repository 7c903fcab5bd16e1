"""The names of a package's inputs, outputs and states: its public interface (an app binds to them), so
they live here, once, for the exporter that writes them and the runtimes that feed them."""

from __future__ import annotations

INPUT_IDS = "input_ids"
POSITION = "position"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
KEY_CACHE = "key_cache"
VALUE_CACHE = "value_cache"
KEY_CACHE_OUT = "key_cache_out"
VALUE_CACHE_OUT = "value_cache_out"
HIDDEN = "last_hidden_state"
POOLED = "pooler_output"
SENTENCE_EMBEDDING = "sentence_embedding"
LOGITS = "logits"
MLM_LOGITS = "mlm_logits"


def logits_names(prefix: str, count: int) -> list[str]:
    """One output per vocabulary-head chunk (ANE rule 7): a concatenated (1, V, 1, S) would exceed the
    ANE's largest dimension."""
    return [f"{prefix}_{j}" for j in range(count)]


# A chunked model (`coreml_runtime/chunked.py`): every step's hidden states go out as HIDDEN_OUT and into the next
# step as HIDDEN_IN, (1, C, 1, S).
HIDDEN_IN = "hidden_in"
HIDDEN_OUT = "hidden_out"
KV_CACHE = "kv_cache"  # a part's state: its layers' keys, then their values (2 L, C_kv, 1, T)
