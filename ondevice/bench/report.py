"""The report of one run: bench.json (every record), bench.md (the tables), bench.png (the plot), and
the same tables on the terminal. Tables and plot are read from the records alone."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ondevice.bench.records import speed_ratio

LATENCY_KINDS = ("prefill", "encode")
CAPTION = (
    "times: median of repeats after warm-up (spread p10-p90 in bench.json); every ratio is computed from the "
    "two figures beside it in its cell: (ref t, r x) is the transformers CPU reference timed in this row's "
    "own process, its repeats interleaved with the row's, and r the speed of the row against it (ref / ours "
    "for ms, ours / ref for tok/s; >1 is faster); (mlx_lm t, r x) the same against that peer; the reference "
    "row is timed in its own process; reuse: ms per keystroke at a 64-token context recomputing / reusing "
    "the KV cache, (context ...) the same for the context part alone; % BW: weight bytes read per second "
    "while decoding / measured memory bandwidth; peak MiB: max RSS of the backend's own process before "
    "anything else is loaded in it, (runtime baseline before loading the model)"
)


def write_json(path: Path, machine: dict, settings: dict, records: list[dict]) -> None:
    document = {"schema": "ondevice/bench/schema.json", "machine": machine, "settings": settings, "records": records}
    path.write_text(json.dumps(document, indent=1) + "\n")


def _label(r: dict) -> str:
    label = r["backend"]
    if r["compression"] != "none":
        label += f" {r['compression']}"
    if r["source"] == "mlx-export":
        label += " · export"
    return label


def _key(r: dict) -> tuple:
    return (r["backend"], r["device"], r["precision"], r["compression"], r["source"])


def _num(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _x(ratio: float) -> str:
    """A ratio to three figures at most: 1.07x, 38.8x, 243x."""
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def _compared(r: dict) -> str:
    """The record's value and, where it was compared in its own process, the other side's value and the
    ratio of the two: (ref 4.26, 1.07x). A ratio measured across processes is never shown."""
    value = _num(r["value"])
    reference, peer = r.get("reference"), r.get("vs_peer")
    if reference and reference.get("same_process") and reference.get("value"):
        who, other = "ref", reference["value"]
    elif peer and peer.get("value"):
        who, other = peer["peer"], peer["value"]
    else:
        return value
    return f"{value} ({who} {_num(other)}, {_x(speed_ratio(r['kind'], r['value'], other))})"


def _reuse(r: dict) -> str:
    """recompute / reuse ms = ratio, for the whole keystroke and its context part."""
    cell = f"{_num(r['recompute_ms'])} / {_num(r['reuse_ms'])} = {_x(r['recompute_ms'] / r['reuse_ms'])}"
    if r.get("context_reuse_ms") and r.get("context_recompute_ms"):
        a, b = r["context_recompute_ms"], r["context_reuse_ms"]
        cell += f" (context {_num(a)} / {_num(b)} = {_x(a / b)})"
    return cell


def model_tables(records: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(model, headers, rows) per model: one row per backend variant, one column per measurement."""
    tables = []
    for model in dict.fromkeys(r["model"] for r in records if r["backend"] != "machine"):
        mine = [r for r in records if r["model"] == model]
        lens = sorted(
            {(r["kind"], r["seq_len"]) for r in mine if r["kind"] in LATENCY_KINDS and r["seq_len"]},
            key=lambda k: (k[0], k[1]),
        )
        headers = [
            "backend",
            "device",
            "prec.",
            "convert s",
            "load s cold / warm",
            *[f"{k} {n} ms" for k, n in lens],
            "decode tok/s",
            "% BW",
            "keys p50 / p95 ms",
            "reuse: recompute / reuse ms",
            "peak MiB (runtime)",
            "notes",
        ]
        rows = []
        for key in dict.fromkeys(_key(r) for r in mine):
            got = {(r["kind"], r["seq_len"]): r for r in mine if _key(r) == key and r["status"] == "ok"}
            by_kind = {r["kind"]: r for r in got.values()}
            first = next(r for r in mine if _key(r) == key)
            notes = [
                f"{r['kind']} {r['status']}: {r['reason']}" for r in mine if _key(r) == key and r["status"] != "ok"
            ]
            load = " / ".join(_num(by_kind[k]["value"]) if k in by_kind else "-" for k in ("load_cold", "load_warm"))
            convert = by_kind.get("coreml_convert")
            cells = [
                _label(first),
                first["device"],
                first["precision"],
                _num(convert["value"]) if convert else "",
                load if load != "- / -" else "",
            ]
            for kind, n in lens:
                r = got.get((kind, n))
                cells.append(_compared(r) if r else "")
            decode = by_kind.get("decode")
            cells.append(_compared(decode) if decode else "")
            cells.append(
                f"{100 * decode['bandwidth_fraction']:.1f}%" if decode and "bandwidth_fraction" in decode else ""
            )
            keys = [by_kind.get(k) for k in ("keystroke_p50", "keystroke_p95")]
            cells.append(" / ".join(_num(k["value"]) for k in keys if k) if all(keys) else "")
            reuse = by_kind.get("cache_reuse_ratio")
            cells.append(_reuse(reuse) if reuse else "")
            peak, base = by_kind.get("peak_memory"), by_kind.get("runtime_baseline_memory")
            cells.append(f"{peak['value'] / 2**20:.0f} ({base['value'] / 2**20:.0f})" if peak and base else "")
            cells.append("; ".join(notes))
            rows.append(cells)
        keep = [i for i, h in enumerate(headers) if i < 3 or any(row[i] for row in rows)]
        tables.append((model, [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]))
    return tables


