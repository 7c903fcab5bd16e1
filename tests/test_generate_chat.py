"""`ondevice generate` for chat models: the tokenizer's chat template (`--chat`, `--system`), every
end-of-sequence id the checkpoint declares (config.json and generation_config.json), streaming on every
backend including a converted Core ML package (run here by the numpy evaluator), and the options refused in
one line before anything is loaded."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from convert.checkpoint import load_checkpoint
from ondevice.backends import load_backend
from ondevice.generate import generate
from ondevice.runtime import greedy_tokens
from tests.cli import assert_one_line_error, run_cli
from tests.tiny_tokenizer import write_tokenizer

runner = CliRunner()
LLAMA = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=64)
SYSTEM, USER = "answer with a short reply", "the quick brown fox"


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A Llama checkpoint with a tokenizer that has a chat template."""
    from tests.checkpoints import make_llama

    directory = make_llama(tmp_path_factory.mktemp("chat"), "llama", seed=11, **LLAMA)
    write_tokenizer(directory, 211)
    return directory


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A tiny GPT-2 with a tokenizer, converted to Core ML: the tokenizer travels inside the package. fp32, so
    that the evaluator's greedy tokens are torch-ane fp32's exactly (fp16 may flip a near-tie)."""
    from convert.coreml import CoreMLOptions, convert_to_coreml
    from tests.checkpoints import make_gpt2

    root = tmp_path_factory.mktemp("coreml")
    checkpoint = make_gpt2(root / "gpt2")
    write_tokenizer(checkpoint, 211, chat_template=None)
    out = convert_to_coreml(
        checkpoint, root / "gpt2.mlpackage", CoreMLOptions(dtype="fp32", context=32, seq_lens=(8,)), progress=False
    )
    return checkpoint, out


# --- the chat template ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["mlx", "torch-ane"])
def test_chat_formats_the_prompt_with_the_template_and_a_system_message(chat_dir, backend):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    # the template, rendered by hand: bos, a header and end-of-turn per message, the assistant's header
    rendered = f"<s>system: {SYSTEM}</s>user: {USER}</s>assistant:"
    prompt = tokenizer.encode(rendered, add_special_tokens=False)
    assert prompt[0] == 1 and prompt.count(2) == 2  # <s> and two </s> were read as the special tokens
    lm = load_backend(backend, load_checkpoint(chat_dir))
    expected = list(generate(lm, prompt, 12, stop=lm.config.eos_token_ids))
    out = _ok(
        run_cli("generate", chat_dir, USER, "--chat", "--system", SYSTEM, "--max-tokens", 12, "--backend", backend)
    )
    assert out.rstrip("\n") == tokenizer.decode(expected, skip_special_tokens=True)
    # without --system: one user turn
    prompt = tokenizer.encode(f"<s>user: {USER}</s>assistant:", add_special_tokens=False)
    expected = list(generate(lm, prompt, 12, stop=lm.config.eos_token_ids))
    out = _ok(run_cli("generate", chat_dir, USER, "--chat", "--max-tokens", 12, "--backend", backend))
    assert out.rstrip("\n") == tokenizer.decode(expected, skip_special_tokens=True)


# Gemma 3's template, reduced: turns are `<start_of_turn>{role}\n...<end_of_turn>\n`, the assistant is "model", and a
# system message joins the first user turn
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set first = '' %}{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ first if loop.first else '' }}{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.mark.parametrize("backend", ["mlx", "torch-ane"])
def test_gemma_chat_renders_its_own_template(tmp_path_factory, backend):
    """Gemma 3 through the same chat path: its turn markers, the system message inside the first user turn, and
    generation that stops at the ids its config declares."""
    from transformers import AutoTokenizer

    from convert.random_checkpoints import make_gemma3

    directory = make_gemma3(tmp_path_factory.mktemp("gemma-chat"), seed=11, vocab_size=211)
    write_tokenizer(directory, 211, chat_template=GEMMA_TEMPLATE)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rendered = f"<s><start_of_turn>user\n{SYSTEM}\n\n{USER}<end_of_turn>\n<start_of_turn>model\n"
    prompt = tokenizer.encode(rendered, add_special_tokens=False)
    lm = load_backend(backend, load_checkpoint(directory))
    expected = list(generate(lm, prompt, 12, stop=lm.config.eos_token_ids))
    assert len(expected) > 3, expected  # a real continuation to compare
    out = _ok(
        run_cli("generate", directory, USER, "--chat", "--system", SYSTEM, "--max-tokens", 12, "--backend", backend)
    )
    assert out.rstrip("\n") == tokenizer.decode(expected, skip_special_tokens=True)


def test_chat_on_an_mlx_export_uses_the_template_it_carries(chat_dir, tmp_path):
    export = tmp_path / "mlx"
    _ok(run_cli("convert", chat_dir, "--to", "mlx", "--out", export, "--dtype", "fp32"))
    assert (export / "chat_template.jinja").is_file()
    args = (USER, "--chat", "--system", SYSTEM, "--max-tokens", 10)
    assert _ok(run_cli("generate", export, *args)) == _ok(run_cli("generate", chat_dir, *args))


def test_chat_is_refused_without_a_template_and_system_without_chat(chat_dir, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(chat_dir, plain)
    (plain / "chat_template.jinja").unlink()
    assert_one_line_error(run_cli("generate", plain, USER, "--chat"), "no chat template", "drop --chat")
    assert _ok(run_cli("generate", plain, USER, "--max-tokens", 3))  # plain continuation still works
    assert_one_line_error(run_cli("generate", chat_dir, USER, "--system", SYSTEM), "--system", "add --chat")
    assert_one_line_error(run_cli("generate", chat_dir, "--ids", "1 2", "--chat"), "--chat", "not --ids")


# --- end-of-sequence ids ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def free_run(chat_dir):
    """Greedy tokens after a prompt, ignoring every end-of-sequence id, and an id that never comes."""
    ids = _ok(run_cli("generate", chat_dir, "--ids", "5 9 11", "--max-tokens", 24, "--ignore-eos")).split()
    tokens = [int(t) for t in ids]
    assert len(set(tokens)) > 6, tokens  # a real continuation
    unused = next(t for t in range(3, 211) if t not in tokens)
    return tokens, unused


@pytest.mark.parametrize("place", ["first", "second"])
@pytest.mark.parametrize("backend", ["mlx", "torch-ane"])
def test_generation_stops_at_every_declared_eos_id(chat_dir, free_run, tmp_path, place, backend):
    """config.json says eos 2; generation_config.json lists two more, Llama 3 style. Generation stops at a
    token of generation_config.json's list, whether it is listed first or second."""
    tokens, unused = free_run
    k = next(i for i in range(4, len(tokens)) if tokens[i] not in tokens[:i] and tokens[i] != 2)
    hit = tokens[k]
    directory = tmp_path / "ckpt"
    shutil.copytree(chat_dir, directory)
    listed = [hit, unused] if place == "first" else [unused, hit]
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": listed}))
    assert load_checkpoint(directory).config.eos_token_ids == (2, *listed)
    out = _ok(run_cli("generate", directory, "--ids", "5 9 11", "--max-tokens", 24, "--backend", backend))
    assert [int(t) for t in out.split()] == tokens[: k + 1]
    if backend == "mlx":  # an MLX export keeps every id, for our runtime and for mlx-lm
        import mlx_lm

        export = tmp_path / "mlx"
        _ok(run_cli("convert", directory, "--to", "mlx", "--out", export, "--dtype", "fp32"))
        out = _ok(run_cli("generate", export, "--ids", "5 9 11", "--max-tokens", 24))
        assert [int(t) for t in out.split()] == tokens[: k + 1]
        assert json.loads((export / "config.json").read_text())["eos_token_id"] == [2, *listed]
        assert set(mlx_lm.load(str(export))[1].eos_token_ids) == {2, *listed}


