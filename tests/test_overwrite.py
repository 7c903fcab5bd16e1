"""`--overwrite` cannot destroy user data: for every output kind (an MLX directory, a Core ML package) it
replaces only an earlier output of `ondevice convert` (our marker, nothing else in it) or an empty folder.
The source checkpoint, a folder holding it, the working directory, a file, a symbolic link and a folder with
anything else in it are refused in one line, and everything on disk stays exactly as it was.

Also: litter. A conversion killed by SIGTERM removes its staging folder (as Ctrl-C does); one killed by
SIGKILL leaves it, and the next conversion into the same folder removes it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convert.atomic import MARKER, OWNER, atomic_output, remove_stale_staging
from tests.cli import assert_one_line_error, run_cli

KINDS = ("mlx", "coreml")


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under `root` with its bytes (files), its target (links) or "dir"."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = path.read_bytes()
    return found


def out_name(kind: str, stem: str) -> str:
    return f"{stem}.mlpackage" if kind == "coreml" else stem


@pytest.fixture
def fast_coreml(monkeypatch):
    """The command's Core ML converter replaced by one that writes a small package-shaped folder at once:
    what is tested here is where outputs go and what they replace, not the conversion."""
    import convert.coreml

    def fake(checkpoint, out, options, overwrite=False, progress=True):
        out = Path(out)
        out.mkdir()
        (out / "Manifest.json").write_text("{}")
        (out / "Data").mkdir()
        (out / "Data" / "weights.bin").write_bytes(os.urandom(64))
        return out

    monkeypatch.setattr(convert.coreml, "convert_to_coreml", fake)


def convert(kind: str, source: Path, out: Path | str, *extra: str):
    args = ["convert", source, "--to", kind, "--out", out, *extra]
    if kind == "coreml":
        args += ["--context", "16", "--seq-len", "4"]
    return run_cli(*args)


@pytest.fixture
def workspace(tmp_path, gpt2_dir):
    root = tmp_path / "ws"
    root.mkdir()
    source = Path(shutil.copytree(gpt2_dir, root / "ckpt"))
    return root, source


@pytest.mark.parametrize("kind", KINDS)
def test_overwrite_replaces_an_earlier_output_and_an_empty_folder(kind, workspace, fast_coreml):
    root, source = workspace
    out = root / out_name(kind, "model")
    assert convert(kind, source, out).exit_code == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "ondevice-transformers" and marker["kind"] == kind
    assert marker["source"] == str(source.resolve()) and marker["files"]
    assert set(marker["files"]) == {str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()} - {MARKER}
    before = snapshot(out)
    result = convert(kind, source, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert set(snapshot(out)) == set(before)
    empty = root / out_name(kind, "empty")
    empty.mkdir()
    assert convert(kind, source, empty).exit_code == 2  # exists: without --overwrite, refused
    assert convert(kind, source, empty, "--overwrite").exit_code == 0
    assert (empty / MARKER).is_file()
    assert not [p for p in root.iterdir() if p.name.endswith(".partial")]


def _refusal_cases(kind: str, root: Path, source: Path) -> list[tuple[str, Path, Path, str]]:
    """(case, source, --out, fragment of the message) over the things --overwrite must never replace."""
    cases = []
    # the source checkpoint itself (named like the output kind, so that the suffix check passes)
    own_source = Path(shutil.copytree(source, root / out_name(kind, "src")))
    cases.append(("source", own_source, own_source, "is the source checkpoint"))
    # a folder holding the source checkpoint, and other things
    parent = root / out_name(kind, "projects")
    parent.mkdir()
    inner = Path(shutil.copytree(source, parent / "ckpt"))
    (parent / "plan.md").write_text("ideas")
    cases.append(("folder holding the source", inner, parent, "contains the source checkpoint"))
    # a folder of the user's own files
    docs = root / out_name(kind, "docs")
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    cases.append(("folder of other files", source, docs, "not written by ondevice"))
    # an earlier output the user has since put a file in
    earlier = root / out_name(kind, "earlier")
    assert convert(kind, source, earlier).exit_code == 0
    (earlier / "notes.txt").write_text("mine")
    cases.append(("earlier output with a foreign file", source, earlier, "'notes.txt', which ondevice did not"))
    # an earlier output with a user's file deep inside it (a Core ML package's Data/), or a folder of theirs
    nested = root / out_name(kind, "nested")
    assert convert(kind, source, nested).exit_code == 0
    inner_folder = nested / "Data" if kind == "coreml" else nested / "mine"
    inner_folder.mkdir(exist_ok=True)
    (inner_folder / "NOTES.txt").write_text("n")
    cases.append(
        (
            "earlier output with a user's file inside a folder",
            source,
            nested,
            f"'{inner_folder.name}/NOTES.txt', which ondevice did not",
        )
    )
    # an earlier output one of whose files the user has changed since
    edited = root / out_name(kind, "edited")
    assert convert(kind, source, edited).exit_code == 0
    ours = next(p for p in sorted(edited.rglob("*")) if p.is_file() and p.name != MARKER)
    ours.write_bytes(ours.read_bytes() + b" ")
    cases.append(("earlier output with a file changed since", source, edited, "has changed since ondevice wrote it"))
    # an empty folder of the user's inside an earlier output
    folder = root / out_name(kind, "folder")
    assert convert(kind, source, folder).exit_code == 0
    (folder / "drafts").mkdir()
    cases.append(("earlier output with a user's empty folder", source, folder, "'drafts', which ondevice did not"))
    # a file
    file = root / out_name(kind, "file")
    file.write_text("a file")
    cases.append(("file", source, file, "is a file"))
    # a symbolic link to an earlier output
    target = root / out_name(kind, "target")
    assert convert(kind, source, target).exit_code == 0
    link = root / out_name(kind, "link")
    link.symlink_to(target)
    cases.append(("symbolic link", source, link, "is a symbolic link"))
    return cases


@pytest.mark.parametrize("kind", KINDS)
def test_overwrite_refuses_what_it_did_not_write(kind, workspace, fast_coreml):
    root, source = workspace
    cases = _refusal_cases(kind, root, source)
    for case, checkpoint, out, fragment in cases:
        before = snapshot(root)
        assert_one_line_error(convert(kind, checkpoint, out, "--overwrite"), fragment)
        assert snapshot(root) == before, case  # nothing replaced, nothing left behind
    assert len(cases) == 9


@pytest.mark.parametrize("kind", KINDS)
def test_overwrite_refuses_the_working_directory_and_home(kind, workspace, fast_coreml, monkeypatch):
    root, source = workspace
    work = root / out_name(kind, "here")
    work.mkdir()
    (work / "todo.txt").write_text("keep")
    monkeypatch.chdir(work)
    before = snapshot(root)
    # mlx: `--out .`; coreml: the working directory by its absolute name (it ends in .mlpackage)
    out = "." if kind == "mlx" else str(work)
    assert_one_line_error(convert(kind, source, out, "--overwrite"), "is the working directory")
    (work / "todo.txt").unlink()  # even empty, the working directory is never replaced
    assert_one_line_error(convert(kind, source, out, "--overwrite"), "is the working directory")
    (work / "todo.txt").write_text("keep")
    assert snapshot(root) == before
    home = root / out_name(kind, "home")
    home.mkdir()
    (home / ".bashrc").write_text("export A=1")
    monkeypatch.setenv("HOME", str(home))
    assert_one_line_error(
        convert(kind, source, "~", "--overwrite")
        if kind == "mlx"
        else convert(kind, source, f"~/../{home.name}", "--overwrite"),
        "not written by ondevice",
    )
    assert (home / ".bashrc").read_text() == "export A=1"


def test_overwrite_of_the_parent_of_the_working_directory_is_refused(workspace, monkeypatch):
    root, source = workspace
    inner = root / "deep" / "inner"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    (root / "deep" / MARKER).write_text(json.dumps({"written_by": "ondevice-transformers", "entries": ["inner"]}))
    assert_one_line_error(convert("mlx", source, root / "deep", "--overwrite"), "contains it")
    assert inner.is_dir()


def test_library_atomic_output_refuses_the_same(tmp_path):
    from canonical.errors import ConversionError

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with pytest.raises(ConversionError, match="not written by ondevice"), atomic_output(folder, overwrite=True):
        pytest.fail("must not be reached")
    assert (folder / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def _owner(pid: int, written_by: str = "ondevice-transformers") -> str:
    return json.dumps({"written_by": written_by, "pid": pid})


def test_stale_staging_of_a_killed_run_is_removed_and_a_live_one_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / ".model.abc123.partial"
    (stale / "tmpxyz").mkdir(parents=True)
    (stale / OWNER).write_text(_owner(dead_pid))
    live = tmp_path / ".other.def456.partial"
    live.mkdir()
    (live / OWNER).write_text(_owner(os.getpid()))
    user = tmp_path / ".config.partial"  # a user's folder that merely looks like ours: no owner file
    user.mkdir()
    assert remove_stale_staging(tmp_path / "model") == [stale]
    assert live.is_dir() and user.is_dir() and not stale.exists()


def test_staging_lookalikes_without_our_owner_file_are_never_removed(tmp_path, gpt2_dir):
    """A user's folder named like a staging folder of this very output, hours old, with or without files, with an
    owner file of someone else's or of an older layout (a bare pid), survives a conversion beside it."""
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )
    backup = tmp_path / ".gpt2.mlx.bak.partial"
    (backup / "Data").mkdir(parents=True)
    (backup / "Data" / "NOTES.txt").write_text("mine")
    foreign = tmp_path / ".gpt2.mlx.xyz.partial"
    foreign.mkdir()
    (foreign / OWNER).write_text(_owner(dead, written_by="someone-else"))
    bare = tmp_path / ".gpt2.mlx.old.partial"
    bare.mkdir()
    (bare / OWNER).write_text(f"{dead}\n")
    (bare / ".owner").write_text(f"{dead}\n")
    hours_ago = time.time() - 2 * 3600
    for folder in (backup, foreign, bare):
        os.utime(folder, (hours_ago, hours_ago))
    before = snapshot(tmp_path)
    result = run_cli("convert", gpt2_dir, "--to", "mlx", "--out", tmp_path / "gpt2.mlx")
    assert result.exit_code == 0, result.output
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("gpt2.mlx")} == before


