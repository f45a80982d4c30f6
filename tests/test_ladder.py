"""The loss ladder (jaxgpt/ladder.py): every rung builds from the reference's modules and trains, an unfinished
or broken rung is one sentence while the others train, the GPU rung waits for a GPU, the same seed gives the
same losses, and the table and the picture are made from the results. A made-up corpus and toy sizes keep it
to seconds. The tests that train every rung (seven models, some 30 s of compilation on a new machine) are
marked slow; the default run still trains the bigram from the reference, a ladder with an unfinished and a
broken rung, the command line and the notebook cell, and builds the residual and LayerNorm rungs."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxgpt import ladder  # noqa: E402
from jaxgpt.grader import implementation, task_list  # noqa: E402

CORPUS = "the quick brown fox jumps over the lazy dog.\nthe lazy dog sleeps in the sun.\n" * 60
VOCAB = len(set(CORPUS))  # 29
STEPS, INTERVAL, EVAL_ITERS = 4, 2, 2


def toy(rung: ladder.Rung) -> ladder.Rung:
    """The rung at toy sizes (all different: batch 3, context 6, width 16), its structure unchanged."""
    return dataclasses.replace(rung, batch_size=3, block_size=6, n_embd=16, n_head=1 if rung.n_head == 1 else 2,
                               n_layer=min(rung.n_layer, 2))


TOY_RUNGS = [toy(r) for r in ladder.RUNGS]
SMALL = [r.name for r in ladder.RUNGS if not r.gpu]


def train(impl="reference", rungs=TOY_RUNGS, **kwargs):
    options = dict(text=CORPUS, steps=STEPS, eval_iters=EVAL_ITERS, eval_interval=INTERVAL, gpu=False, say=None)
    return ladder.train_ladder(impl, rungs=rungs, **{**options, **kwargs})


@pytest.fixture(scope="module")
def reference_ladder():
    return train()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.slow
def test_every_rung_trains_from_the_reference(reference_ladder):
    """Every CPU rung trains from the reference's modules: a finite eval loss at steps 0, 2 and 4, below the
    first evaluation's, with the video's figure beside it"""
    assert [row.rung for row in reference_ladder.rows] == [r.name for r in ladder.RUNGS]
    for row in reference_ladder.rows:
        if row.gpu:
            continue
        assert row.ran, f"{row.rung}: {row.note}"
        assert row.steps == [0, 2, 4] and len(row.eval_losses) == 3
        assert np.isfinite(row.eval_losses).all() and np.isfinite(row.train_losses).all()
        assert row.eval_loss == row.eval_losses[-1] and row.wall_seconds > 0
        assert row.video_loss == ladder.get_rung(row.rung).video_loss
    assert reference_ladder["+ LayerNorm"].eval_loss < reference_ladder["+ LayerNorm"].eval_losses[0]


@pytest.mark.slow
def test_each_rung_is_the_model_it_names(reference_ladder):
    """The parameter counts are those of the video's models at these sizes, counted by hand (V = 29 characters,
    C = 16, context 6): each rung adds exactly its part"""
    V, C, T = VOCAB, 16, 6
    embeddings_and_head = V * C + T * C + C * V + V
    heads = 3 * C * C  # key, query, value without biases, for one head of C or two of C // 2
    projection = C * C + C
    feed_forward = C * 4 * C + 4 * C + 4 * C * C + C
    layer_norm = 2 * C
    expected = {
        "bigram": V * V,
        "one head": embeddings_and_head + heads,
        "multi-head": embeddings_and_head + heads + projection,
        "+ feed-forward": embeddings_and_head + heads + projection + feed_forward,
        "+ residual": embeddings_and_head + 2 * (heads + projection + feed_forward),
        "+ LayerNorm": embeddings_and_head + 2 * (heads + projection + feed_forward + 2 * layer_norm) + layer_norm,
    }
    assert {name: reference_ladder[name].params for name in expected} == expected
    # The CPU-sized scale rung is task 6's MiniGPT (Flax's attention tree, with biases), at these sizes.
    from jaxgpt import contract
    import math
    shapes = contract.model_shapes(V, 6, C, 2, 2)
    leaves = [s for s in _leaves(shapes)]
    assert reference_ladder["scale, CPU-sized"].params == sum(math.prod(s) for s in leaves)


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def test_residual_and_layer_norm_switches_change_the_function():
    """The + residual rung's model is x + f(x) where + feed-forward's is f(x), on the same parameters, and
    + LayerNorm normalises: LadderLM's switches do what they say"""
    import jax
    import jax.numpy as jnp

    impl = implementation.resolve("reference")
    idx = jax.random.randint(jax.random.key(0), (2, 6), 0, VOCAB)
    rung = toy(ladder.get_rung("+ residual"))
    residual = ladder.build_model(rung, impl, VOCAB)
    plain = ladder.build_model(dataclasses.replace(rung, residual=False), impl, VOCAB)
    params = jax.jit(residual.init)(jax.random.key(1), idx)  # jitted: one compilation instead of one per op
    shapes = jax.eval_shape(plain.init, jax.random.key(1), idx)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
    assert not jnp.allclose(jax.jit(residual.apply)(params, idx), jax.jit(plain.apply)(params, idx))
    normed = ladder.build_model(toy(ladder.get_rung("+ LayerNorm")), impl, VOCAB)
    names = set(jax.eval_shape(normed.init, jax.random.key(1), idx)["params"]["blocks_0"])
    assert names == {"ln1", "attn", "ln2", "ffwd"}