# --- streaming on every backend ---------------------------------------------------------------------


def _streams(lm, prompt: list[int], steps: int) -> list[int]:
    """The tokens of `generate`, checking that each is handed over before the next is computed: the cache
    holds the prompt when the first token arrives, and one more token for each after."""
    tokens = []
    for i, token in enumerate(generate(lm, prompt, steps)):
        assert lm.length == len(prompt) + i, (lm.length, i)
        tokens.append(token)
    return tokens


def test_every_backend_streams_the_same_greedy_tokens(package):
    from ondevice.backends.coreml import load_package

    checkpoint, path = package
    prompt = [5, 17, 42, 7, 99, 3, 150, 21, 60, 8, 31]  # longer than the package's prefill chunk of 8
    ckpt = load_checkpoint(checkpoint)
    expected = greedy_tokens(load_backend("torch-ane", ckpt), prompt, 16)
    assert len(set(expected)) > 4
    for lm in (load_backend("torch-ane", ckpt), load_backend("mlx", ckpt), load_package(path)):
        assert _streams(lm, prompt, 16) == expected, lm.backend


def test_generate_runs_a_core_ml_package(package):
    from transformers import AutoTokenizer

    checkpoint, path = package
    ckpt = load_checkpoint(checkpoint)
    expected = greedy_tokens(load_backend("torch-ane", ckpt), [5, 17, 42], 12)
    for backend in ([], ["--backend", "coreml"]):  # a package picks the coreml backend by itself
        out = _ok(run_cli("generate", path, "--ids", "5, 17 42", "--max-tokens", 12, "--ignore-eos", *backend))
        assert [int(t) for t in out.split()] == expected
    # a text prompt, through the tokenizer inside the package
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompt = tokenizer.encode("the quick brown fox")
    expected = greedy_tokens(load_backend("torch-ane", ckpt), prompt, 10)
    out = _ok(run_cli("generate", path, "the quick brown fox", "--max-tokens", 10, "--ignore-eos"))
    assert out.rstrip("\n") == tokenizer.decode(expected, skip_special_tokens=True)