def _ondevice() -> str:
    return str(Path(sys.executable).with_name("ondevice"))


def _wait_for_staging(folder: Path, process: subprocess.Popen, timeout: float = 240.0) -> Path:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        staging = [p for p in folder.iterdir() if p.name.endswith(".partial")]
        if staging:
            return staging[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    pytest.fail("the conversion never started writing")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_coreml_conversion_leaves_no_litter(how, gpt2_dir, tmp_path):
    """SIGTERM: the conversion removes its own staging folder (the converter's temporary folders are in it)
    and exits 143. SIGKILL: nothing can run, the staging folder stays; the next conversion into the same
    folder removes it."""
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [
            _ondevice(),
            "convert",
            str(gpt2_dir),
            "--to",
            "coreml",
            "--out",
            str(out / "m.mlpackage"),
            "--context",
            "16",
            "--seq-len",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    staging = _wait_for_staging(out, process)
    time.sleep(1.0)  # into the conversion: the converter's own temporary folder exists by now
    process.send_signal(getattr(signal, how))
    _, stderr = process.communicate(timeout=120)
    if how == "SIGTERM":
        assert process.returncode == 143, stderr
        assert stderr.strip() == "terminated"
        assert list(out.iterdir()) == []
        return
    assert process.returncode == -signal.SIGKILL
    assert [p.name for p in out.iterdir()] == [staging.name]
    result = run_cli("convert", gpt2_dir, "--to", "mlx", "--out", out / "other")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["other"]
