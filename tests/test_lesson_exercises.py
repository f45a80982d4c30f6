"""The small exercises inside the lessons: each check cell accepts the answer, says "Not done yet" for the blank
as the notebook ships it, and names the nearest mistake in a sentence; the demonstration cells show what their
prose says they show.

The notebook run (tests/test_notebook.py) executes these cells only with their blanks unfilled, so this file is
where a filled-in answer meets its check. The cells are read from the lessons exactly as the notebook builder
reads them (`python run` fences) and run in a namespace holding the notebook globals they use.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from jaxgpt.grader import task_list
from jaxgpt.notebook.build import split_markdown


def code_cells(lesson: str) -> list[str]:
    text = (task_list.LESSONS_DIR / lesson).read_text(encoding="utf-8")
    return [source for kind, source in split_markdown(text) if kind == "code"]


def cell_with(lesson: str, marker: str) -> str:
    found = [source for source in code_cells(lesson) if marker in source]
    assert len(found) == 1, f"{lesson} should have exactly one `python run` cell containing {marker!r}"
    return found[0]


def run(source: str, namespace: dict) -> str:
    """What the cell prints; an AssertionError from a check cell propagates with its sentence."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, "<lesson cell>", "exec"), namespace)
    return printed.getvalue()


def fill(cell: str, blank: str, answer: str) -> str:
    assert cell.count(blank) == 1, f"the blank {blank!r} should appear once in:\n{cell}"
    return cell.replace(blank, answer)


# --------------------------------------------------------------------------------------------------------------
# Part 0: keys and vmap


@pytest.fixture(scope="module")
def part0():
    """The Part 0 globals the exercises use: data, get_batch, an (untrained) bigram model and its state."""
    import jax
    import jax.numpy as jnp

    from jaxgpt import bigram
    from jaxgpt.data import get_batch, train_eval_split
    from jaxgpt.tokenizer import CharTokenizer

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
    tokenizer = CharTokenizer.from_text(text)
    train_data, eval_data = train_eval_split(jnp.array(tokenizer.encode(text), dtype=jnp.int32))
    model = bigram.SimpleDecoder(tokenizer.vocab_size)
    state = bigram.init_train_state(model, jax.random.key(1), train_data[None, :8])
    return {"jax": jax, "jnp": jnp, "get_batch": get_batch, "train_data": train_data, "eval_data": eval_data,
            "tokenizer": tokenizer, "model": model, "state": state, "key": jax.random.key(2)}


DRAW_BLANK = "        ...  # your code: split `key` into a new key and a batch key, draw with get_batch(batch_key, train_data, 4, 8)"
DRAW_ANSWERS = {
    "right": "        key, batch_key = jax.random.split(key)\n"
             "        batches.append(get_batch(batch_key, train_data, 4, 8))",
    "right with fold_in": "        batches.append(get_batch(jax.random.fold_in(key, len(batches)), train_data, 4, 8))",
    "one key for all": "        batches.append(get_batch(key, train_data, 4, 8))",
    "split without keeping the new key": "        _, batch_key = jax.random.split(key)\n"
                                         "        batches.append(get_batch(batch_key, train_data, 4, 8))",
    "used and split": "        batches.append(get_batch(key, train_data, 4, 8))\n"
                      "        key, _ = jax.random.split(key)",
    "a seed of its own": "        batches.append(get_batch(jax.random.key(len(batches)), train_data, 4, 8))",
}


@pytest.mark.parametrize("answer, said", [
    (None, "Not done yet: fill in the loop of draw_batches"),
    ("right", "Correct: three different batches"),
    ("right with fold_in", "Correct: three different batches"),
])
def test_draw_batches_accepts_a_fresh_key_per_batch(part0, answer, said):
    namespace = dict(part0)
    exercise = cell_with("part0_warmup.md", "def draw_batches")
    run(exercise if answer is None else fill(exercise, DRAW_BLANK, DRAW_ANSWERS[answer]), namespace)
    assert said in run(cell_with("part0_warmup.md", "def check_draw_batches"), namespace)


@pytest.mark.parametrize("answer, words", [
    ("one key for all", "Two batches are the same"),
    ("split without keeping the new key", "Two batches are the same"),
    ("used and split", "drawn with `key` itself"),
    ("a seed of its own", "the same batches for another key"),
])
def test_draw_batches_names_the_key_mistake(part0, answer, words):
    namespace = dict(part0)
    run(fill(cell_with("part0_warmup.md", "def draw_batches"), DRAW_BLANK, DRAW_ANSWERS[answer]), namespace)
    with pytest.raises(AssertionError, match=words):
        run(cell_with("part0_warmup.md", "def check_draw_batches"), namespace)


VMAP_BLANK = "per_example_losses = ...  # your code: jax.vmap(sequence_loss, in_axes=(...))(state.params, xs, ys), shape (8,)"


@pytest.mark.slow
@pytest.mark.parametrize("answer, said", [
    (None, "Not done yet: fill in per_example_losses"),
    ("per_example_losses = jax.vmap(sequence_loss, in_axes=(None, 0, 0))(state.params, xs, ys)",
     "Correct: 8 losses from one call"),
])
def test_per_example_losses_accepts_vmap(part0, answer, said):
    namespace = dict(part0)
    run(cell_with("part0_warmup.md", "def sequence_loss"), namespace)
    exercise = cell_with("part0_warmup.md", "per_example_losses = ...")
    run(exercise if answer is None else fill(exercise, VMAP_BLANK, answer), namespace)
    printed = run(cell_with("part0_warmup.md", "def check_per_example_losses"), namespace)
    assert said in printed, printed


