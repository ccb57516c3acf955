"""Markdown table and PNG chart from a results dictionary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .contenders import CONTENDERS


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def markdown(results: dict[str, Any]) -> str:
    from .machine import summary

    lines = [f"Machine: {summary(results['machine'])}; {results['threads']} threads per contender.", ""]
    for section in results["sections"]:
        lines.append(f"### {section['title']}")
        lines.append("")
        lines.append(section["note"])
        lines.append("")
        fid_cols = section["fidelity_columns"]
        roof = section.get("ceiling")
        if roof:
            lines.append(
                f"INT8 ceiling on this machine: MatMulInteger at {roof['int8_gemm_gops']:.0f} GOP/s "
                f"→ {roof['tokens_per_s']:,.0f} tokens/s for this encoder's GEMMs alone."
            )
            lines.append("")
        rows = section["rows"]
        nncf = [rows[k]["throughput"]["tokens_per_s"] for k in ("nncf-latency", "nncf-throughput") if k in rows]
        best_nncf = max(nncf) if nncf else None
        head = (
            "| contender | batch-1 p50 | p95 | × PyTorch | tokens/s | × PyTorch | × NNCF | of ceiling "
            "| peak RSS | cold start | file |"
        )
        head += "".join(f" {c} |" for c in fid_cols)
        lines.append(head)
        lines.append("|" + "---|" * (11 + len(fid_cols)))
        for key, row in section["rows"].items():
            lat, thr = row.get("latency", {}), row.get("throughput", {})
            fid = row.get("fidelity", {})
            cells = [
                CONTENDERS[key].name,
                _fmt(lat.get("p50_ms"), ".1f", " ms"),
                _fmt(lat.get("p95_ms"), ".1f", " ms"),
                _fmt(lat.get("speedup_vs_baseline"), ".2f", "×"),
                _fmt(thr.get("tokens_per_s"), ",.0f"),
                _fmt(thr.get("speedup_vs_baseline"), ".2f", "×"),
                _fmt(thr["tokens_per_s"] / best_nncf if best_nncf and thr.get("tokens_per_s") else None, ".2f", "×"),
                _fmt(
                    100 * thr["fraction_of_int8_ceiling"] if thr.get("fraction_of_int8_ceiling") else None, ".0f", "%"
                ),
                _fmt(row.get("peak_rss_mb"), ",.0f", " MB"),
                _fmt(row.get("cold_start_s"), ".2f", " s"),
                _fmt(row["size_bytes"] / 1e6 if row.get("size_bytes") else None, ".1f", " MB"),
            ]
            for col in fid_cols:
                v = fid.get(col)
                cells.append(_fmt(v, ".4f") if isinstance(v, float) else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if results.get("pos"):
        pos = results["pos"]
        lines.append(f"### PoS tagging, UD Italian-ISDT test ({pos['test_words']:,} words, encoder: {pos['encoder']})")
        lines.append("")
        lines.append("| | precision | recall | F1 | accuracy | = PyTorch |")
        lines.append("|---|---|---|---|---|---|")
        for key, field in (("torch-fp32", "pytorch_fp32"), ("flare-fp32", "flare_fp32"), ("flare-int8", "flare_int8")):
            m = pos[field]
            lines.append(
                f"| {CONTENDERS[key].name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} "
                f"| {m['accuracy']:.4f} | {m['agreement_with_pytorch_fp32']:.2%} |"
            )
        lines.append("")
    if results.get("footprint"):
        fp = results["footprint"]
        lines.append(
            f"Installed dependencies: flare-onnx runtime {fp['runtime_mb']:.0f} MB "
            f"({', '.join(fp['runtime_packages'])}) vs PyTorch + transformers {fp['torch_mb']:,.0f} MB."
        )
    return "\n".join(lines) + "\n"


#: one question per chart: (file, question, what to read from a row, format, higher is better)
CHARTS = (
    (
        "chart.png",
        "Bulk throughput: tokens/s (higher is better)",
        lambda r: r.get("throughput", {}).get("tokens_per_s"),
        "{:,.0f}",
        True,
    ),
    (
        "latency.png",
        "Batch-1 p50 latency: ms (lower is better)",
        lambda r: r.get("latency", {}).get("p50_ms"),
        "{:.1f}",
        False,
    ),
    ("memory.png", "Peak RSS serving batches: MB (lower is better)", lambda r: r.get("peak_rss_mb"), "{:,.0f}", False),
)


def chart(results: dict[str, Any], path: Path) -> None:
    """Horizontal bar charts beside ``path`` (``chart.png`` is throughput; ``latency.png`` and
    ``memory.png`` beside it), one question each, on the first workload; flare-onnx in blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    section = results["sections"][0]
    for name, question, read, fmt, higher in CHARTS:
        rows = [(CONTENDERS[k].name, read(r)) for k, r in section["rows"].items() if read(r)]
        rows.sort(key=lambda kv: kv[1], reverse=higher)  # the best at the top
        fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.4))
        labels = [label for label, _ in rows]
        values = [value for _, value in rows]
        colors = ["#1f4e99" if label.startswith("flare-onnx") else "#9a9a9a" for label in labels]
        ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=9)
        ax.invert_yaxis()
        for y, value in enumerate(values):
            ax.text(value, y, " " + fmt.format(value), va="center", fontsize=8)
        ax.set_xlim(0, max(values) * 1.15)
        ax.set_title(f"{question}\n{section['title']}, {results['threads']} threads", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        fig.savefig(path.parent / name, dpi=110)
        plt.close(fig)
