"""What the numbers were measured on: absolute timings hold for this machine only, so every record
carries a short description of it and the JSON file the full one."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

LIBRARIES = ("torch", "transformers", "mlx", "mlx-lm", "coremltools", "numpy", "ane-transformers")


def cpu_model() -> str:
    """The CPU's marketing name: sysctl on macOS, /proc/cpuinfo on Linux, else platform's guess."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def mlx_device() -> str | None:
    """MLX's default device (the GPU on a Mac, the CPU with mlx[cpu], CUDA with mlx[cuda])."""
    try:
        import mlx.core as mx

        return str(mx.default_device())
    except Exception:  # mlx missing or unable to start: the mlx rows say so themselves
        return None


def describe_machine() -> dict:
    """The full description written once at the top of bench.json."""
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "mlx_default_device": mlx_device(),
    }


def short_machine(machine: dict) -> str:
    """One line naming the machine, carried by every record so that a record can be read alone."""
    return f"{machine['cpu']} · {machine['cores']} cores · {machine['os']} · Python {machine['python']}"