class UnfinishedHead(nn.Module):
    head_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        raise NotImplementedError("Task 3: write Head")


class BrokenFeedForward(nn.Module):
    n_embd: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        return nn.Dense(self.n_embd + 1)(x)  # one channel too many: the residual add cannot broadcast


def test_an_unfinished_rung_is_a_sentence_and_the_others_train():
    """An unfinished Head skips the rungs that need it with one sentence naming the task; a missing name and a
    bug are sentences too; the bigram rung still trains"""
    reference = implementation.resolve("reference")
    names = {name: reference.get(task_list.get_task(n), name) for name, n in
             (("MultiHeadAttention", 4), ("LayerNorm", 6), ("MiniGPT", 6))}
    namespace = {**names, "Head": UnfinishedHead, "FeedForward": BrokenFeedForward}
    picked = [toy(ladder.get_rung(n)) for n in ("bigram", "one head", "+ residual")]
    result = train(namespace, rungs=picked, steps=2, eval_interval=2)
    assert result["bigram"].ran
    one_head = result["one head"]
    assert not one_head.ran and one_head.params is None
    assert one_head.note.startswith("Skipped") and "task 3" in one_head.note and "Task 3: write Head" in one_head.note
    assert "\n" not in one_head.note and "Traceback" not in one_head.note
    broken = result["+ residual"]
    assert not broken.ran and broken.note.startswith("Stopped") and "check" in broken.note, broken.note
    missing = train({}, rungs=picked[1:2], steps=2, eval_interval=2)["one head"]
    assert not missing.ran and "does not define `Head`" in missing.note and "task 3" in missing.note
    table = result.table()
    assert "skipped" in table and "bigram" in table


@pytest.mark.slow
def test_the_gpu_rung_waits_for_a_gpu(reference_ladder, monkeypatch):
    """On a CPU the GPU rung is not run and says how to run it; it is trained when asked (gpu=True) or when JAX
    runs on a GPU. (The CPU-sized scale rung trains the same MiniGPT with dropout in the other tests.)"""
    row = reference_ladder["dropout and scale"]
    assert not row.ran and "GPU" in row.note and "--gpu" in row.note and row.video_loss == 1.48
    # Its parameters are counted from the shapes alone: at toy sizes it is the CPU-sized rung's model.
    assert row.params == reference_ladder["scale, CPU-sized"].params
    trained = []

    def fake_train_rung(rung, *args, **kwargs):
        trained.append(rung.name)
        return ladder.RungResult(rung.name, rung.adds, rung.tasks, rung.video_loss, rung.video_note, rung.sizes())

    monkeypatch.setattr(ladder, "train_rung", fake_train_rung)
    gpu_rung = [toy(ladder.get_rung("dropout and scale"))]
    train(rungs=gpu_rung, gpu=True)
    monkeypatch.setattr(ladder, "_gpu_present", lambda: True)
    train(rungs=gpu_rung, gpu=None)
    monkeypatch.setattr(ladder, "_gpu_present", lambda: False)
    train(rungs=gpu_rung, gpu=None)
    assert trained == ["dropout and scale", "dropout and scale"]


