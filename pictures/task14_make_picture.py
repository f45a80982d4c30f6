"""Draws task 14's picture, pictures/task14_layouts.png: who holds what in data parallelism, FSDP and Megatron's
tensor parallelism, for a batch and the MLP's two kernels.

    python pictures/task14_make_picture.py

Matplotlib alone (Agg), like pictures/make_pictures.py.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

HERE = Path(__file__).resolve().parent
DEVICE = ["#f4a582", "#92c5de", "#b8e186", "#d5a6e6"]  # devices 0..3, the same colour in every panel
WHOLE = "#d9d9d9"


def matrix(ax, x, y, w, h, parts, axis, label, below, colours=DEVICE):
    """A w x h rectangle at (x, y) (lower left) cut into `parts` along `axis` ("rows", "columns" or None)."""
    if axis is None:
        ax.add_patch(Rectangle((x, y), w, h, facecolor=WHOLE, edgecolor="#333333", lw=1.2))
    for i in range(parts if axis else 0):
        if axis == "rows":
            ax.add_patch(Rectangle((x, y + h - (i + 1) * h / parts), w, h / parts, facecolor=colours[i],
                                   edgecolor="#333333", lw=1.2))
        else:
            ax.add_patch(Rectangle((x + i * w / parts, y), w / parts, h, facecolor=colours[i], edgecolor="#333333",
                                   lw=1.2))
    ax.text(x + w / 2, y + h + 0.12, label, ha="center", va="bottom", fontsize=10, family="monospace")
    ax.text(x + w / 2, y - 0.15, below, ha="center", va="top", fontsize=8.5, color="#444444")


def panel(ax, title, batch_parts, fc_axis, proj_axis, parts, footer, fc_below, proj_below):
    ax.set_xlim(0, 10)
    ax.set_ylim(-1.6, 5.2)
    ax.axis("off")
    ax.set_title(title, fontsize=12, fontweight="bold")
    if batch_parts:
        matrix(ax, 0.2, 1.0, 1.6, 3.0, batch_parts, "rows", "x (B, T)", "rows split")
    else:
        matrix(ax, 0.2, 1.0, 1.6, 3.0, 1, None, "x (B, T)", "the same rows\non both")
    matrix(ax, 2.5, 2.2, 3.6, 0.9, parts, fc_axis, "fc (C, 4C)", fc_below)
    matrix(ax, 7.0, 0.6, 0.9, 3.6, parts, proj_axis, "proj (4C, C)", proj_below)
    ax.text(5.0, -0.9, footer, ha="center", va="center", fontsize=9.5, wrap=True)


def main() -> int:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), layout="constrained")
    panel(axes[0], "data parallel (4 devices)", 4, None, None, 4,
          "every device: a quarter of the batch, a whole copy of\nevery weight. One all-reduce sums the gradients.",
          "whole", "whole")
    panel(axes[1], "fully sharded, FSDP (4 devices)", 4, "columns", "rows", 4,
          "every device: a quarter of the batch and a quarter of every\nweight (and of its Adam moments). "
          "Each weight is\nall-gathered just before use; gradients reduce-scattered.",
          "4C split, for storage only", "4C split, for storage only")
    panel(axes[2], "tensor parallel, Megatron (2 devices)", 0, "columns", "rows", 2,
          "both devices: the same rows. fc split by output, proj by input:\nthe hidden units never leave their "
          "device; one all-reduce\nadds the two partial outputs of proj.",
          "split by output: own hidden units", "split by input: partial sums")
    for i, colour in enumerate(DEVICE):
        axes[0].add_patch(Rectangle((0.2 + 2.4 * i, -1.55), 0.25, 0.25, facecolor=colour, edgecolor="#333333"))
        axes[0].text(0.5 + 2.4 * i, -1.42, f"device {i}", fontsize=8, va="center")
    fig.savefig(HERE / "task14_layouts.png", dpi=110, facecolor="white")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