def _settings_line(machine: dict, settings: dict, records: list[dict]) -> str:
    bandwidth = next((r for r in records if r["kind"] == "memory_bandwidth" and r["status"] == "ok"), None)
    line = (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['os']}, MLX device {machine['mlx_default_device']}; "
        f"batch {settings['batch']}, {settings['repeats']} repeats, threads {settings['threads'] or 'default'}"
    )
    if bandwidth:
        line += f"; memory bandwidth {bandwidth['value'] / 1e9:.1f} GB/s (copy, read + write)"
    return line


def markdown(machine: dict, settings: dict, records: list[dict]) -> str:
    out = [f"# ondevice bench\n\n{_settings_line(machine, settings, records)}\n"]
    for model, headers, rows in model_tables(records):
        out.append(f"\n## {model}\n")
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---" if i < 3 or h == "notes" else "---:" for i, h in enumerate(headers)) + "|")
        out += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    out.append(f"\n{CAPTION}.\n")
    return "\n".join(out)


def print_tables(console: Console, machine: dict, settings: dict, records: list[dict]) -> None:
    """The tables on the terminal; notes (skips, errors, peers) follow each table as lines, so the
    columns stay narrow enough to read. Piped output is not cut to 80 columns."""
    saved = console.width
    if not console.is_terminal:  # a file or a pipe: rich would cut every table to 80 columns
        console.width = max(saved, 200)
    try:
        _print_tables(console, machine, settings, records)
    finally:
        console.width = saved


def _print_tables(console: Console, machine: dict, settings: dict, records: list[dict]) -> None:
    console.print(_settings_line(machine, settings, records), highlight=False, soft_wrap=True)
    for model, headers, rows in model_tables(records):
        table = Table(title=model, title_justify="left")
        for i, header in enumerate(headers[:-1] if headers[-1] == "notes" else headers):
            table.add_column(header, justify="left" if i < 3 else "right")
        for row in rows:
            table.add_row(*row[: len(table.columns)])
        console.print(table)
        if headers[-1] == "notes":
            for row in rows:
                if row[-1]:
                    console.print(f"  {row[0]} ({row[1]}): {row[-1]}", highlight=False, soft_wrap=True)
    console.print(CAPTION, style="dim", highlight=False, soft_wrap=True)


def plot(path: Path, records: Iterable[dict]) -> None:
    """Left: prefill/encode latency against sequence length, per backend (log scales). Right: decode
    tokens/s per backend and peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    colors: dict[str, str] = {}

    def color(r: dict) -> str:  # one colour per backend (peers included), the same in both panels
        return colors.setdefault(_label(r), f"C{len(colors) % 10}")

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    series: dict[str, list[dict]] = {}
    for r in ok:
        if r["kind"] in LATENCY_KINDS:
            series.setdefault(f"{r['model']} · {_label(r)} · {r['device']}", []).append(r)
    lengths = sorted({r["seq_len"] for rs in series.values() for r in rs})
    for i, (name, rs) in enumerate(series.items()):
        rs.sort(key=lambda r: r["seq_len"])
        models = list(dict.fromkeys(r["model"] for r in ok))  # one line style per model, one colour per backend
        left.errorbar(
            [r["seq_len"] for r in rs],
            [r["value"] for r in rs],
            color=color(rs[0]),
            yerr=_yerr(rs),
            linestyle=("-", "--", ":", "-.")[models.index(rs[0]["model"]) % 4],
            marker="os^Dv<>"[i % 7],
            capsize=2,
            label=name,
        )
    left.set(
        title="prefill (GPT-2) / encode (BERT) latency, each backend in its own process",
        xlabel="sequence length (tokens)",
        ylabel="ms (median, bars p10-p90)",
        yscale="log",
    )
    left.set_xscale("log", base=2)
    if lengths:
        left.set_xticks(lengths, [str(n) for n in lengths])
    if series:
        left.legend(fontsize=7)
    decodes = [r for r in ok if r["kind"] == "decode"]
    right.barh(
        range(len(decodes)),
        [r["value"] for r in decodes],
        xerr=_yerr(decodes),
        color=[color(r) for r in decodes],
        capsize=2,
    )
    right.set_yticks(range(len(decodes)), [f"{r['model']}\n{_label(r)} · {r['device']}" for r in decodes], fontsize=7)
    right.invert_yaxis()
    right.set(title="decode with the KV cache, batch 1", xlabel="tokens/s (median, bars p10-p90)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _yerr(rs: list[dict]) -> list[list[float]]:
    """Distances from each median to its p10 and p90 (zero where a record has no spread)."""
    low = [r["value"] - r["spread"]["p10"] if r["spread"] else 0.0 for r in rs]
    high = [r["spread"]["p90"] - r["value"] if r["spread"] else 0.0 for r in rs]
    return [[max(v, 0.0) for v in low], [max(v, 0.0) for v in high]]
