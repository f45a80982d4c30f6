"""Draws the diagrams the lessons show and writes them next to this file.

    python pictures/make_pictures.py            # writes minigpt.png, attention_head.png, causal_mask.png

Drawn with matplotlib alone (Agg, no screen needed), so a maintainer who changes a name in the lessons
changes it here and runs the script again.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

HERE = Path(__file__).resolve().parent
DPI = 110

# One colour per kind of layer, the same in every picture.
EMBED = "#fde9b6"
NORM = "#dfe6ef"
ATTN = "#fcd5b5"
FFWD = "#cfe3f7"
HEAD = "#d4ecd2"
LOSS = "#f6cccc"
DATA = "#ffffff"
Q_COLOUR, K_COLOUR, V_COLOUR = "#f7c6c7", "#c6dbef", "#c7e9c0"


def box(ax, x, y, w, h, text, colour, fontsize=11, bold_first_line=True, **kw):
    """A rounded box centred at (x, y); the first line (the parameter name) in bold."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.15",
                                facecolor=colour, edgecolor="#333333", linewidth=1.2, **kw))
    lines = text.split("\n")
    spacing = 0.3 * fontsize / 11  # one line's height in this picture's data units
    for i, text_line in enumerate(lines):
        first = i == 0 and bold_first_line
        ax.text(x, y + ((len(lines) - 1) / 2 - i) * spacing, text_line, ha="center", va="center",
                fontsize=fontsize if first or len(lines) == 1 else fontsize - 1.5,
                fontweight="bold" if first else "normal", color="#111111" if first else "#222222")


def arrow(ax, start, end, colour="#333333", style="-|>", lw=1.4, shrink=0.0, **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, color=colour, linewidth=lw,
                                 shrinkA=shrink, shrinkB=shrink, **kw))


def line(ax, xs, ys, colour="#333333", lw=1.4, **kw):
    ax.plot(xs, ys, color=colour, linewidth=lw, solid_capstyle="round", **kw)


def plus(ax, x, y, r=0.28):
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor="#333333", linewidth=1.4, zorder=3))
    ax.text(x, y, "+", ha="center", va="center", fontsize=16, zorder=4)


def shape_label(ax, x, y, text, ha="left"):
    ax.text(x, y, text, ha=ha, va="center", fontsize=10, color="#1f4e99", family="DejaVu Sans Mono")


