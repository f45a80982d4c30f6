"""Measured figures quoted in prose, rendered from `bench/results/*.json` so no time or loss is typed by hand.

A quoted figure is written in a markdown source (README.md, lessons/*.md) between two markers:

    eval loss **<!--fig:train_tiny.eval_loss-->1.56<!--/fig-->** after ...

The markers are HTML comments, invisible where the markdown is shown. `python -m jaxgpt.notebook` rewrites
what lies between them from the benchmark's latest results, in README.md and the lessons, before it builds
the notebook; `--check` (and the test suite) call a source stale when a quoted figure differs from its
result. A figure is named `<result file stem>.<what>`; `FIGURES` says how each is rendered. Re-running a
benchmark and then the builder updates every place that quotes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from jaxgpt.grader import task_list

RESULTS_DIR = task_list.REPO_ROOT / "bench" / "results"
README = task_list.REPO_ROOT / "README.md"
MARKED = re.compile(r"<!--fig:(?P<name>[\w.]+)-->(?P<body>.*?)<!--/fig-->", re.S)


class FigureError(Exception):
    """A marker names a figure that no rule or no result provides; the message says which and where."""


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def _curve_table(result: dict[str, Any]) -> str:
    rows = ["| step | train loss | eval loss |", "|---|---|---|"]
    for step, train, evaluation in zip(result["steps"], result["train_losses"], result["eval_losses"]):
        rows.append(f"| {step:,} | {train:.2f} | {evaluation:.2f} |")
    return "\n\n" + "\n".join(rows) + "\n\n"


def _sample(result: dict[str, Any]) -> str:
    return "\n\n```\n" + result["sample"].strip("\n") + "\n```\n\n"


# name -> (result file stem, how the figure reads from that result)
FIGURES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "train_tiny.minutes": ("train_tiny", lambda r: _minutes(r["wall_seconds"])),
    "train_tiny.eval_loss": ("train_tiny", lambda r: f"{r['final_eval_loss']:.2f}"),
    "train_tiny.tokens_per_second": ("train_tiny", lambda r: f"{r['tokens_per_second']:,.0f}"),
    "train_tiny.n_params": ("train_tiny", lambda r: f"{r['n_params']:,}"),
    "train_tiny.max_steps": ("train_tiny", lambda r: f"{r['steps'][-1]:,}"),
    "train_tiny.cpus": ("train_tiny", lambda r: f"{r['machine']['cpus']}"),
    "train_tiny.curve_table": ("train_tiny", _curve_table),
    "train_tiny.sample": ("train_tiny", _sample),
    "ladder.table": ("ladder", lambda r: "\n\n" + _ladder_table(r) + "\n\n"),
    "finale.minutes": ("finale", lambda r: _minutes(r["training_cell_seconds"])),
    "finale.cpus": ("finale", lambda r: f"{r['machine']['cpus']}"),
    "finale.eval_loss": ("finale", lambda r: f"{r['final_eval_loss']:.2f}"),
    "finale.largest_gap": ("finale", lambda r: f"{abs(r['largest_gap']['gap']):.2f}"),
    "finale.largest_gap_step": ("finale", lambda r: f"{r['largest_gap']['step']:,}"),
    "lstm_vs_gpt.budget_seconds": ("lstm_vs_gpt", lambda r: f"{r['budget_seconds']:g}"),
    "lstm_vs_gpt.cpus": ("lstm_vs_gpt", lambda r: f"{r['machine']['cpus']}"),
    "lstm_vs_gpt.load": ("lstm_vs_gpt", lambda r: f"{r['machine']['load_average_at_start']:.1f}"),
}
# The LSTM-against-GPT comparison: one figure per run ("gpt", "lstm", and "reset" for the run "lstm_reset").
for _run, _key in (("gpt", "gpt"), ("lstm", "lstm"), ("reset", "lstm_reset")):
    FIGURES.update({
        f"lstm_vs_gpt.{_run}_params": ("lstm_vs_gpt", lambda r, k=_key: f"{r['runs'][k]['n_params']:,}"),
        f"lstm_vs_gpt.{_run}_steps": ("lstm_vs_gpt", lambda r, k=_key: f"{r['runs'][k]['steps']:,}"),
        f"lstm_vs_gpt.{_run}_tokens_per_second": ("lstm_vs_gpt",
                                                  lambda r, k=_key: f"{r['runs'][k]['tokens_per_second']:,}"),
        f"lstm_vs_gpt.{_run}_eval_loss": ("lstm_vs_gpt", lambda r, k=_key: f"{r['runs'][k]['final_eval_loss']:.3f}"),
        f"lstm_vs_gpt.{_run}_eval_loss_windowed": (
            "lstm_vs_gpt", lambda r, k=_key: f"{r['runs'][k]['final_eval_loss_windowed']:.3f}"),
        f"lstm_vs_gpt.{_run}_early_step": ("lstm_vs_gpt", lambda r, k=_key: f"{r['runs'][k]['curve']['steps'][1]:,}"),
        f"lstm_vs_gpt.{_run}_early_eval_loss": (
            "lstm_vs_gpt", lambda r, k=_key: f"{r['runs'][k]['curve']['eval_loss'][1]:.3f}"),
    })


_IMPLS = (("jax", "JAX reference"), ("torch-eager", "PyTorch eager"), ("torch-compile", "torch.compile"))


def _throughput_table(result: dict[str, Any]) -> str:
    """bench/results/throughput.json as a markdown table: per configuration and implementation."""
    lines = ["| configuration | implementation | tokens/s | MFU | compile or first step | peak RSS |",
             "|---|---|---:|---:|---:|---:|"]
    for name, row in result["configs"].items():
        for impl, title in _IMPLS:
            r = row.get(impl)
            if not r or "failed" in r:
                continue
            first = r.get("compile_s", r.get("first_step_s"))
            lines.append(f"| `{name}` (batch {row['batch_size']} x {row['block_size']}) | {title} | "
                         f"{r['tokens_per_second']:,} | {r['mfu']:.0%} | {first:.1f} s | {r['peak_rss_mib']:,} MiB |")
    return "\n".join(lines)


_RACERS = _IMPLS + (("torch-eager-nanogpt", "PyTorch eager"), ("torch-compile-nanogpt", "torch.compile"))


def _time_to_loss_table(result: dict[str, Any]) -> str:
    """bench/results/time_to_loss.json as a markdown table: the median seconds to the target per implementation
    and recipe (the configuration raced, or nanoGPT's CPU recipe for the PyTorch baseline)."""
    lines = [f"| implementation | recipe | seconds to eval loss {result['target']} (median of {result['repeats']}) | "
             f"the runs | tokens/s |", "|---|---|---:|---|---:|"]
    for impl, title in _RACERS:
        s = result["summary"].get(impl)
        if s is None:
            continue
        t = s["median_seconds_to_target"]
        runs = ", ".join("-" if v is None else f"{v:.1f}" for v in s["seconds_to_target_all"])
        recipe = s.get("recipe", result["config"])
        recipe = "nanoGPT's CPU recipe" if recipe == "nanogpt-cpu" else f"`{recipe}`"
        tokens = s["median_tokens_per_second"]
        lines.append(f"| {title} | {recipe} | {'not reached' if t is None else f'{t:.1f}'} | {runs} | "
                     f"{'-' if tokens is None else f'{tokens:,}'} |")
    return "\n".join(lines)


def _ratio(result: dict[str, Any], config: str, mode: str) -> str:
    return f"{result['configs'][config][f'jax_over_torch_{mode}']:.2f}"


FIGURES.update({
    "throughput.table": ("throughput", lambda r: "\n\n" + _throughput_table(r) + "\n\n"),
    "throughput.peak_gflops": ("throughput", lambda r: f"{r['peak_gflops']:.0f}"),
    "throughput.load": ("throughput", lambda r: f"{r['machine']['load_average_at_start'][0]:.1f}"),
    "throughput.tiny_over_eager": ("throughput", lambda r: _ratio(r, "tiny", "eager")),
    "throughput.speedrun_over_eager": ("throughput", lambda r: _ratio(r, "speedrun", "eager")),
    "time_to_loss.table": ("time_to_loss", lambda r: "\n\n" + _time_to_loss_table(r) + "\n\n"),
    "time_to_loss.jax_seconds": ("time_to_loss", lambda r: f"{r['summary']['jax']['median_seconds_to_target']:.0f}"),
    "time_to_loss.jax_fraction": ("time_to_loss",
                                  lambda r: f"{r['summary']['torch-eager']['jax_time_fraction']:.2f}"),
    "time_to_loss.baseline_fraction": ("time_to_loss",
                                       lambda r: f"{r['summary']['torch-eager-nanogpt']['jax_time_fraction']:.2f}"),
    "time_to_loss.load": ("time_to_loss", lambda r: f"{r['machine']['load_average_at_start'][0]:.1f}"),
})


def _ladder_table(result: dict[str, Any]) -> str:
    from jaxgpt import ladder  # light: no JAX until a ladder trains

    return ladder.result_table(result)


def results(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Every benchmark result, by file stem."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json"))}


