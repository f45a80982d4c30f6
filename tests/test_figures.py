"""Figures quoted in prose come from bench/results: the markers render, a stale quote is reported, a bad marker is
a sentence."""

import json

import pytest

from jaxgpt.notebook import build, figures

RESULT = {"wall_seconds": 300.0, "final_eval_loss": 1.5049, "tokens_per_second": 21000.4, "n_params": 818241,
          "steps": [0, 1000], "train_losses": [4.6, 1.4], "eval_losses": [4.61, 1.5049],
          "machine": {"cpus": 2}, "sample": "ROMEO:\nAy.\n"}


def test_markers_render_from_the_results():
    text = "loss **<!--fig:train_tiny.eval_loss-->9.99<!--/fig-->** in <!--fig:train_tiny.minutes-->?<!--/fig--> min"
    assert figures.render(text, {"train_tiny": RESULT}) == (
        "loss **<!--fig:train_tiny.eval_loss-->1.50<!--/fig-->** in <!--fig:train_tiny.minutes-->5.0<!--/fig--> min")
    table = figures.render("<!--fig:train_tiny.curve_table--><!--/fig-->", {"train_tiny": RESULT})
    assert "| 1,000 | 1.40 | 1.50 |" in table


def test_every_quoted_figure_is_fresh():
    """What README.md and the lessons quote is what bench/results/ says (`python -m jaxgpt.notebook` copies it)"""
    stale = figures.stale_sources()
    assert not stale, f"{', '.join(str(p) for p in stale)} quote stale figures: run `python -m jaxgpt.notebook`"


def test_the_readme_quotes_the_tiny_run_through_markers():
    text = figures.README.read_text(encoding="utf-8")
    for name in ("train_tiny.eval_loss", "train_tiny.minutes", "train_tiny.tokens_per_second",
                 "train_tiny.curve_table"):
        assert f"<!--fig:{name}-->" in text, f"README.md should quote {name} through its marker"


def test_a_new_result_makes_the_sources_stale_and_refresh_updates_them(tmp_path, monkeypatch):
    (tmp_path / "train_tiny.json").write_text(json.dumps(RESULT))
    page = tmp_path / "page.md"
    page.write_text("after <!--fig:train_tiny.minutes-->8.4<!--/fig--> minutes\n")
    monkeypatch.setattr(figures, "quoting_sources", lambda: [page])
    found = figures.results(tmp_path)
    assert figures.stale_sources(found) == [page]
    assert figures.refresh(found) == [page]
    assert page.read_text() == "after <!--fig:train_tiny.minutes-->5.0<!--/fig--> minutes\n"
    assert figures.stale_sources(found) == []


def test_unknown_figure_or_missing_result_is_a_sentence():
    with pytest.raises(figures.FigureError, match="names no figure"):
        figures.render("<!--fig:train_tiny.speed-->1<!--/fig-->", {"train_tiny": RESULT}, "README.md")
    with pytest.raises(figures.FigureError, match="does not exist: run its benchmark"):
        figures.render("<!--fig:train_tiny.minutes-->1<!--/fig-->", {}, "README.md")


def test_the_notebook_shows_figures_without_their_markers():
    nb = build.build()
    assert not any("<!--fig:" in cell.source for cell in nb.cells)