def test_core_ml_package_refusals(package):
    checkpoint, path = package
    assert_one_line_error(run_cli("generate", path, "--ids", "1", "--backend", "mlx"), "runs on --backend coreml")
    assert_one_line_error(run_cli("generate", path, "--ids", "1", "--dtype", "fp16"), "--dtype does not apply")
    assert_one_line_error(run_cli("generate", checkpoint, "--ids", "1", "--backend", "coreml"), "give a PATH.mlpackage")
    assert_one_line_error(run_cli("generate", path, "--ids", "1 2 3", "--max-tokens", 31), "the model holds 32")
    assert_one_line_error(run_cli("generate", path, "hello", "--chat"), "no chat template")


# --- options refused in one line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "torch-ane", "--dtype", "bf16"], "--dtype bf16 is not available on the torch-ane backend"),
        (["--dtype", "int4"], "unknown dtype 'int4'"),
        (["--temperature", "nan"], "temperature must be a finite number >= 0, got nan"),
        (["--temperature", "inf"], "temperature must be a finite number >= 0, got inf"),
        (["--temperature", "-0.5"], "temperature must be a finite number >= 0, got -0.5"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["--top-p", "1.01"], "top-p must be in (0, 1]"),
        (["--top-p", "nan"], "top-p must be in (0, 1]"),
        (["--top-k", "0"], "top-k must be at least 1"),
        (["--max-tokens", "0"], "max tokens must be at least 1"),
        (["--max-tokens", "-3"], "max tokens must be at least 1"),
        (["--temperature", "1", "--seed", "-1"], "--seed -1: must be 0 or more"),
        # sampling options with greedy decoding (the default --temperature 0) would change nothing
        (["--top-k", "5"], "--top-k applies with sampling only (--temperature above 0)"),
        (["--seed", "3"], "--seed applies with sampling only"),
        (["--top-p", "0.5", "--seed", "3"], "--top-p and --seed apply with sampling only"),
    ],
)
def test_bad_generation_options_are_refused_in_one_line(chat_dir, args, message):
    assert_one_line_error(run_cli("generate", chat_dir, "--ids", "1 2", *args), message)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (5, "chat_template is a int, not a template"),
        (["not", "a", "template"], "tokenizer cannot be loaded"),
        ("{% if messages %}{{ messages[0]['content'] }", "the chat template is not valid Jinja (line 1: "),
    ],
)
def test_a_broken_chat_template_is_named(chat_dir, tmp_path, template, message):
    """A chat template that is not a string, or not valid Jinja, is said to be so (not "refuses these messages")."""
    directory = shutil.copytree(chat_dir, tmp_path / "broken")
    path = directory / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    settings["chat_template"] = template
    path.write_text(json.dumps(settings))
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    assert_one_line_error(run_cli("generate", directory, USER, "--chat", "--backend", "torch-ane"), message)


def test_another_models_tokenizer_is_refused(chat_dir, tmp_path):
    """A tokenizer whose ids reach past the model's vocabulary (here the bundled model's 8,192 tokens for a model of
    211) is refused when it is loaded, before any id can index past the embedding."""
    from bundled_models import keyboard_gpt2_path

    directory = shutil.copytree(chat_dir, tmp_path / "foreign")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(keyboard_gpt2_path() / name, directory / name)
    assert_one_line_error(
        run_cli("generate", directory, USER, "--backend", "torch-ane"),
        "the tokenizer has 8,192 tokens, more than the model's vocabulary of 211",
    )
    assert_one_line_error(
        run_cli("predict", "hello ", "--model", directory), "8,192 tokens", "another model's tokenizer"
    )


def test_text_that_is_not_utf8_is_refused_in_one_line(chat_dir):
    """The shell hands bytes that are not UTF-8 to Python as lone surrogates; they are named, not a traceback."""
    assert_one_line_error(
        run_cli("generate", chat_dir, "\udcff\udcfe abc", "--backend", "torch-ane"),
        "PROMPT is not valid UTF-8 text (byte 0xff at character 0)",
    )
    assert_one_line_error(
        run_cli("generate", chat_dir, "hi", "--chat", "--system", "ok \udcc3", "--backend", "torch-ane"),
        "--system is not valid UTF-8 text (byte 0xc3 at character 3)",
    )
    assert_one_line_error(run_cli("predict", "\udcff\udcfe hello ", "--model", chat_dir), "TEXT is not valid UTF-8")


def test_running_a_package_prints_only_our_own_lines(package):
    """In a fresh process (coremltools' import notices come once per process): generate on a package writes the
    tokens to stdout and its one summary line to stderr, none of coremltools' ten import notices; --verbose shows
    them."""
    import subprocess
    import sys
    from pathlib import Path

    _, path = package
    command = [
        str(Path(sys.executable).with_name("ondevice")),
        "generate",
        str(path),
        "--ids",
        "1 2",
        "--max-tokens",
        "2",
    ]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and " tokens in " in lines[0] and "on coreml" in lines[0], quiet.stderr
    loud = subprocess.run([*command, "--verbose"], capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and len(loud.stderr.strip().splitlines()) > 1, loud.stderr
