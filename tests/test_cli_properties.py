"""Every command, driven with generated option values (hypothesis): whatever a user types, the answer is exit 0,
exit 1 (a stated failure, such as a parity FAIL) or exit 2 (a usage error, or one line saying what is wrong),
and never a traceback. Nothing is written outside the outputs asked for, and the working directory is a
scratch folder, so a generated `--out . --overwrite` could not destroy anything even if it were obeyed.

Kept fast: the generated values reach real work only rarely (a tiny model, a short sequence), conversions and
benchmarks always meet a refusal first (an --out that exists and is not ours; a model that does not resolve),
and each command gets a small number of examples. `COUNTS` records how many inputs each command was given."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ondevice.cli import app

EXAMPLES = int(os.environ.get("ONDEVICE_PROPERTY_EXAMPLES", "30"))  # more for a deeper search
COUNTS: Counter = Counter()
EXITS: Counter = Counter()  # (command, exit status) -> how often

# Values a user might type where a number is expected: 0 and negatives as real values, huge, non-numeric.
INTS = st.sampled_from(["0", "-1", "1", "3", "8", "161", "4096", "99999999999999999999", "-5", "1.5", "abc", ""])
FLOATS = st.sampled_from(["nan", "inf", "-inf", "0", "-1", "0.5", "1", "2.0", "1e308", "x", ""])
# Free text without NUL (no shell can pass one), including markup-looking brackets and unicode, and text whose bytes
# were not UTF-8 (Python hands those over as lone surrogates).
TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=16
) | st.sampled_from(["\udcff\udcfe hello ", "caf\udcc3", "\x01\x02\udcff\udcfe abc"])


@pytest.fixture(scope="module")
def arena(tmp_path_factory, gpt2_dir, bert_dir):
    """A scratch folder with things to point options at: checkpoints, an MLX export, files, folders."""
    root = tmp_path_factory.mktemp("arena")
    (root / "notes.txt").write_text("one line of text\n")
    (root / "empty.txt").write_text("")
    docs = root / "docs"
    docs.mkdir()
    (docs / "keep.txt").write_text("keep")
    package_like = root / "docs.mlpackage"
    package_like.mkdir()
    (package_like / "keep.txt").write_text("keep")
    broken = root / "broken.mlpackage"
    broken.mkdir()
    (broken / "Manifest.json").write_text("{not json")
    falcon = Path(shutil.copytree(gpt2_dir, root / "falcon"))
    (falcon / "config.json").write_text((falcon / "config.json").read_text().replace('"gpt2"', '"falcon"'))
    # configs with numbers no model can have, and a model with another model's tokenizer
    from bundled_models import keyboard_gpt2_path
    from tests.checkpoints import make_llama
    from tests.tiny_tokenizer import write_tokenizer

    llama = make_llama(root / "llama", "llama", seed=1)
    write_tokenizer(llama, 211)
    for name, field, value in (
        ("inf-theta", "rope_theta", float("inf")),
        ("nan-eps", "rms_norm_eps", float("nan")),
        ("huge-positions", "max_position_embeddings", 10**12),
    ):
        odd = Path(shutil.copytree(llama, root / name))
        config = json.loads((odd / "config.json").read_text())
        if field == "rope_theta":  # transformers 4's spelling, where the theta sits at the top
            config.pop("rope_parameters", None)
        config[field] = value
        (odd / "config.json").write_text(json.dumps(config))
    foreign = Path(shutil.copytree(llama, root / "foreign-tokenizer"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(keyboard_gpt2_path() / name, foreign / name)
    export = root / "gpt2-mlx"
    assert CliRunner().invoke(app, ["convert", str(gpt2_dir), "--to", "mlx", "--out", str(export)]).exit_code == 0
    return {
        "root": root,
        "gpt2": str(gpt2_dir),
        "bert": str(bert_dir),
        "export": str(export),
        "notes": str(root / "notes.txt"),
        "empty": str(root / "empty.txt"),
        "docs": str(docs),
        "docs.mlpackage": str(package_like),
        "broken": str(broken),
        "falcon": str(falcon),
        "missing": str(root / "missing"),
        "missing.mlpackage": str(root / "missing.mlpackage"),
        "llama": str(llama),
        "inf-theta": str(root / "inf-theta"),
        "nan-eps": str(root / "nan-eps"),
        "huge-positions": str(root / "huge-positions"),
        "foreign-tokenizer": str(foreign),
        "unwritable": "/proc/ondevice-out",
        "unwritable.mlpackage": "/proc/ondevice-out.mlpackage",
    }


ODD_CHECKPOINTS = ("inf-theta", "nan-eps", "huge-positions", "foreign-tokenizer")


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _run(arena: dict, command: str, args: list[str]) -> None:
    """Invoke; assert the exit status and that no traceback escaped."""
    COUNTS[command] += 1
    with contextlib.chdir(arena["root"]):
        result = CliRunner().invoke(app, [command, *args])
    EXITS[command, result.exit_code] += 1
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in result.output, (args, result.output)
    if result.exit_code == 2 and result.stderr.startswith("error:"):
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def _options(draw, table: dict[str, st.SearchStrategy]) -> list[str]:
    """Each option of `table` given or not; flags (strategy None) as bare names."""
    args: list[str] = []
    for name, values in table.items():
        if draw(st.booleans()):
            args += [name] if values is None else [name, draw(values)]
    return args


def _place(*names: str) -> st.SearchStrategy:
    return st.sampled_from(names)


def _resolve(arena: dict, args: list[str]) -> list[str]:
    return [arena.get(a, a) if isinstance(a, str) else a for a in args]


settings_ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 30,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings_
@given(data=st.data())
def test_verify(arena, data):
    draw = data.draw
    target = draw(
        _place(
            "gpt2",
            "bert",
            "export",
            "missing",
            "notes",
            "docs",
            "broken",
            "missing.mlpackage",
            "falcon",
            *ODD_CHECKPOINTS,
        )
        | TEXT
    )
    args = [
        target,
        *_options(
            draw,
            {
                "--backend": st.sampled_from(["torch-ane", "mlx", "coreml", "tpu", ""]) | TEXT,
                "--seq-len": st.sampled_from(["0", "-1", "4", "161", "99999999999999999999", "x"]),
                "--dtype": st.sampled_from(["fp32", "fp16", "bf16", "int8", ""]),
                "--seed": INTS,
                "--reference": _place("gpt2", "bert", "export", "missing", "notes") | TEXT,
            },
        ),
    ]
    _run(arena, "verify", _resolve(arena, args))


@settings_
@given(data=st.data())
def test_convert(arena, data):
    draw = data.draw
    before = _snapshot(arena["root"])
    source = draw(_place("gpt2", "bert", "export", "missing", "notes", "falcon", "docs", *ODD_CHECKPOINTS) | TEXT)
    # never a location that a conversion may write: each of these exists and is not ours, or cannot be made
    out = draw(
        _place(
            "docs",
            "docs.mlpackage",
            "notes",
            "broken",
            ".",
            "~",
            "/nonexistent-ondevice/x",
            "notes/x.mlpackage",
            "gpt2",
            "unwritable",
            "unwritable.mlpackage",
            "",
        )
    )
    args = [
        source,
        *_options(
            draw,
            {
                "--to": st.sampled_from(["coreml", "mlx", "onnx", ""]),
                "--overwrite": None,
                "--dtype": st.sampled_from(["fp16", "fp32", "bf16", "int8", ""]),
                "--seq-len": INTS,
                "--context": INTS,
                "--target": st.sampled_from(["iOS18", "iOS17", "iOS15", "macOS15", "", "[red]x"]),
                "--kv-cache": st.sampled_from(["state", "io", "paged", ""]),
                "--compress": st.sampled_from(["none", "int8", "int4", "palettize4", "palettize6", "int2"]),
                "--calibration-text": _place("notes", "empty", "missing"),
                "--quantize": INTS,
                "--group-size": INTS,
                "--verbose": None,
            },
        ),
        "--out",
        out,
    ]
    with contextlib.ExitStack() as stack:
        if out == "~":
            stack.enter_context(pytest.MonkeyPatch.context()).setenv("HOME", arena["docs"])
        _run(arena, "convert", _resolve(arena, args))
    after = _snapshot(arena["root"])
    assert after == before, sorted(set(after) ^ set(before))


@settings_
@given(data=st.data())
def test_predict(arena, data):
    draw = data.draw
    args = _options(
        draw,
        {
            "--model": _place(
                "keyboard-gpt2", "gpt2", "bert", "export", "missing", "docs.mlpackage", "llama", *ODD_CHECKPOINTS
            )
            | TEXT,
            "--backend": st.sampled_from(["torch-ane", "mlx", "coreml", "gpu"]),
            "-k": INTS,
            "--json": None,
            "--eval": _place("empty", "missing", "docs"),
            "--eval-lines": INTS,
            "--baseline-text": _place("notes", "missing"),
        },
    )
    if draw(st.booleans()):
        args.append(draw(TEXT))
    _run(arena, "predict", _resolve(arena, args))


@settings_
@given(data=st.data())
def test_generate(arena, data):
    draw = data.draw
    args = [draw(_place("gpt2", "export", "bert", "missing", "notes", "llama", *ODD_CHECKPOINTS) | TEXT)]
    if draw(st.booleans()):
        args.append(draw(TEXT))
    args += _options(
        draw,
        {
            "--ids": st.sampled_from(["1, 2", "1", "", "x", "-1", "99999", "1,,2"]),
            "--backend": st.sampled_from(["mlx", "torch-ane", "coreml", ""]),
            "--dtype": st.sampled_from(["fp32", "fp16", "bf16", "int4", ""]),
            "--max-tokens": st.sampled_from(["0", "-1", "1", "4", "x"]),
            "--temperature": FLOATS,
            "--top-k": INTS,
            "--top-p": FLOATS,
            "--seed": INTS,
            "--ignore-eos": None,
            "--chat": None,
            "--system": TEXT,
        },
    )
    _run(arena, "generate", _resolve(arena, args))


@settings_
@given(data=st.data())
def test_inspect(arena, data):
    target = data.draw(_place("broken", "docs.mlpackage", "missing.mlpackage", "notes", "gpt2", "export") | TEXT)
    _run(arena, "inspect", _resolve(arena, [target, *(["--verbose"] if data.draw(st.booleans()) else [])]))


@settings_
@given(data=st.data())
def test_bench(arena, data):
    draw = data.draw
    before = _snapshot(arena["root"])
    # a model that never resolves to something runnable, so that no benchmark ever starts
    unrunnable = TEXT.filter(lambda t: t.strip() and "gpt2" not in t.lower() and "minilm" not in t.lower())
    args = ["--model", draw(_place("missing", "notes", "docs", "falcon", *ODD_CHECKPOINTS[:3]) | unrunnable)]
    args += _options(
        draw,
        {
            "--model": _place("gpt2", "export", "bert"),
            "--backends": st.sampled_from(["reference", "torch-ane,mlx", "mlx", "coreml", "tpu", ",", ""]),
            "--seq-lens": st.sampled_from(["16", "16,64", "0", "-1", "x", ",", ""]),
            "--quick": None,
            "--out": _place("notes", "docs", "missing/deeper", "unwritable", ""),
            "--keystrokes": INTS,
            "--threads": INTS,
            "--repeats": INTS,
            "--batch": INTS,
        },
    )
    _run(arena, "bench", _resolve(arena, args))
    assert _snapshot(arena["root"]) == before


@settings_
@given(data=st.data())
def test_type(arena, data):
    args = _options(
        data.draw,
        {
            "--model": _place("gpt2", "export", "missing", "bert") | TEXT,
            "--backend": st.sampled_from(["torch-ane", "mlx", "coreml", "tpu"]),
        },
    )
    if "--model" not in args:  # the bundled model would wait for keystrokes: always name another
        args = ["--model", arena["missing"], *args]
    _run(arena, "type", _resolve(arena, args))


@settings_
@given(data=st.data())
def test_learned(arena, data):
    """The user's store (conftest points it at a scratch folder): shown, exported (never over an existing file, nor
    into an unwritable one), forgotten word by word."""
    draw = data.draw
    args = [draw(st.sampled_from(["show", "export", "forget", "remember", ""]))]
    if draw(st.booleans()):  # export only to places that exist or cannot be written: the arena stays as it is
        places = _place("notes", "docs", "unwritable", "broken")
        args.append(draw(places if args[0] == "export" else places | TEXT))
    args += _options(draw, {"--top": INTS})
    before = _snapshot(arena["root"])
    _run(arena, "learned", _resolve(arena, args))
    assert _snapshot(arena["root"]) == before


def test_every_command_was_driven():
    """Runs last in this module: every command of the CLI is driven above, each with its examples."""
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert commands == {"verify", "convert", "generate", "predict", "type", "inspect", "bench", "learned"}
    if set(COUNTS) != commands:
        pytest.skip("run the whole module to count the inputs")
    print("inputs by command:", dict(COUNTS), "exit statuses:", dict(sorted(EXITS.items())))
    assert all(n >= EXAMPLES // 2 for n in COUNTS.values()), COUNTS
