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
# Gemma 3's sliding-window layers: keys and values in a ring of window + prefill slots (ane_model/static_cache.py)
KEY_WINDOW_CACHE = "key_window_cache"
VALUE_WINDOW_CACHE = "value_window_cache"
# A causal LM's cache tensors, by the role the model gives them (`CausalLM.static_cache_shapes`), in this order
CACHE_NAMES = {"keys": KEY_CACHE, "values": VALUE_CACHE, "window_keys": KEY_WINDOW_CACHE,
               "window_values": VALUE_WINDOW_CACHE}  # fmt: skip


def cache_output(name: str) -> str:
    """The output an io-cache package returns an updated cache under (`key_cache` -> `key_cache_out`)."""
    return f"{name}_out"


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
