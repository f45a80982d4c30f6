"""The benchmarks' own machinery (bench/): the recipe both sides of a race share, the PyTorch peer being the same
model as the reference, the entry point. The figures themselves are measured by `python -m bench`, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))

import recipe  # noqa: E402  (bench/recipe.py)

from jaxgpt.tokenizer import CharTokenizer  # noqa: E402
from jaxgpt.training import configs, loop  # noqa: E402


@pytest.mark.parametrize("name", ["speedrun", "tiny", "challenge"])
def test_the_peer_schedule_is_the_reference_schedule(name):
    train = configs.get_config(name).train
    schedule = loop.learning_rate_schedule(train)
    for step in [0, 1, 7, train.warmup_iters - 1, train.warmup_iters, train.warmup_iters + 1, train.max_iters // 2,
                 train.max_iters - 1, train.max_iters, train.max_iters + 5]:
        step = max(step, 0)
        ours = schedule(step) if callable(schedule) else schedule
        assert recipe.learning_rate(step, configs.dataclasses.asdict(train)) == pytest.approx(float(ours),
                                                                                            rel=1e-5, abs=1e-9)


def test_the_nanogpt_baseline_is_nanogpts_cpu_recipe_on_the_speedrun_model():
    speedrun = configs.get_config("speedrun").with_vocab_size(65).to_dict()
    baseline = configs.Config.from_dict(recipe.nanogpt_cpu(speedrun))  # a configuration jaxgpt could train
    assert baseline.model == configs.Config.from_dict(speedrun).model
    train = configs.dataclasses.asdict(baseline.train)
    assert (train["batch_size"], train["max_iters"], train["beta2"], train["weight_decay"]) == (12, 2000, 0.99, 0.1)
    # nanoGPT's get_lr: linear warmup to 1e-3 over 100 iterations, cosine to 1e-4 at 2,000.
    assert recipe.learning_rate(50, train) == pytest.approx(5e-4)
    assert recipe.learning_rate(100, train) == pytest.approx(1e-3)
    assert recipe.learning_rate(1050, train) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert recipe.learning_rate(2000, train) == pytest.approx(1e-4)
    assert speedrun["train"]["batch_size"] == 8  # the baseline's settings did not leak into the configuration


def test_flops_per_token_counts_the_matmuls_and_the_attention_square():
    model = configs.get_config("tiny").with_vocab_size(65).to_dict()["model"]
    # 4 layers x 12 x 128^2 weights in the blocks, 128 x 65 in the head, 6 FLOPs per weight per token; the
    # attention's two T x T products, forward and backward: 12 x 4 x 128 x 64.
    assert recipe.flops_per_token(model) == 6 * (4 * 12 * 128 * 128 + 128 * 65) + 12 * 4 * 128 * 64 == 5_161_728


def test_the_corpus_is_numbered_as_the_char_tokenizer_numbers_it(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
    path = tmp_path / "input.txt"
    path.write_text(text)
    train_ids, eval_ids, vocab = recipe.load_corpus(path)
    tokenizer = CharTokenizer.from_text(text)
    assert vocab == tokenizer.vocab_size
    assert np.concatenate([train_ids, eval_ids]).tolist() == tokenizer.encode(text)
    assert len(train_ids) == int(0.9 * len(text))
    x, y = recipe.eval_windows(eval_ids, 16)
    x2, _ = recipe.eval_windows(eval_ids, 16)
    assert x.shape == y.shape == (recipe.EVAL_WINDOWS, 16) and (x == x2).all()
    assert (x[:, 1:] == y[:, :-1]).all()


@pytest.mark.slow
def test_the_pytorch_peer_is_the_reference_model():
    """The PyTorch peer computes the reference's logits from the same parameters and takes the same AdamW step.
    (Slow: `import torch` and its first operations take some ten seconds, and CI, which has no PyTorch, skips it
    anyway. The default run keeps what both sides of a race share: the schedule, the FLOPs count and the
    corpus's numbering above.)"""
    torch = pytest.importorskip("torch", reason="the PyTorch peer needs the `bench` extra")
    import torch_peer  # bench/torch_peer.py

    config = configs.Config("t", configs.ModelConfig(vocab_size=13, block_size=24, n_embd=48, n_head=3, n_layer=2),
                            configs.TrainConfig(warmup_iters=0))  # the first step at the peak rate
    model = loop.build_model(loop.model_class("reference", 1), config)
    params = loop.init_params(model, config, jax.random.PRNGKey(0))
    peer = torch_peer.MiniGPT(**config.to_dict()["model"])
    assert torch_peer.count_params(peer) == loop.count_params(params)
    torch_peer.from_flax(peer, params).eval()
    idx = np.random.default_rng(1).integers(0, 13, (3, 24))
    ours = np.asarray(model.apply({"params": params}, idx))
    theirs = peer(torch.from_numpy(idx)).detach().numpy()
    np.testing.assert_allclose(theirs, ours, atol=2e-5, rtol=1e-5)
    # And trained the same way: one optimiser step of each from the same parameters on the same batch (the
    # first step is step 0, as optax counts it).
    tx = loop.make_optimizer(config.train)
    grads = jax.grad(lambda p: loop.loss_fn(model, p, idx, np.roll(idx, -1, 1)))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    stepped = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    optimizer = torch_peer.make_optimizer(peer, config.to_dict()["train"])
    peer.train()
    torch_peer.train_step(peer, optimizer, torch_peer.loss_of, torch.from_numpy(idx),
                          torch.from_numpy(np.roll(idx, -1, 1)), 0, config.to_dict()["train"])
    expected = torch_peer.from_flax(torch_peer.MiniGPT(**config.to_dict()["model"]), stepped)
    C = config.model.n_embd
    for (name, a), b in zip(peer.named_parameters(), expected.parameters()):
        a, b = a.detach().numpy(), b.detach().numpy()
        if name.endswith("qkv.bias"):
            # The key bias adds q . b_k to every score of a row alike, which the softmax ignores: its gradient is
            # zero up to roundoff, and Adam's first step turns roundoff into +-lr. The query and value parts only.
            a, b = np.delete(a, np.s_[C:2 * C]), np.delete(b, np.s_[C:2 * C])
        # Adam's first step is +-lr wherever a gradient is far above its epsilon: equal to roundoff there. Where a
        # gradient is near zero (a ReLU at its edge), roundoff moves the step by up to lr; allow a few such.
        close = np.abs(a - b) <= 2e-6
        assert close.mean() >= 0.995, f"{name}: {1 - close.mean():.1%} of the parameters took another step"
        assert np.abs(a - b).max() <= 2 * config.train.learning_rate, name


def test_python_m_bench_lists_the_benchmarks_and_refuses_an_unknown_one():
    listed = subprocess.run([sys.executable, "-m", "bench"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert listed.returncode == 0 and "time-to-loss" in listed.stdout and "throughput" in listed.stdout
    unknown = subprocess.run([sys.executable, "-m", "bench", "nope"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert unknown.returncode == 2 and "There is no benchmark 'nope'" in unknown.stdout


@pytest.mark.slow
def test_the_jax_side_measures_a_few_steps():
    """(Slow: some ten seconds of compilation. The default run keeps the parts a race is built from: the
    schedule, the FLOPs count, the corpus's numbering, and `python -m bench`'s list.)"""
    import jax_run  # bench/jax_run.py

    result = jax_run.throughput(configs.get_config("micro").with_vocab_size(11).to_dict(), calls=2,
                                steps_per_call=2)
    assert result["tokens_per_second"] > 0 and result["compile_s"] > 0 and result["n_params"] > 0
    json.dumps(result)


@pytest.mark.slow
def test_the_race_compiles_on_threads_and_stops_at_the_target(tmp_path, capsys):
    """(Slow: three compilations. jax_run.race lowers the training call from the parameters' shapes and compiles
    it beside the initialisation; the default run keeps the configuration and schedule checks above.)"""
    import jax_run  # bench/jax_run.py

    path = tmp_path / "input.txt"
    path.write_text("To be, or not to be, that is the question.\n" * 300)
    config = configs.get_config("micro").with_vocab_size(1).to_dict()  # the race sets the corpus's vocabulary
    result = jax_run.race(config, str(path), target=0.0, eval_every=10, steps_per_call=5)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 30, 40]  # micro's 40 steps, an evaluation every 10
    assert lines[-1]["eval_loss"] < lines[0]["eval_loss"] < 4  # it learns: ln(vocabulary) is about 2.9
    assert result["reached"] is False and result["step"] == 40 and result["compile_seconds"] > 0