def save(fig, path: Path) -> None:
    """Writes the figure as a PNG with a 96-colour palette: a third of the size, and the notebook carries
    every picture inside it."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    image = Image.open(buffer).convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT,
                                                        dither=Image.Dither.NONE)
    image.save(path, format="PNG", optimize=True)


# --------------------------------------------------------------------------------------------------------------
# The bird's-eye MiniGPT
# --------------------------------------------------------------------------------------------------------------

def draw_minigpt(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.6, 14.2))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 21.6)
    ax.axis("off")
    cx = 5.6  # the main path

    ax.text(6, 21.15, "MiniGPT at training time", ha="center", va="center", fontsize=16, fontweight="bold")
    ax.text(6, 20.65, "C = n_embd     B = batch size     T = sequence length (≤ block_size)",
            ha="center", va="center", fontsize=10, color="#555555")

    # Inputs
    box(ax, cx, 19.7, 3.6, 0.75, "idx: token ids", DATA, fontsize=11, bold_first_line=False)
    shape_label(ax, cx + 2.0, 19.7, "(B, T)")
    ax.text(10.0, 19.95, 'text    "First Ci"', ha="center", va="center", fontsize=9.5, family="DejaVu Sans Mono")
    ax.text(10.0, 19.55, 'targets "irst Cit"', ha="center", va="center", fontsize=9.5,
            family="DejaVu Sans Mono", color="#a02020")

    # Embeddings
    box(ax, 3.5, 18.15, 3.6, 0.95, "token_embedding\nnn.Embed(vocab_size, C)", EMBED)
    box(ax, 7.9, 18.15, 3.7, 0.95, "position_embedding\nnn.Embed(block_size, C)", EMBED)
    line(ax, [cx, cx, 3.5], [19.32, 19.0, 19.0])
    arrow(ax, (3.5, 19.0), (3.5, 18.64))
    ax.text(7.9, 19.0, "positions 0 … T−1", ha="center", va="center", fontsize=9.5, color="#555555")
    arrow(ax, (7.9, 18.82), (7.9, 18.64))
    plus(ax, cx, 16.95)
    arrow(ax, (3.5, 17.67), (cx - 0.22, 17.13))
    arrow(ax, (7.9, 17.67), (cx + 0.22, 17.13))
    shape_label(ax, 1.05, 17.45, "(B, T, C)")
    shape_label(ax, 8.35, 17.45, "(T, C)")
    ax.text(cx + 0.45, 16.95, "then dropout", ha="left", va="center", fontsize=9, color="#555555")
    arrow(ax, (cx, 16.67), (cx, 16.03))

    # The repeated block
    top, bottom = 15.95, 6.55
    ax.add_patch(FancyBboxPatch((1.05, bottom), 9.9, top - bottom, boxstyle="round,pad=0.02,rounding_size=0.3",
                                facecolor="#f7f7f7", edgecolor="#666666", linewidth=1.3, linestyle="--"))
    ax.text(1.35, top - 0.38, "blocks_i", ha="left", va="center", fontsize=12.5, fontweight="bold")
    ax.text(1.35, top - 0.78, "i = 0 … n_layer − 1", ha="left", va="center", fontsize=9.5, color="#555555")
    ax.text(10.75, top - 0.38, "× n_layer", ha="right", va="center", fontsize=13, fontweight="bold",
            color="#444444")
    shape_label(ax, cx + 0.15, 15.6, "x (B, T, C)")

    y_ln1, y_attn, y_add1 = 14.25, 12.85, 11.45
    y_ln2, y_ffwd, y_add2 = 10.05, 8.65, 7.25
    branch1, branch2 = 14.95, 10.85
    skip_x = 2.45
    arrow(ax, (cx, 16.03), (cx, y_ln1 + 0.35))
    box(ax, cx, y_ln1, 3.2, 0.7, "ln1 · LayerNorm", NORM, bold_first_line=False)
    arrow(ax, (cx, y_ln1 - 0.35), (cx, y_attn + 0.5))
    box(ax, cx, y_attn, 5.6, 1.0,
        "attn\ncausal multi-head self-attention\n(n_head heads of head_size = C / n_head)", ATTN, fontsize=11)
    arrow(ax, (cx, y_attn - 0.5), (cx, y_add1 + 0.28))
    ax.text(cx + 0.15, (y_attn - 0.5 + y_add1 + 0.28) / 2, "dropout", ha="left", va="center", fontsize=9,
            color="#555555")
    plus(ax, cx, y_add1)
    line(ax, [cx, skip_x, skip_x], [branch1, branch1, y_add1])
    arrow(ax, (skip_x, y_add1), (cx - 0.28, y_add1))
    ax.text(skip_x - 0.12, (branch1 + y_add1) / 2, "residual", ha="right", va="center", fontsize=9.5,
            rotation=90, color="#555555")

    arrow(ax, (cx, y_add1 - 0.28), (cx, y_ln2 + 0.35))
    box(ax, cx, y_ln2, 3.2, 0.7, "ln2 · LayerNorm", NORM, bold_first_line=False)
    arrow(ax, (cx, y_ln2 - 0.35), (cx, y_ffwd + 0.5))
    box(ax, cx, y_ffwd, 5.6, 1.0, "ffwd\nfeed-forward: Dense(4C) → ReLU → Dense(C)\nthen dropout", FFWD, fontsize=11)
    arrow(ax, (cx, y_ffwd - 0.5), (cx, y_add2 + 0.28))
    plus(ax, cx, y_add2)
    line(ax, [cx, skip_x, skip_x], [branch2, branch2, y_add2])
    arrow(ax, (skip_x, y_add2), (cx - 0.28, y_add2))
    ax.text(skip_x - 0.12, (branch2 + y_add2) / 2, "residual", ha="right", va="center", fontsize=9.5,
            rotation=90, color="#555555")
    ax.plot([cx], [branch1], "o", color="#333333", markersize=4)
    ax.plot([cx], [branch2], "o", color="#333333", markersize=4)
    ax.text(6.3, y_add1, "x = x + attn(ln1(x))", ha="left", va="center", fontsize=9.5,
            family="DejaVu Sans Mono")
    ax.text(6.3, y_add2, "x = x + ffwd(ln2(x))", ha="left", va="center", fontsize=9.5,
            family="DejaVu Sans Mono")
    shape_label(ax, cx + 0.15, 6.85, "(B, T, C)")

    # Head and loss
    y_lnf, y_head, y_logits, y_loss = 5.7, 4.45, 3.15, 1.5
    arrow(ax, (cx, y_add2 - 0.28), (cx, y_lnf + 0.35))
    box(ax, cx, y_lnf, 3.2, 0.7, "ln_f · LayerNorm", NORM, bold_first_line=False)
    arrow(ax, (cx, y_lnf - 0.35), (cx, y_head + 0.4))
    box(ax, cx, y_head, 4.2, 0.8, "lm_head\nnn.Dense(vocab_size)", HEAD)
    arrow(ax, (cx, y_head - 0.4), (cx, y_logits + 0.35))
    box(ax, cx, y_logits, 3.0, 0.7, "logits", DATA, bold_first_line=False)
    shape_label(ax, cx + 1.65, y_logits, "(B, T, vocab_size)")
    arrow(ax, (cx, y_logits - 0.35), (cx, y_loss + 0.5))
    box(ax, cx, y_loss, 4.4, 1.0, "cross entropy\nmean over B and T → loss (a scalar)", LOSS)
    box(ax, 10.05, y_loss, 3.2, 1.15, "targets\nidx shifted by one:\nthe next token at every t", DATA,
        fontsize=10.5)
    shape_label(ax, 10.05, y_loss - 0.85, "(B, T)", ha="center")
    arrow(ax, (8.45, y_loss), (cx + 2.2, y_loss))

    save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Matrices drawn as grids
# --------------------------------------------------------------------------------------------------------------

def grid(ax, x0, y_top, values, cell=0.62, colours=None, fmt=None, fontsize=9.5, row_labels=None,
         col_labels=None, title=None, title_size=11, shade=None):
    """A matrix as a grid of cells with its top-left corner at (x0, y_top); returns (x_left, x_right, y_top,
    y_bottom). `values` are printed with `fmt` (a function) when given; `shade` gives each cell's colour."""
    values = np.asarray(values, dtype=object)
    rows, cols = values.shape
    for r in range(rows):
        for c in range(cols):
            colour = shade(r, c) if shade else (colours or "white")
            ax.add_patch(Rectangle((x0 + c * cell, y_top - (r + 1) * cell), cell, cell, facecolor=colour,
                                   edgecolor="#555555", linewidth=0.8))
            if fmt is not None:
                ax.text(x0 + (c + 0.5) * cell, y_top - (r + 0.5) * cell, fmt(values[r, c]), ha="center",
                        va="center", fontsize=fontsize)
    if row_labels:
        for r, label in enumerate(row_labels):
            ax.text(x0 - 0.12, y_top - (r + 0.5) * cell, label, ha="right", va="center", fontsize=8.5,
                    color="#555555")
    if col_labels:
        for c, label in enumerate(col_labels):
            ax.text(x0 + (c + 0.5) * cell, y_top + 0.16, label, ha="center", va="bottom", fontsize=8.5,
                    color="#555555")
    if title:
        lift = 0.55 if col_labels else 0.25
        ax.text(x0 + cols * cell / 2, y_top + lift, title, ha="center", va="bottom", fontsize=title_size,
                fontweight="bold")
    return x0, x0 + cols * cell, y_top, y_top - rows * cell