@pytest.mark.slow
def test_the_same_seed_gives_the_same_losses(reference_ladder):
    """The same seed gives the same curves again (with dropout on); another seed gives other ones"""
    again = train(rungs=[toy(ladder.get_rung("scale, CPU-sized"))])["scale, CPU-sized"]
    assert again.eval_losses == reference_ladder["scale, CPU-sized"].eval_losses
    assert again.train_losses == reference_ladder["scale, CPU-sized"].train_losses
    other = train(rungs=[toy(ladder.get_rung("bigram"))], seed=7)["bigram"]
    assert other.eval_losses != reference_ladder["bigram"].eval_losses


@pytest.mark.slow
def test_the_picture_and_the_tables(reference_ladder, tmp_path):
    """The picture has one curve per rung that ran and a row per rung beside the video's figures; the tables
    have a row per rung and render the same from the JSON"""
    curves, dots = ladder.plot_ladder(reference_ladder)
    assert [line.get_label() for line in curves.get_lines()] == SMALL
    assert [label.get_text() for label in dots.get_yticklabels()] == [r.name for r in ladder.RUNGS]
    assert any("GPU only" in text.get_text() for text in dots.texts)
    path = tmp_path / "ladder.png"
    curves.figure.savefig(path)
    assert path.stat().st_size > 10_000

    d = json.loads(json.dumps(reference_ladder.to_dict()))
    assert ladder.markdown_table(d) == reference_ladder.markdown()
    rows = reference_ladder.markdown().splitlines()
    assert len(rows) == 2 + len(ladder.RUNGS) and "| the video (about) |" in rows[0]
    assert "| dropout and scale |" in rows[-1] and "GPU only" in rows[-1] and "1.48" in rows[-1]
    d["machine"] = {"cpu": "a test CPU", "cpus": 2}
    (tmp_path / "ladder.json").write_text(json.dumps(d))
    shown = ladder.reference_table(tmp_path / "ladder.json")
    assert shown.startswith(rows[0]) and "a test CPU, 2 cores" in shown and f"{STEPS:,} steps" in shown


def test_the_reference_results_render():
    """bench/results/ladder.json, which the lessons and README show, renders as a table of every rung"""
    if not ladder.REFERENCE_JSON.is_file():
        pytest.skip("bench/results/ladder.json is not written yet (bench/ladder.py)")
    shown = ladder.reference_table()
    assert all(f"| {r.name} |" in shown for r in ladder.RUNGS)


def test_the_command_line_writes_the_picture_and_the_results(tmp_path, capsys):
    """python -m jaxgpt.ladder trains the rungs asked for, prints the table, saves the picture and the JSON; a
    missing text is one sentence"""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    out, results = tmp_path / "ladder.png", tmp_path / "ladder.json"
    code = ladder.main(["--data", str(corpus), "--impl", "reference", "--steps", "2", "--eval-iters", "1",
                        "--rungs", "bigram", "--out", str(out), "--json", str(results)])
    printed = capsys.readouterr().out
    assert code == 0 and out.stat().st_size > 0
    assert json.loads(results.read_text())["rungs"][0]["rung"] == "bigram"
    assert "eval loss" in printed and "bigram" in printed
    assert ladder.main(["--data", str(tmp_path / "missing.txt"), "--rungs", "bigram"]) == 1
    assert "There is no file" in capsys.readouterr().err


def test_the_notebook_cell_prints_the_table_and_draws(monkeypatch, capsys):
    """run_ladder trains from the notebook's globals, prints the table and draws the picture; under the
    notebook's tests it runs a few steps of SMOKE_RUNGS, which between them use every module of the ladder"""
    monkeypatch.setenv("JAXGPT_SMOKE", "1")
    asked = {}
    real = ladder.train_ladder

    def spy(impl, **kwargs):
        asked.update(kwargs)
        return real(impl, **{**kwargs, "text": CORPUS, "rungs": [toy(ladder.get_rung("bigram"))]})

    monkeypatch.setattr(ladder, "train_ladder", spy)
    result = ladder.run_ladder({})
    assert asked["rungs"] == ladder.SMOKE_RUNGS and asked["steps"] == 4 and asked["eval_iters"] == 2
    used = {name for rung in ladder.SMOKE_RUNGS for name in ladder._needed_names(ladder.get_rung(rung))}
    assert {"MultiHeadAttention", "FeedForward", "LayerNorm", "MiniGPT"} <= used
    assert result["bigram"].ran and "eval loss" in capsys.readouterr().out and plt.get_fignums()