def figure(name: str, found: dict[str, dict[str, Any]], where: str = "") -> str:
    place = f" in {where}" if where else ""
    if name not in FIGURES:
        raise FigureError(f"the marker <!--fig:{name}-->{place} names no figure; jaxgpt/notebook/figures.py "
                          f"knows {', '.join(sorted(FIGURES))}.")
    stem, read = FIGURES[name]
    if stem not in found:
        raise FigureError(f"the figure {name}{place} comes from bench/results/{stem}.json, which does not exist: "
                          "run its benchmark in bench/ first.")
    return read(found[stem])


def render(text: str, found: dict[str, dict[str, Any]], where: str = "") -> str:
    """`text` with every marked figure replaced by its value from `found`."""
    return MARKED.sub(lambda m: f"<!--fig:{m['name']}-->{figure(m['name'], found, where)}<!--/fig-->", text)


def quoting_sources() -> list[Path]:
    """The markdown files that may quote figures: the README and every lesson."""
    return [README, *sorted(task_list.LESSONS_DIR.glob("*.md"))]


def stale_sources(found: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """The sources whose quoted figures differ from the results."""
    found = results() if found is None else found
    return [path for path in quoting_sources() if path.is_file()
            and render(text := path.read_text(encoding="utf-8"), found, _display(path)) != text]


def refresh(found: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """Rewrites every stale source in place; returns those it changed."""
    found = results() if found is None else found
    changed = []
    for path in stale_sources(found):
        path.write_text(render(path.read_text(encoding="utf-8"), found, _display(path)), encoding="utf-8")
        changed.append(path)
    return changed


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(task_list.REPO_ROOT))
    except ValueError:
        return str(path)
