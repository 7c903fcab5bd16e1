"""Backend: a written Core ML package, run by Core ML on a Mac and by our numpy evaluator of its ML
program (`coreml_runtime.mil_eval`) everywhere else. Implements the runtime's `CausalLM` / `Encoder`, so
verification and greedy decoding are the same code as for every other backend.

Everything needed comes from the package (config, lengths, names in its metadata): no checkpoint."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from canonical.config import ModelConfig, config_from_json
from canonical.errors import InputError, OndeviceError
from coreml_runtime.chunked import LAYERS, ChunkedModel, is_chunked_model, read_chunked_model
from coreml_runtime.interface import (
    ATTENTION_MASK,
    HIDDEN,
    HIDDEN_IN,
    HIDDEN_OUT,
    INPUT_IDS,
    KEY_CACHE,
    KEY_WINDOW_CACHE,
    LOGITS,
    MLM_LOGITS,
    POOLED,
    POSITION,
    SENTENCE_EMBEDDING,
    TOKEN_TYPE_IDS,
    VALUE_CACHE,
    cache_output,
)
from coreml_runtime.package import read_metadata


def _config(meta: dict[str, str], package: Path) -> ModelConfig:
    return config_from_json(meta["config"], f"{package}: metadata 'ondevice.config'")


class _Evaluator:
    """Runs functions through the numpy evaluator; state lives in a dict, as MLState would."""

    device = "numpy evaluator"

    def __init__(self, package: Path):
        from coreml_runtime.mil_eval import MilProgram

        self.program = MilProgram(package)

    def make_state(self):
        return self.program.make_state()

    def predict(self, function: str, inputs: dict, state=None) -> dict[str, np.ndarray]:
        return self.program.predict(inputs, function, state)


class _CoreML:
    """Runs functions through Core ML itself (macOS only): one MLModel per function, one MLState.

    compute_units: a `ct.ComputeUnit` name (CPU_ONLY, CPU_AND_GPU, CPU_AND_NE, ALL), so that benchmarks
    can put the same package on each device."""

    def __init__(self, package: Path, functions: list[str], compute_units: str = "CPU_AND_NE"):
        import coremltools as ct

        self.device = f"Core ML ({compute_units})"
        self.models = {
            name: ct.models.MLModel(
                str(package),
                compute_units=ct.ComputeUnit[compute_units],
                function_name=None if name == "main" else name,
            )
            for name in functions
        }

    def make_state(self):
        model = next(iter(self.models.values()))
        return model.make_state() if model.get_spec().description.state else None

    def predict(self, function: str, inputs: dict, state=None) -> dict[str, np.ndarray]:
        model = self.models[function]
        return model.predict(inputs) if state is None else model.predict(inputs, state=state)


def _runner(package: Path, functions: list[str], use_coreml: bool | None, compute_units: str = "CPU_AND_NE"):
    use_coreml = sys.platform == "darwin" if use_coreml is None else use_coreml
    if use_coreml and sys.platform != "darwin":
        raise OndeviceError("Core ML prediction needs macOS; use the numpy evaluator on this system")
    return _CoreML(package, functions, compute_units) if use_coreml else _Evaluator(package)


def _chunks(outputs: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """Concatenate the per-chunk head outputs `prefix_0, prefix_1, ...` (1, V_j, 1, S) -> (S, V)."""
    parts = [outputs[f"{prefix}_{j}"] for j in range(len(outputs)) if f"{prefix}_{j}" in outputs]
    return np.concatenate(parts, axis=1)[0, :, 0, :].T.astype(np.float32)


class CoreMLCausalLM:
    backend = "coreml"

    def __init__(
        self, package: Path, meta: dict[str, str], use_coreml: bool | None = None, compute_units: str = "CPU_AND_NE"
    ):
        self.config = _config(meta, package)
        self.meta = meta
        self.capacity = int(meta["context"])
        self.chunk = int(meta["seq_lens"])
        self.functions = meta["functions"].split(",")
        self._open(package, use_coreml, compute_units)
        self.io_cache = meta["kv_cache"] == "io"
        self.cache_shapes = _cache_shapes(meta, self.config, self.capacity)
        # A ring of window slots (Gemma 3's sliding layers) holds R = window + longest call slots, and each call
        # writes a whole call's slots, padding included: a write at position p replaces p - R, so a rewind keeps the
        # ring only to lengths >= (the highest slot ever written) - longest call; past that it starts over and reads
        # the kept prefix again (ane_model/static_cache.py, WindowStaticKVCache).
        self._ring_slack = self.chunk if KEY_WINDOW_CACHE in self.cache_shapes else None
        self._tokens: list[int] = []
        self._length = 0
        self._written = 0
        self.trim(0)

    def _open(self, package: Path, use_coreml: bool | None, compute_units: str) -> None:
        self.runner = _runner(package, self.functions, use_coreml, compute_units)

    @property
    def device(self) -> str:
        return self.runner.device

    def _fresh_state(self):
        return self.runner.make_state()

    def _run(self, function: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.predict(function, inputs, self.state)

    @property
    def length(self) -> int:
        return self._length

    @property
    def rewindable(self) -> int | None:
        """How many tokens a trim can take back and keep the cache (None: any number); a longer rewind reads the
        kept tokens again."""
        if self._ring_slack is None:
            return None
        return self._length - max(0, self._written - self._ring_slack)

    def trim(self, length: int) -> None:
        """Slots past `length` keep stale keys; the mask hides them and the next writes replace them."""
        if not 0 <= length <= self._length:
            raise InputError(f"cannot trim a cache of {self._length} tokens to {length}")
        if length and self.rewindable is not None and self._length - length > self.rewindable:
            kept = self._tokens[:length]
            self.trim(0)
            self.prefill(kept)
            return
        if length == 0:
            self._written = 0
            self.state = None if self.io_cache else self._fresh_state()
            if self.io_cache:
                dtype = np.float16 if self.meta["precision"] == "fp16" else np.float32
                self.caches = {name: np.zeros(shape, dtype) for name, shape in self.cache_shapes.items()}
        self._length = length
        del self._tokens[length:]

    def _call(self, function: str, ids: list[int], real: int) -> np.ndarray:
        inputs = {INPUT_IDS: np.array([ids], dtype=np.int32), POSITION: np.array([self._length], dtype=np.int32)}
        if self.io_cache:
            inputs |= self.caches
        out = self._run(function, inputs)
        self._written = max(self._written, self._length + len(ids))
        if self.io_cache:
            self.caches = {name: out[cache_output(name)] for name in self.caches}
        self._length += real
        self._tokens += ids[:real]
        return _chunks(out, LOGITS)[:real]

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        tokens = list(token_ids)
        if not tokens:
            raise InputError("prefill needs at least one token")
        if self._length + len(tokens) > self.capacity:
            raise InputError(f"{self._length + len(tokens)} tokens exceed the package's context of {self.capacity}")
        prefill_fn = "prefill" if "prefill" in self.functions else "main"
        logits = []
        while tokens:
            part = tokens[: self.chunk]
            # A padded chunk writes its padding past the real tokens (masked, overwritten later), but
            # its positions must stay inside the position tables, which a package may hold for its context
            # only (RoPE): near the end, go token by token.
            if len(part) > 1 and self._length + self.chunk <= min(self.capacity, self.config.max_positions):
                logits.append(self._call(prefill_fn, part + [0] * (self.chunk - len(part)), len(part)))
                tokens = tokens[len(part) :]
            else:
                logits.append(self.decode(tokens.pop(0))[None])
        return np.concatenate(logits, axis=0)

    def decode(self, token_id: int) -> np.ndarray:
        if self._length + 1 > self.capacity:
            raise InputError(f"{self._length + 1} tokens exceed the package's context of {self.capacity}")
        return self._call("decode" if "decode" in self.functions else "main", [token_id], 1)[0]


def _cache_shapes(meta: dict[str, str], config, capacity: int) -> dict[str, tuple[int, ...]]:
    """Each cache's shape, as the package's interface records it (a package written before it recorded them: keys
    and values of every layer over the context)."""
    for function in json.loads(meta.get("interface", "{}")).values():
        if function.get("cache_shapes"):
            return {name: tuple(shape) for name, shape in function["cache_shapes"].items()}
    shape = (config.num_layers, config.kv_width, 1, capacity)
    return {KEY_CACHE: shape, VALUE_CACHE: shape}


class ChunkedCoreMLCausalLM(CoreMLCausalLM):
    """A chunked model (`coreml_runtime/chunked.py`): each step runs the manifest's chain of functions across the
    parts, the hidden states of one the input of the next, every part of layers with a state of its own."""

    def __init__(self, model: ChunkedModel, use_coreml: bool | None = None, compute_units: str = "CPU_AND_NE"):
        self.chunked = model
        super().__init__(model.directory, model.metadata, use_coreml, compute_units)

    def _open(self, package: Path, use_coreml: bool | None, compute_units: str) -> None:
        parts = self.chunked.parts
        self.runners = [_runner(p.path, p.metadata["functions"].split(","), use_coreml, compute_units) for p in parts]
        self.inputs = [
            {name: set(f["inputs"]) for name, f in json.loads(p.metadata["interface"]).items()} for p in parts
        ]

    @property
    def device(self) -> str:
        return f"{self.runners[0].device}, {len(self.runners)} parts"

    def _fresh_state(self):
        return [runner.make_state() if part.role == LAYERS else None
                for runner, part in zip(self.runners, self.chunked.parts, strict=True)]  # fmt: skip

    def _run(self, function: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part, name in self.chunked.chain(function):
            available = {**inputs, HIDDEN_IN: out.get(HIDDEN_OUT)}
            feed = {key: value for key, value in available.items() if key in self.inputs[part][name]}
            out = self.runners[part].predict(name, feed, self.state[part])  # type: ignore[index]  # a list per part
        return out


class CoreMLEncoder:
    backend = "coreml"

    def __init__(
        self, package: Path, meta: dict[str, str], use_coreml: bool | None = None, compute_units: str = "CPU_AND_NE"
    ):
        self.config = _config(meta, package)
        self.meta = meta
        self.lengths = sorted(int(n) for n in meta["seq_lens"].split(","))
        self.inputs = json.loads(meta["interface"])["main"]["inputs"]
        self.runner = _runner(package, ["main"], use_coreml, compute_units)
        self.device = self.runner.device

    def encode(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        batch, seq = input_ids.shape
        fitting = [n for n in self.lengths if n >= seq]
        if not fitting:
            raise InputError(f"{seq} tokens exceed the package's longest sequence length {self.lengths[-1]}")
        length = fitting[0]
        types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        rows: dict[str, list[np.ndarray]] = {}
        for b in range(batch):  # the package takes batch 1
            feed = {INPUT_IDS: input_ids[b], ATTENTION_MASK: attention_mask[b], TOKEN_TYPE_IDS: types[b]}
            padded = {
                name: np.pad(np.asarray(v, dtype=np.int32), (0, length - seq))[None]
                for name, v in feed.items()
                if name in self.inputs
            }
            out = self.runner.predict("main", padded)
            rows.setdefault("hidden", []).append(out[HIDDEN][0, :, 0, :seq].T)
            for key, name in (("pooled", POOLED), ("sentence_embedding", SENTENCE_EMBEDDING)):
                if name in out:
                    rows.setdefault(key, []).append(out[name][0])
            if f"{MLM_LOGITS}_0" in out:
                rows.setdefault("mlm_logits", []).append(_chunks(out, MLM_LOGITS)[:seq])
        return {key: np.stack(parts).astype(np.float32) for key, parts in rows.items()}


def load_package(package: str | Path, use_coreml: bool | None = None, compute_units: str = "CPU_AND_NE"):
    """A `CausalLM` (causal families) or `Encoder` over a package written by `convert --to coreml`.

    compute_units (Core ML only): CPU_ONLY, CPU_AND_GPU, CPU_AND_NE (default) or ALL."""
    package = Path(package)
    if is_chunked_model(package):
        return ChunkedCoreMLCausalLM(read_chunked_model(package), use_coreml, compute_units)
    meta = read_metadata(package)
    cls = CoreMLCausalLM if _config(meta, package).is_causal else CoreMLEncoder
    return cls(package, meta, use_coreml, compute_units)
