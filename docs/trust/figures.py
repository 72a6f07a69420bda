"""Draw the figures of docs/trust.md from the JSON files the trust commands wrote (matplotlib; kaleido, which plotly
needs to write PNGs, is not installed here). The app draws the same data with explorer/ui/widgets/trust_charts.py.

    python docs/trust/figures.py            # every docs/trust/*.json it knows → docs/trust/*.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
COLOURS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC", "#EECA3B")


def _nan(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def sanity(src: Path, out: Path) -> None:
    d = json.loads(src.read_text())
    steps = d["steps"]
    x = np.arange(len(steps))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4), sharey=True)
    for ax, key, title in ((axes[0], "spearman", "Spearman rank correlation of |map|"), (axes[1], "ssim", "SSIM")):
        ax.axvspan(0.5, d["top_step"] + 0.5, color="#999999", alpha=0.15, lw=0)
        for i, rec in enumerate(d["methods"].values()):
            verdict = "pass" if rec["passed"] else "FAIL"
            ax.plot(x, _nan(rec[key]), "-o", ms=3, color=COLOURS[i % len(COLOURS)], label=f"{rec['label']} ({verdict})")
        if key == "spearman":
            ax.axhline(d["pass_below"], ls=":", color="#555555", lw=1)
        ax.set_xticks(x, steps, rotation=70, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.3, 1.05)
        ax.grid(alpha=0.3)
        ax.set_xlabel("randomized from the top down to")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"Cascading randomization · {d['model']} · {Path(d['image']).name} · target {d['target_name']} "
                 f"(shaded: the top blocks holding half the weights)", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0.1 if len(labels) <= 5 else 0.14, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def faithfulness(src: Path, out: Path) -> None:
    d = json.loads(src.read_text())
    order = d["ranking"]
    layers = d["layers"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.8), gridspec_kw={"width_ratios": [1.1, 1]})
    y = np.arange(len(order))[::-1]
    scores = [layers[n]["score"] for n in order]
    colours = ["#54A24B" if layers[n]["beats_random"] else "#BAB0AC" for n in order]
    ax.barh(y, scores, color=colours)
    ax.set_yticks(y, [f"{n} ({'×'.join(map(str, layers[n]['grid']))})" for n in order], fontsize=8)
    ax.axvline(0, color="#555555", lw=1)
    ax.set_xlabel("(insertion − deletion) − (random insertion − random deletion)")
    ax.set_title(f"Which layer explains best · {d['method']} · {d['images']} images (green: beats its random map "
                 "on both curves)", fontsize=9)  # fmt: skip
    fr = d["fractions"]
    for i, n in enumerate([order[0], order[len(order) // 2], order[-1]]):
        c = COLOURS[i]
        ax2.plot(fr, layers[n]["curves"]["deletion"], "-", color=c, label=f"{n}: deletion")
        ax2.plot(fr, layers[n]["curves"]["insertion"], "--", color=c, label=f"{n}: insertion")
        ax2.plot(fr, layers[n]["curves"]["random_deletion"], ":", color=c, lw=1)
    ax2.set_xlabel("fraction of pixels deleted / inserted (most relevant first)")
    ax2.set_ylabel("probability of the predicted class")
    ax2.set_title("best, middle and worst layer (dotted: random-map deletion)", fontsize=9)
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def cka(src: Path, out: Path) -> None:
    d = json.loads(src.read_text())
    kinds = [k for k in ("plain", "raw", "calibrated") if d.get(k) is not None]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.0 * len(kinds), 5.6), layout="constrained")
    titles = {"plain": "plain CKA (biased)", "raw": "debiased CKA (raw)", "calibrated": "calibrated"}
    for ax, k in zip(axes, kinds, strict=True):
        m = np.array(d[k], dtype=float)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(d["b_layers"])), d["b_layers"], rotation=80, fontsize=6)
        ax.set_yticks(range(len(d["a_layers"])), d["a_layers"], fontsize=6)
        ax.set_title(f"{titles[k]} · mean {np.nanmean(m):.3f}", fontsize=9)
        ax.set_xlabel(f"B: {Path(d['b']).name}", fontsize=8)
        ax.set_ylabel(f"A: {d['a']}", fontsize=8)
    fig.colorbar(im, ax=list(axes), shrink=0.7)
    fig.suptitle(f"{d['images']} images of {d['data']} · {d['permutations']} shuffles · α = {d['alpha']}", fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def selectivity(src: Path, out: Path) -> None:
    d = json.loads(src.read_text())
    fig, ax = plt.subplots(figsize=(11, 4.6))
    for i, (name, rep) in enumerate(d.items()):
        rows = rep["layers"]
        x = np.arange(len(rows))
        c = COLOURS[i]
        ax.plot(
            x, _nan([r["mean_selectivity"] for r in rows]), "-o", color=c, label=f"{name}: {Path(rep['model']).name}"
        )
        ax.plot(x, _nan([r["chance_selectivity"] for r in rows]), ":", color=c, label=f"{name}: labels shuffled")
        ax.set_xticks(x, [r["layer"] for r in rows], rotation=70, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean class selectivity index")
    ax.set_xlabel("layer (input → output)")
    first = next(iter(d.values()))
    ax.set_title(f"Generic → specific, measured on {first['images']} images of {first['data']} "
                 f"({len(first['classes'])} classes)", fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


KINDS = {"sanity-": sanity, "faithfulness-": faithfulness, "cka-": cka, "selectivity-": selectivity}


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted(HERE.glob("*.json"))
    for src in files:
        draw = next((f for prefix, f in KINDS.items() if src.name.startswith(prefix)), None)
        if draw is None:
            continue
        out = src.with_suffix(".png")
        draw(src, out)
        print(f"{src.name} → {out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