@pytest.mark.slow
def test_per_example_losses_names_a_wrong_axis(part0):
    namespace = dict(part0)
    run(cell_with("part0_warmup.md", "def sequence_loss"), namespace)
    wrong = "per_example_losses = jax.vmap(sequence_loss, in_axes=(None, 1, 1))(state.params, xs, ys)"
    run(fill(cell_with("part0_warmup.md", "per_example_losses = ..."), VMAP_BLANK, wrong), namespace)
    with pytest.raises(AssertionError, match=r"has shape \(16,\); it should be \(8,\)"):
        run(cell_with("part0_warmup.md", "def check_per_example_losses"), namespace)


# --------------------------------------------------------------------------------------------------------------
# Task 1: pytrees

COUNT_BLANK = "    return ...  # your code: jax.tree_util.tree_leaves"
MASK_BLANK = "    return ...  # your code: jax.tree_util.tree_map_with_path"
COUNT_RIGHT = "    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))"
MASK_RIGHT = ("    return jax.tree_util.tree_map_with_path(\n"
              "        lambda path, leaf: path[-1].key in ('kernel', 'embedding'), params)")


@pytest.fixture(scope="module")
def pytree_namespace():
    namespace: dict = {}
    run(cell_with("task01_minigpt.md", "from jaxgpt.contract import model_shapes"), namespace)
    return namespace


def pytree_check(namespace, count: str | None, mask: str | None) -> str:
    namespace = dict(namespace)
    exercise = cell_with("task01_minigpt.md", "def count_params")
    if count is not None:
        exercise = fill(exercise, COUNT_BLANK, count)
    if mask is not None:
        exercise = fill(exercise, MASK_BLANK, mask)
    run(exercise, namespace)
    return run(cell_with("task01_minigpt.md", "def check_pytree_exercise"), namespace)


def test_pytree_exercise_blank_and_answer(pytree_namespace):
    assert "Not done yet" in pytree_check(pytree_namespace, None, None)
    assert "Not done yet" in pytree_check(pytree_namespace, COUNT_RIGHT, None)
    printed = pytree_check(pytree_namespace, COUNT_RIGHT, MASK_RIGHT)
    # 65*32 + 8*32 + 2 blocks * 12,704 + ln_f 64 + lm_head 32*65+65, counted by hand from the lesson's tree
    assert "Correct: 29,953 parameters" in printed, printed


@pytest.mark.parametrize("count, mask, words", [
    ("    return len(jax.tree_util.tree_leaves(params))", MASK_RIGHT, "count_params says 38"),
    (COUNT_RIGHT, "    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)", r"p.dim\(\) >= 2 rule"),
    (COUNT_RIGHT, "    return jax.tree_util.tree_map_with_path(lambda path, p: path[-1].key == 'kernel', params)",
     r"wrong at 2 leaves, first \['position_embedding'\]\['embedding'\]"),
    (COUNT_RIGHT, "    return [True] * 38", "the same structure as params"),
])
def test_pytree_exercise_names_the_mistake(pytree_namespace, count, mask, words):
    with pytest.raises(AssertionError, match=words):
        pytree_check(pytree_namespace, count, mask)


# --------------------------------------------------------------------------------------------------------------
# The demonstrations say what their prose says


@pytest.mark.slow
def test_scale_brings_the_variance_of_q_dot_k_back_to_one():
    printed = run(cell_with("task03_head.md", "largest weight of 8"), {})
    rows = [line.split() for line in printed.splitlines() if line.strip().startswith(("16 ", "64 "))]
    assert len(rows) == 2, printed
    for head_size, raw, scaled, *_ in rows:
        assert abs(float(raw) / int(head_size) - 1) < 0.1 and abs(float(scaled) - 1) < 0.1, printed


@pytest.mark.slow
def test_attention_changes_only_later_positions_of_the_same_sequence():
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {}
    run(cell_with("task03_head.md", "largest weight of 8"), namespace)
    printed = run(cell_with("task03_head.md", "def one_head"), namespace)
    assert "sequence 0: . . . . . x x x" in printed and "sequence 1: . . . . . . . ." in printed, printed


@pytest.mark.slow
def test_gradient_fades_through_depth_only_without_residuals():
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {}
    run(cell_with("task06_own_parts.md", "def stack_loss_grad"), namespace)
    plain, residual = namespace["gradient_norms"]["x = f(x)"], namespace["gradient_norms"]["x = x + f(x)"]
    assert plain[0] / plain[-1] < 1e-6, plain
    assert 0.5 < residual[0] / residual[-1] < 2 and min(residual) > 0.5 * max(residual), residual


def test_plain_function_gpt_gives_the_flax_models_logits(tmp_path, monkeypatch):
    """The aside after task 6: the model as plain functions over task 6's parameter tree gives its logits."""
    import re

    from jaxgpt.grader import implementation

    monkeypatch.chdir(tmp_path)  # no checkpoints/tiny here: the aside initialises the weights itself
    reference = implementation.resolve("reference").for_task(task_list.BY_NUMBER[6])
    namespace = {"MiniGPT": reference.MiniGPT}
    cells = code_cells("aside_pure_functions.md")
    assert len(cells) == 2, "the aside should have its functions cell and its comparison cell"
    run(cells[0], namespace)
    printed = run(cells[1], namespace)
    found = re.search(r"plain functions: ([0-9.e+-]+)", printed)
    assert found and float(found.group(1)) < 1e-4, printed
