"""Chunked Core ML models (`convert/coreml_chunks.py`, format in `coreml_runtime/chunked.py`): every Llama-family
dialect and GPT-2, tied and untied, split into parts, run through the numpy evaluator part after part against
transformers (prefill, greedy decode through every part's cache, rewinds), the same logits bit for bit as the single
package of the same checkpoint, a tied table stored once, and each way a folder of parts can be wrong refused in one
line before anything runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from convert.checkpoint import load_checkpoint
from convert.coreml import CoreMLOptions, convert_to_coreml, stored_parameters
from convert.coreml_chunks import PART_LIMIT, chunk_count, convert_chunked, part_bytes, split_layers
from coreml_runtime.chunked import MANIFEST, read_chunked_model, tokenizer_dir
from coreml_runtime.package import weights_path
from ondevice.backends.coreml import load_package
from ondevice.reference import load_reference
from ondevice.verify import verify_package
from tests.cli import assert_one_line_error, run_cli
from tests.families import Case, make
from tests.packages import CONTEXT, GPT2, MISTRAL, PREFILL, QWEN2, QWEN3, QWEN3_NEAR_TIE, SEQ, check_near_tie

STATE = CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,))
THREE_LAYERS = {"num_hidden_layers": 3}
CASES = {  # name: (checkpoint, parts of layers); three layers in two parts: an uneven split (2 + 1)
    "llama-untied": (Case("llama", "llama, GQA 3:1, 3 layers", THREE_LAYERS, seed=3, tokenizer=True), 2),
    "mistral-one-kv-head": (MISTRAL, 2),
    "qwen2-tied-biases": (QWEN2, 2),
    "qwen3-tied-two-head-chunks": (QWEN3, 2),
    "gpt2": (GPT2, 2),
}
ALSO = {"mistral-one-kv-head, again": CASES["mistral-one-kv-head"]}
STEPS = 24  # greedy steps through the parts' caches: past QWEN3's measured near-tie at step 17


@pytest.fixture(scope="module")
def chunked(tmp_path_factory, family_root):
    """(chunked model, checkpoint) by case name, converted once each."""
    root, built = tmp_path_factory.mktemp("chunked"), {}

    def get(name: str):
        if name not in built:
            case, parts = (CASES | ALSO)[name]
            checkpoint = make(case, family_root)
            out = root / name.replace(", ", "-")
            built[name] = (convert_chunked(checkpoint, out, STATE, chunks=parts, progress=False), checkpoint)
        return built[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_model_matches_transformers(chunked, name):
    """fp16 through every part: cosine >= 0.9999 on the prompt, greedy tokens through the parts' caches exact but at a
    measured near-tie of the reference (the single package departs there too: tests/packages.py)."""
    model, checkpoint = chunked(name)
    report = verify_package(str(model), str(checkpoint), seq_len=SEQ, greedy_steps=STEPS)
    assert report.comparisons and all(c.cosine >= 0.9999 for c in report.comparisons), report.comparisons
    assert len(report.greedy_ours) == STEPS
    pairs = list(zip(report.greedy_ours, report.greedy_reference, strict=True))
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    if first is not None:
        assert name.startswith("qwen3") and first >= QWEN3_NEAR_TIE, (name, first)
        check_near_tie(checkpoint, report.greedy_reference[:first])
    else:
        assert report.passed, report


@pytest.mark.parametrize("name", ["qwen3-tied-two-head-chunks", "llama-untied"])
def test_chunked_model_gives_the_single_packages_logits(chunked, name, tmp_path):
    """The same checkpoint as one package and as parts: identical logits, bit for bit, through prefill, decode, a
    rewind and decode again (the parts hand fp16 hidden states on, as the single package's layers do inside); and
    `--chunks 1` too."""
    model, checkpoint = chunked(name)
    single = convert_to_coreml(checkpoint, tmp_path / "single.mlpackage", STATE, progress=False)
    one_part = convert_chunked(checkpoint, tmp_path / "one-part", STATE, chunks=1, progress=False)
    runtimes = [load_package(single), load_package(model), load_package(one_part)]
    prompt = np.random.default_rng(1).integers(0, load_checkpoint(checkpoint).config.vocab_size, 21).tolist()

    def run(lm) -> list[np.ndarray]:
        out = [lm.prefill(prompt)]
        out += [lm.decode(t)[None] for t in (5, 7, 11)]
        lm.trim(len(prompt) + 1)  # rewind two tokens, then go another way
        out += [lm.decode(t)[None] for t in (13, 17)]
        out.append(lm.prefill(prompt[:3]))
        return out

    expected, *others = (run(lm) for lm in runtimes)
    for got in others:
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_array_equal(a, b)
    reference = load_reference(load_checkpoint(checkpoint))
    want = reference.prefill(prompt)
    cosine = float((want * expected[0]).sum() / np.linalg.norm(want) / np.linalg.norm(expected[0]))
    assert cosine > 0.9999  # the outputs compared are the model's, not some shared error


def test_a_compressed_chunked_model_gives_the_single_packages_logits(family_root, tmp_path):
    """int4: each part converts, compresses and saves its functions one at a time before merging them (bounded
    memory), and still gives the single int4 package's logits bit for bit, its prefill and decode sharing one copy
    of their compressed weights (the parts' weights add up to the single package's, give or take the RoPE tables)."""
    case, _ = CASES["qwen2-tied-biases"]
    checkpoint = make(case, family_root)
    options = CoreMLOptions(context=CONTEXT, seq_lens=(PREFILL,), compress="int4")
    single = convert_to_coreml(checkpoint, tmp_path / "single.mlpackage", options, progress=False)
    model = convert_chunked(checkpoint, tmp_path / "parts", options, chunks=2, progress=False)
    prompt = np.random.default_rng(2).integers(0, load_checkpoint(checkpoint).config.vocab_size, 19).tolist()
    outputs = []
    for lm in (load_package(single), load_package(model)):
        outputs.append([lm.prefill(prompt), *(lm.decode(t)[None] for t in (3, 9))])
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)
    cfg = load_checkpoint(checkpoint).config
    sizes = [weights_path(model / p["file"]).stat().st_size for p in read_chunked_model(model).manifest["parts"]]
    rope = 2 * 2 * CONTEXT * cfg.num_heads * cfg.head_dim * (len(sizes) - 1)
    assert sum(sizes) <= weights_path(single).stat().st_size + rope * 1.01, (sizes, rope)


@pytest.mark.parametrize("name", ["qwen3-tied-two-head-chunks", "qwen2-tied-biases", "llama-untied"])
def test_parts_store_each_weight_once(chunked, name):
    """The parts' weight files add up to the fp16 parameters (a tied table counted once) and what each part repeats:
    its RoPE tables (context x query width, cos and sin), which in real shapes are a fraction of a percent. The token
    table and head are one package's constants, and a part of layers holds its layers only."""
    model, checkpoint = chunked(name)
    ckpt = load_checkpoint(checkpoint)
    cfg, manifest = ckpt.config, read_chunked_model(model).manifest
    sizes = [weights_path(model / p["file"]).stat().st_size for p in manifest["parts"]]
    assert sizes == [p["weight_bytes"] for p in manifest["parts"]]
    parameters = 2 * sum(stored_parameters(cfg, ckpt.weights))
    rope = 2 * 2 * CONTEXT * cfg.num_heads * cfg.head_dim * (len(sizes) - 1)
    assert parameters <= sum(sizes) <= 1.01 * (parameters + rope), (sum(sizes), parameters, rope)
    table = 2 * cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    assert table <= sizes[0] <= table * 1.01  # embed and head: the table(s) and the final norm
    if name.startswith("qwen3"):  # a vocabulary of 20,000: the table is most of the model, the RoPE tables little
        assert sum(sizes) <= 1.05 * parameters


def test_manifest_names_parts_chain_and_source(chunked):
    model, checkpoint = chunked("llama-untied")
    manifest = json.loads((model / MANIFEST).read_text())
    files = ["embed_head.mlpackage", "layers_0.mlpackage", "layers_1.mlpackage"]
    assert [p["file"] for p in manifest["parts"]] == files
    assert [p["layers"] for p in manifest["parts"]] == [[0, 0], [0, 2], [2, 3]]
    assert [(s["part"], s["function"]) for s in manifest["chain"]["decode"]] == [
        (0, "embed_decode"), (1, "decode"), (2, "decode"), (0, "head_decode")
    ]  # fmt: skip
    layers = manifest["parts"][1]["functions"]["prefill"]
    assert layers == {
        "inputs": ["hidden_in", "position"], "outputs": ["hidden_out"], "states": ["kv_cache"], "cache_shapes": {}
    }  # fmt: skip
    assert manifest["model"]["source_weights_sha256"].keys() == {p.name for p in checkpoint.glob("*.safetensors")}
    for name in manifest["model"]["tokenizer_files"]:
        assert (model / name).read_bytes() == (checkpoint / name.removeprefix("tokenizer/")).read_bytes()
    assert (tokenizer_dir(model) / "tokenizer.json").is_file()
    assert json.loads((model / "config.json").read_text()) == json.loads((checkpoint / "config.json").read_text())


def test_layers_split_evenly_and_the_count_follows_the_size():
    assert split_layers(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert split_layers(4, 4) == [range(i, i + 1) for i in range(4)]
    for bad in (0, 5):
        with pytest.raises(Exception, match="the model has 4 layers"):
            split_layers(4, bad)


def test_iOS_chunks_by_size_and_refuses_what_no_part_can_hold(family_root):
    """By default an iOS model is cut into as few parts as keep each under PART_LIMIT; a chunk size counts the same
    way; a layer larger than the chunk size, or a table above the iOS limit, is refused."""
    ckpt = load_checkpoint(make(CASES["llama-untied"][0], family_root))
    cfg, weights = ckpt.config, ckpt.weights
    table, layer = part_bytes(cfg, weights, STATE)
    non_table = [t.numel() for n, t in weights.items() if not n.startswith(("tok_embed", "lm_head"))]
    assert layer == int(2 * sum(non_table) / cfg.num_layers) and table == 2 * 2 * 211 * 48
    assert chunk_count(cfg, weights, STATE, None, None) == 1  # tiny: one part under PART_LIMIT
    assert chunk_count(cfg, weights, STATE, None, 2 * layer) == 2  # two layers a part: 2 + 1
    assert chunk_count(cfg, weights, STATE, None, layer) == 3
    assert chunk_count(cfg, weights, STATE, 2, layer) == 2  # a count given wins
    with pytest.raises(Exception, match="above the chunk size"):
        chunk_count(cfg, weights, STATE, None, layer // 2)
    assert PART_LIMIT < 1_000_000_000


def _copy(model, tmp_path, name: str):
    return shutil.copytree(model, tmp_path / name, symlinks=True)


def _mutate_manifest(model, change) -> None:
    path = model / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("command", ["inspect", "verify", "generate"])
@pytest.mark.parametrize("damage", ["missing part", "part of another model", "reordered", "tampered part"])
def test_a_broken_chunked_model_is_refused_in_one_line(chunked, tmp_path, damage, command):
    model, checkpoint = chunked("mistral-one-kv-head")
    broken = _copy(model, tmp_path, "broken")
    if damage == "missing part":
        shutil.rmtree(broken / "layers_1.mlpackage")
        expected = "part 2 (layers_1.mlpackage) is missing"
    elif damage == "part of another model":  # the same checkpoint converted again: another model's id
        other, _ = chunked("mistral-one-kv-head, again")
        shutil.rmtree(broken / "layers_1.mlpackage")
        shutil.copytree(other / "layers_1.mlpackage", broken / "layers_1.mlpackage")
        expected = "part 2 (layers_1.mlpackage) belongs to another model"
    elif damage == "reordered":
        _mutate_manifest(broken, lambda m: m["parts"].reverse())
        expected = "is listed at 0 but was written as part 2"
    else:
        weights = weights_path(broken / "layers_0.mlpackage")
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        expected = "recorded at conversion: the part was altered"
    args = {"inspect": [broken], "verify": [broken, "--reference", checkpoint], "generate": [broken, "hello"]}
    assert_one_line_error(run_cli(command, *args[command]), expected)


def test_an_ios_package_above_the_limit_becomes_a_chunked_model(family_root, tmp_path, monkeypatch):
    """`--out NAME.mlpackage` for weights above what one iOS package holds writes a chunked model in the folder NAME,
    said in one line; `--chunks 1 --allow-large` keeps one file, and `--chunks 1` alone is refused naming the size.
    The limit is lowered to the tiny model's scale here (the real one is IOS_WEIGHT_LIMIT, 1 GB)."""
    import convert.coreml as coreml

    checkpoint = make(QWEN2, family_root)
    monkeypatch.setattr(coreml, "IOS_WEIGHT_LIMIT", 10_000)
    small = ["--to", "coreml", "--context", 48, "--seq-len", 8]
    done = run_cli("convert", checkpoint, *small, "--out", tmp_path / "big.mlpackage")
    assert done.exit_code == 0, done.output
    (said,) = [line for line in done.stderr.splitlines() if "instead" in line]
    assert "above the ~0 GB one iOS package holds" in said and f"chunked model to {tmp_path / 'big'}" in said
    assert f"wrote {tmp_path / 'big'}: chunked Core ML model" in " ".join(done.stdout.split())
    assert len(read_chunked_model(tmp_path / "big").parts) >= 2
    assert not (tmp_path / "big.mlpackage").exists()
    refused = run_cli("convert", checkpoint, *small, "--out", tmp_path / "one.mlpackage", "--chunks", 1)
    assert_one_line_error(refused, "--allow-large")
    kept = run_cli("convert", checkpoint, *small, "--out", tmp_path / "one.mlpackage", "--chunks", 1, "--allow-large")
    assert kept.exit_code == 0, kept.output
    assert (tmp_path / "one.mlpackage" / "Manifest.json").is_file() and not (tmp_path / "one").exists()


def test_convert_cli_writes_a_chunked_model_and_says_how(family_root, tmp_path):
    """A folder --out is a chunked model; the plan is one line on stderr; the result runs through generate and
    inspect; a chunked --out with a .mlpackage name, an encoder, an io cache or a count past the layers is refused."""
    checkpoint = make(QWEN2, family_root)
    out = tmp_path / "parts"
    done = run_cli("convert", checkpoint, "--to", "coreml", "--out", out, "--context", 48, "--seq-len", 8,
                   "--chunk-size", "40KB")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "chunked: the token table + head" in done.stderr and "2 parts of layers (1, 1 layers" in done.stderr
    assert "wrote" in done.stdout and "chunked Core ML model" in done.stdout
    assert len(read_chunked_model(out).parts) == 3
    shown = run_cli("inspect", out)
    assert shown.exit_code == 0, shown.output
    assert "chunked: 3 parts" in shown.stdout and "state  kv_cache [2, 16, 1, 48] fp16" in shown.stdout
    generated = run_cli("generate", out, "the cat", "--max-tokens", 4)
    assert generated.exit_code == 0, generated.output
    assert "4 tokens" in generated.stderr + generated.stdout and "on coreml" in generated.stderr + generated.stdout
    predicted = run_cli("predict", "the ca", "--model", out, "--backend", "coreml", "-k", 2)
    assert predicted.exit_code == 0, predicted.output
    assert predicted.stdout.strip()
    assert_one_line_error(run_cli("predict", "the ca", "--model", out), "runs on --backend coreml")
    for args, fragment in [
        (["--out", tmp_path / "x.mlpackage", "--chunks", 2], "give --out a folder name without .mlpackage"),
        (["--out", tmp_path / "y", "--chunks", 3], "--chunks 3: the model has 2 layers"),
        (["--out", tmp_path / "z", "--kv-cache", "io", "--target", "iOS17"], "needs iOS18/macOS15"),
        (["--out", tmp_path / "w", "--chunk-size", "lots"], "a size such as 950MB"),
        (["--out", tmp_path / "v", "--chunks", 2, "--chunk-size", "1GB"], "--chunk-size applies without --chunks"),
    ]:
        assert_one_line_error(run_cli("convert", checkpoint, "--to", "coreml", *args), fragment)
        assert not any(p.name.startswith(("x", "y", "z", "w", "v")) for p in tmp_path.iterdir())
    encoder = make(Case("bert", "bert"), family_root)
    assert_one_line_error(run_cli("convert", encoder, "--to", "coreml", "--out", tmp_path / "e"), "is an encoder")