def _softmax_rows(a):
    a = a - np.nanmax(a, axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def _one_decimal(a) -> str:
    return f"{round(float(a), 1) + 0.0:.1f}"  # + 0.0 turns -0.0 into 0.0


def _two_digits(a) -> str:
    a = float(a)
    return "0" if a < 0.005 else "1" if a > 0.995 else f"{a:.2f}".lstrip("0")


def draw_attention_head(path: Path) -> None:
    T, C, hs = 4, 6, 3
    rng = np.random.default_rng(7)
    x = rng.normal(size=(T, C))
    q, k, v = (x @ rng.normal(size=(C, hs)) / np.sqrt(C) for _ in range(3))
    scores = q @ k.T * hs**-0.5
    masked = np.where(np.tril(np.ones((T, T))) > 0, scores, -np.inf)
    wei = _softmax_rows(masked)
    tokens = ["t=0", "t=1", "t=2", "t=3"]
    keys = ["s=0", "s=1", "s=2", "s=3"]

    fig, ax = plt.subplots(figsize=(17.5, 6.4))
    ax.set_xlim(0, 35)
    ax.set_ylim(-0.3, 12.2)
    ax.axis("off")
    ax.text(17.5, 11.75, "One head of causal self-attention", ha="center", va="center", fontsize=16,
            fontweight="bold")
    ax.text(17.5, 11.15, "x (B, T, C) → out (B, T, head_size); here one sequence, T = 4, C = 6, head_size = 3",
            ha="center", va="center", fontsize=10.5, color="#555555")

    cell = 0.62
    # x
    xl, xr, xt, xb = grid(ax, 0.9, 7.6, np.zeros((T, C)), cell, colours="#eeeeee", row_labels=tokens,
                          title="x  (T, C)")
    # q, k, v
    px = 7.1
    tops = {"query": 10.2, "key": 6.9, "value": 3.6}
    colours = {"query": Q_COLOUR, "key": K_COLOUR, "value": V_COLOUR}
    letters = {"query": "q", "key": "k", "value": "v"}
    for name, top in tops.items():
        letter = letters[name]
        grid(ax, px, top, np.zeros((T, hs)), cell, colours=colours[name], title=f"{letter} = x @ W_{letter}",
             title_size=10.5)
        ax.text(px + hs * cell + 0.15, top - T * cell + 0.1, "(T, head_size)", ha="left", va="bottom",
                fontsize=8.5, color="#555555")
        arrow(ax, (xr + 0.1, (xt + xb) / 2), (px - 0.15, top - T * cell / 2), lw=1.2)
    ax.text((xl + xr) / 2, xt + 1.05, "three nn.Dense(head_size, use_bias=False)\nnamed 'query', 'key', 'value'",
            ha="center", va="bottom", fontsize=9.5, color="#333333")

    # scores
    sx = 13.7
    qk_right = px + hs * cell
    grid(ax, sx, 8.9, scores, cell * 1.35, fmt=_one_decimal, shade=lambda r, c: "#fff3e0",
         row_labels=tokens, col_labels=keys, title="q @ kᵀ · head_size^-0.5")
    ax.text(sx + 2 * cell * 1.35, 8.9 - 4 * cell * 1.35 - 0.35, "affinities (T, T)", ha="center", va="top",
            fontsize=9.5, color="#555555")
    arrow(ax, (qk_right + 0.1, 10.2 - T * cell / 2), (sx - 0.85, 7.85), lw=1.2, colour="#b03030")
    arrow(ax, (qk_right + 0.1, 6.9 - T * cell / 2), (sx - 0.85, 7.25), lw=1.2, colour="#2060a0")

    # masked
    mx = sx + 4 * cell * 1.35 + 1.7
    grid(ax, mx, 8.9, masked, cell * 1.35, fmt=lambda a: "−∞" if np.isinf(a) else _one_decimal(a),
         shade=lambda r, c: "#d9d9d9" if c > r else "#fff3e0", row_labels=tokens, col_labels=keys,
         title="mask the future")
    ax.text(mx + 2 * cell * 1.35, 8.9 - 4 * cell * 1.35 - 0.35, "where(tril, wei, −∞)", ha="center", va="top",
            fontsize=9.5, color="#555555", family="DejaVu Sans Mono")
    arrow(ax, (sx + 4 * cell * 1.35 + 0.15, 7.55), (mx - 0.75, 7.55), lw=1.2)

    # softmax
    wx = mx + 4 * cell * 1.35 + 1.7
    grid(ax, wx, 8.9, wei, cell * 1.35, fmt=_two_digits,
         shade=lambda r, c: "#f2f2f2" if c > r else plt.cm.Greens(0.15 + 0.6 * wei[r, c]), row_labels=tokens,
         col_labels=keys, title="softmax over each row")
    ax.text(wx + 2 * cell * 1.35, 8.9 - 4 * cell * 1.35 - 0.35, "wei: each row sums to 1", ha="center",
            va="top", fontsize=9.5, color="#555555")
    arrow(ax, (mx + 4 * cell * 1.35 + 0.15, 7.55), (wx - 0.75, 7.55), lw=1.2)

    # weighted sum
    ox = wx + 4 * cell * 1.35 + 1.9
    grid(ax, ox, 8.3, np.zeros((T, hs)), cell, colours="#e8e0f4", row_labels=tokens,
         title="out = wei @ v", title_size=11)
    ax.text(ox + hs * cell / 2, 8.3 - T * cell - 0.3, "(T, head_size)", ha="center", va="top", fontsize=9.5,
            color="#555555")
    arrow(ax, (wx + 4 * cell * 1.35 + 0.15, 7.55), (ox - 0.75, 7.55), lw=1.2)
    # v feeds the weighted sum
    vy = 3.6 - T * cell / 2
    line(ax, [qk_right + 0.1, ox + hs * cell / 2], [vy, vy], colour="#2f7d32", lw=1.2)
    arrow(ax, (ox + hs * cell / 2, vy), (ox + hs * cell / 2, 8.3 - T * cell - 0.85), colour="#2f7d32", lw=1.2)
    ax.text((qk_right + ox) / 2 + 2, vy - 0.3, "the values v are what gets averaged", ha="center", va="top",
            fontsize=9.5, color="#2f7d32")

    ax.text(17.5, 0.2, "Row t of wei says how much position t takes from each position s ≤ t; positions after t "
            "get weight 0.", ha="center", va="center", fontsize=10.5)
    save(fig, path)


def draw_causal_mask(path: Path) -> None:
    T = 5
    tril = np.tril(np.ones((T, T)))
    positions = [f"t={t}" for t in range(T)]
    cols = [f"s={s}" for s in range(T)]
    cell = 0.78

    fig, ax = plt.subplots(figsize=(13.2, 7.6))
    ax.set_xlim(0, 22)
    ax.set_ylim(0, 12.6)
    ax.axis("off")
    ax.text(11, 12.2, "The averaging trick: a lower-triangular weight matrix", ha="center", va="center",
            fontsize=16, fontweight="bold")

    def fraction(r, c):
        return "0" if c > r else ("1" if r == 0 else f"1/{r + 1}")

    # matmul route (top left)
    grid(ax, 1.3, 10.6, tril, cell, fmt=lambda a: f"{a:.0f}", shade=lambda r, c: "#cfe3f7" if c <= r else "white",
         row_labels=positions, col_labels=cols, title="jnp.tril(jnp.ones((T, T)))")
    # softmax route (bottom left)
    zeros_masked = np.where(tril > 0, 0.0, -np.inf)
    grid(ax, 1.3, 4.7, zeros_masked, cell, fmt=lambda a: "−∞" if np.isinf(a) else "0",
         shade=lambda r, c: "#d9d9d9" if c > r else "#fff3e0", row_labels=positions, col_labels=cols,
         title="where(tril == 0, −∞, 0)")

    # the result
    wx, wt = 11.0, 7.75
    values = np.array([[fraction(r, c) for c in range(T)] for r in range(T)], dtype=object)
    grid(ax, wx, wt, values, cell, fmt=str, shade=lambda r, c: plt.cm.Greens(0.15 + 0.6 / (r + 1)) if c <= r
         else "white", row_labels=positions, col_labels=cols, title="wei  (T, T)")
    ax.text(wx + T * cell / 2, wt - T * cell - 0.3, "each row sums to 1", ha="center", va="top", fontsize=10,
            color="#555555")

    left_right = 1.3 + T * cell
    arrow(ax, (left_right + 0.2, 10.6 - T * cell / 2), (wx - 0.85, wt - 1.2), lw=1.4)
    ax.text(8.25, 9.75, "divide each row by its sum\nwei / wei.sum(1, keepdims=True)", ha="center",
            va="bottom", fontsize=10, family="DejaVu Sans Mono")
    arrow(ax, (left_right + 0.2, 4.7 - T * cell / 2), (wx - 0.85, wt - T * cell + 1.0), lw=1.4)
    ax.text(8.25, 3.2, "softmax over each row\n(exp(−∞) = 0)", ha="center", va="top", fontsize=10,
            family="DejaVu Sans Mono")

    # what the matmul does
    ex = wx + T * cell + 1.6
    ax.text(ex, 6.6, "out = wei @ x", ha="left", va="center", fontsize=13, family="DejaVu Sans Mono",
            fontweight="bold")
    ax.text(ex, 5.95, "(T, T) @ (B, T, C) → (B, T, C)", ha="left", va="center", fontsize=10.5,
            family="DejaVu Sans Mono")
    ax.text(ex, 4.75, "out[:, t] = mean of x[:, 0..t]\n\nrow t mixes only the past:\n"
            "the zeros above the diagonal\nkeep the future out", ha="left", va="center", fontsize=10.5)
    save(fig, path)


PICTURES = {
    "minigpt.png": draw_minigpt,
    "attention_head.png": draw_attention_head,
    "causal_mask.png": draw_causal_mask,
    "reference_loss_tiny.png": lambda path: draw_reference_loss(path),
}


def draw_reference_loss(path: Path) -> None:
    """The reference MiniGPT's loss curve for the `tiny` configuration, from bench/train_tiny.py's figures,
    so a learner can answer "is my loss right?"."""
    import json

    results = json.loads((HERE.parent / "bench" / "results" / "train_tiny.json").read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(results["steps"], results["train_losses"], "o-", label="train")
    ax.plot(results["steps"], results["eval_losses"], "o-", label="eval")
    ax.axhline(1.75, color="grey", ls="--", lw=1)
    ax.text(results["steps"][-1], 1.77, "target 1.75", ha="right", va="bottom", color="grey")
    ax.set_xlabel("step (batch 64 x block 64 tokens)")
    ax.set_ylabel("cross entropy (nats per character)")
    ax.set_ylim(1.2, 3.0)
    ax.set_title(f"Reference MiniGPT, `tiny` ({results['n_params']:,} parameters): eval "
                 f"{results['final_eval_loss']:.2f} in {results['wall_seconds'] / 60:.1f} min on 2 CPU cores")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, path)


def main(argv: list[str] | None = None) -> int:
    out_dir = Path(argv[0]) if argv else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in PICTURES.items():
        draw(out_dir / name)
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
