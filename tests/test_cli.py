"""The `jaxgpt` command, called in-process through `main(argv)`: what it prints, its exit codes, and a
sentence (never a traceback) for everything a learner can get wrong."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from jaxgpt.grader import task_list, hints
from jaxgpt import cli

CORPUS = "the quick brown fox jumps over the lazy dog.\nthe lazy dog sleeps in the sun.\n" * 60


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(CORPUS)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """`jaxgpt train` of the micro configuration for 10 steps; (exit code, output, checkpoint directory).
    capsys is per test, so this module-wide run captures its output by hand."""
    out_dir = tmp_path_factory.mktemp("ckpt") / "micro"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["train", "--config", "micro", "--impl", "reference", "--data", str(corpus),
                         "--out", str(out_dir), "--max-iters", "10", "--eval-interval", "5", "--no-progress"])
    return code, stdout.getvalue() + stderr.getvalue(), out_dir


# ---- progress, check, hint ------------------------------------------------------------------------------


class _StubGrader:
    """Stands in for worker.Grader in the quick progress tests: each task's verdict is `verdicts[number]`, else
    "not started", as every stub's is (tests/test_grading.py grades each stub in the default run; the slow test
    below lets `jaxgpt progress` grade them all through its worker)."""

    def __init__(self, verdicts=None):
        self.verdicts = verdicts or {}
        self.graded = []

    def __call__(self, *args, **kwargs):  # worker.Grader(...)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def start(self):
        pass

    def grade(self, task, impl, timeout_s=None, progress=None):
        from jaxgpt.grader import runner, outcomes

        self.graded.append(task.number)
        return self.verdicts.get(task.number) or runner.Verdict(
            task, [runner.CheckResult("a check", outcomes.NOT_STARTED, "not started yet")])


def _assert_every_stub_listed_not_started(out: str) -> None:
    """`jaxgpt progress`'s table lists every task with its minutes and stars, each stub "not started"."""
    lines = out.splitlines()
    for task in task_list.TASKS:
        line = next((l for l in lines if re.match(rf"\s*{task.number}\s+{re.escape(task.title)}\b", l)), None)
        assert line is not None, f"task {task.number} is not listed:\n{out}"
        assert f"{task.minutes} min" in line and task.stars in line
        if task.test_file.exists():
            assert line.endswith("not started"), line
    assert f"0 of {len(task_list.TASKS)} tasks passed" in out


def test_progress_lists_every_task_with_its_status(capsys, monkeypatch):
    """One line per task, in order, with its minutes, stars and status; the count of passed tasks; a stopped
    check ends the listing with a sentence and exit code 130 (the verdicts stand in for the worker's)"""
    from jaxgpt.grader import runner, outcomes, worker

    stub = _StubGrader()
    monkeypatch.setattr(worker, "Grader", stub)
    code, out, _ = run(capsys, "progress")
    assert code == 0 and stub.graded == [t.number for t in task_list.TASKS if t.test_file.exists()]
    _assert_every_stub_listed_not_started(out)

    first, second, third = task_list.TASKS[:3]
    monkeypatch.setattr(worker, "Grader", _StubGrader({
        first.number: runner.Verdict(first, [runner.CheckResult("a", outcomes.PASSED)]),
        third.number: runner.Verdict(third, [runner.CheckResult("a", outcomes.PASSED)], stopped=True)}))
    code, out, _ = run(capsys, "progress")
    assert code == 130, out
    lines = out.splitlines()
    assert lines[1].endswith("passed") and lines[2].endswith("not started") and lines[3].endswith("stopped"), out
    assert lines[-1] == f"Stopped at task {third.number}: the tasks from there on were not checked.", out


@pytest.mark.slow
def test_progress_lists_every_task_and_the_stubs_read_not_started(capsys):
    """`jaxgpt progress` grades every stub through its worker (slow: every suite runs; the default run has
    test_progress_lists_every_task_with_its_status and tests/test_grading.py's test_stubs_read_not_started)"""
    code, out, _ = run(capsys, "progress")
    assert code == 0
    _assert_every_stub_listed_not_started(out)


def test_status_words_for_passed_partial_and_blocked_tasks():
    """The words of each status; "blocked by task 3" from the sentence the grader gives for the stub of task 3
    raising inside task 4's code (graded for real: tests/test_task04_blocking.py, and the slow test below)"""
    import jax
    import jax.numpy as jnp

    from jaxgpt.grader import implementation, runner, outcomes

    task = task_list.get_task(4)
    passed = runner.Verdict(task, [runner.CheckResult("a", outcomes.PASSED)] * 3)
    partial = runner.Verdict(task, [runner.CheckResult("a", outcomes.PASSED),
                                     runner.CheckResult("b", outcomes.FAILED, "wrong"),
                                     runner.CheckResult("c", outcomes.SKIPPED)])
    assert cli.status_line(passed) == "passed"
    assert cli.status_line(partial) == "1 of 2 checks pass"
    head = implementation.resolve("tasks").get(task_list.get_task(3), "Head")  # the stub
    with pytest.raises(NotImplementedError) as raised:
        head(head_size=4).init(jax.random.key(0), jnp.zeros((1, 3, 8)))
    blocked = outcomes.classify(raised.value, task)
    assert blocked.status == outcomes.BLOCKED, blocked
    verdict = runner.Verdict(task, [runner.CheckResult("a", outcomes.PASSED),
                                    runner.CheckResult("b", blocked.status, blocked.message)])
    assert cli.status_line(verdict) == "blocked by task 3"


@pytest.mark.slow
def test_status_of_a_task_graded_on_an_unfinished_earlier_task(tmp_path):
    import shutil

    from jaxgpt.grader import runner

    task = task_list.get_task(4)
    shutil.copy(task_list.TASKS_DIR / "task03_head.py", tmp_path)  # the stub
    shutil.copy(task_list.REFERENCE_DIR / "task04_multihead.py", tmp_path)  # finished, but builds on task 3
    assert cli.status_line(runner.run_suite(task, tmp_path)) == "blocked by task 3"


def test_check_on_a_stub_exits_1_and_says_not_started(capsys):
    # --in-process: this test is about the words and the exit code; test_check_reference_exits_0 and
    # tests/test_grader_worker.py go through the worker, as a learner's check does.
    code, out, _ = run(capsys, "check", "3", "--in-process")
    assert code == 1
    assert "Task 3" in out and "not started" in out


def test_check_reference_exits_0(capsys, monkeypatch, tmp_path):
    """`jaxgpt check` grades in a worker of its own, as a learner's check does, and with --no-background it
    neither uses nor starts the background grader even where the background grader is on (the default run's
    guard of tests/test_grader_server.py's slow test of --no-background)"""
    monkeypatch.setenv("JAXGPT_BACKGROUND", "on")
    monkeypatch.setenv("JAXGPT_BACKGROUND_DIR", str(tmp_path / "background"))
    code, out, _ = run(capsys, "check", "3", "--impl", "reference", "-v", "--no-background")
    assert code == 0
    assert "checks pass. Well done!" in out and "✓" in out
    assert not (tmp_path / "background").exists() or not list((tmp_path / "background").iterdir())


def test_check_unknown_task_is_a_sentence(capsys):
    code, _, err = run(capsys, "check", "99")
    assert code == 2 and "There is no task '99'" in err


def test_check_and_watch_usage_errors_are_sentences(capsys):
    code, _, err = run(capsys, "check", "3", "--time-limit", "0")
    assert code == 2 and "--time-limit must be more than 0 seconds" in err
    code, _, err = run(capsys, "watch", "99")
    assert code == 2 and "There is no task '99'" in err


def test_bad_impl_path_is_a_sentence(capsys, tmp_path):
    code, _, err = run(capsys, "check", "3", "--impl", str(tmp_path / "missing"))
    assert code == 2 and "is neither `tasks`, `reference`" in err
    code, _, err = run(capsys, "train", "--config", "micro", "--impl", str(tmp_path / "missing"))
    assert code == 2 and "is neither `tasks`, `reference`" in err
    code, _, err = run(capsys, "watch", "3", "--impl", str(tmp_path / "missing"))
    assert code == 2 and "is neither `tasks`, `reference`" in err


def test_hint_reveals_one_hint_at_a_time(capsys, monkeypatch, tmp_path):
    state = tmp_path / "hints.json"
    monkeypatch.setattr(hints, "STATE_FILE", state)
    ladder = hints.ladder(task_list.get_task(3))
    assert len(ladder) >= 2
    code, out, _ = run(capsys, "hint", "3")
    assert code == 0 and "Hint 1 of" in out and ladder[0] in out and ladder[1] not in out
    code, out, _ = run(capsys, "hint", "3")
    assert code == 0 and "Hint 2 of" in out and ladder[1] in out
    assert json.loads(state.read_text()) == {"3": 2}


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "progress" in out and "sample" in out


# ---- train and sample ------------------------------------------------------------------------------------


def test_train_writes_a_checkpoint_and_a_history_whose_loss_fell(trained):
    code, output, out_dir = trained
    assert code == 0, output
    assert re.search(r"^step 10: train \d+\.\d+, eval \d+\.\d+, [\d,]+ tok/s$", output, re.MULTILINE), output
    assert "Done: eval loss" in output
    assert (out_dir / "checkpoint.json").is_file() and (out_dir / "params.msgpack").is_file()
    history = json.loads((out_dir / "history.json").read_text())
    assert history["steps"] == [0, 5, 10]
    assert history["eval_losses"][-1] < history["eval_losses"][0]
    assert history["config"]["train"]["max_iters"] == 10


def test_sample_prints_prompt_and_the_asked_number_of_characters(capsys, trained):
    _, _, out_dir = trained
    code, out, _ = run(capsys, "sample", "--checkpoint", str(out_dir), "--prompt", "the ", "--tokens", "30",
                       "--seed", "3")
    assert code == 0
    text = out.removesuffix("\n")
    assert len(text) == len("the ") + 30 and text.startswith("the ")
    assert set(text) <= set(CORPUS)
    again = run(capsys, "sample", "--checkpoint", str(out_dir), "--prompt", "the ", "--tokens", "30",
                "--seed", "3")[1]
    assert again == out  # the same seed gives the same text


def test_sample_with_an_unknown_character_is_a_sentence(capsys, trained):
    _, _, out_dir = trained
    code, _, err = run(capsys, "sample", "--checkpoint", str(out_dir), "--prompt", "ROMEO:")
    assert code == 1
    assert "never saw in training: ':', 'E', 'M', 'O', 'R'." in err


def test_sample_from_a_missing_checkpoint_is_a_sentence(capsys, tmp_path):
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path / "nothing"))
    assert code == 1 and "There is no checkpoint at" in err


def test_train_unknown_config_is_a_sentence(capsys):
    code, _, err = run(capsys, "train", "--config", "huge")
    assert code == 2 and "There is no configuration 'huge'; the configurations are tiny" in err


def test_train_a_stub_says_the_task_is_not_finished(capsys, tmp_path, corpus):
    (tmp_path / "task01_minigpt.py").write_text(
        "import flax.linen as nn\n\n"
        "class MiniGPT(nn.Module):\n"
        "    vocab_size: int\n    block_size: int\n    n_embd: int\n    n_head: int\n    n_layer: int\n"
        "    dropout_rate: float = 0.0\n\n"
        "    def __call__(self, idx, deterministic=True):\n"
        "        raise NotImplementedError('Task 1: write MiniGPT')\n")
    code, _, err = run(capsys, "train", "--config", "micro", "--impl", str(tmp_path), "--data", str(corpus),
                       "--out", str(tmp_path / "out"))
    assert code == 1
    assert err.strip() == "Task 1 is not finished: `MiniGPT` still raises NotImplementedError."


def test_train_with_a_missing_data_file_is_a_sentence(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--config", "micro", "--impl", "reference", "--data",
                       str(tmp_path / "missing.txt"))
    assert code == 1 and "There is no file at" in err


def test_train_says_how_each_step_is_computed(trained):
    _, output, _ = trained
    assert re.search(r"^Each step: 8 sequences of 16 tokens = 128 tokens, in one pass; float32; one \w+ device\.$",
                     output, re.MULTILINE), output


def test_train_scaling_options_that_do_not_fit_are_sentences(capsys, corpus, tmp_path):
    import jax

    jax.devices()  # JAX has started in this process, so `--mesh 64` cannot split the CPU any more
    common = ["train", "--config", "micro", "--impl", "reference", "--data", str(corpus), "--out",
              str(tmp_path / "out")]
    for flags, words in [
        (["--accumulate", "3"], "A step's batch of 8 sequences cannot be split into 3 equal micro-batches"),
        (["--mesh", "3"], "A step's batch of 8 sequences cannot be split evenly over the mesh's 3 data-parallel"),
        (["--mesh", "two"], "--mesh takes D or DxM, whole numbers of at least 1"),
        (["--batch-size", "0"], "--batch-size must be a whole number of at least 1, got 0."),
        (["--fsdp"], "--fsdp splits the parameters over the mesh's data-parallel devices"),
        (["--mesh", "64", "--batch-size", "64"], "--mesh 64 needs 64 devices, but JAX sees"),
    ]:
        code, out, err = run(capsys, *common, *flags)
        assert code == 2 and err.startswith(words) and len(err.strip().splitlines()) == 1, (flags, err)
    assert not (tmp_path / "out").exists()
    code, _, err = run(capsys, *common, "--precision", "float16")
    assert code == 2 and "invalid choice: 'float16'" in err


@pytest.mark.slow
def test_train_with_accumulation_gives_the_plain_runs_losses(capsys, trained, corpus, tmp_path):
    """`jaxgpt train --accumulate 2`: each batch in 2 micro-batches of 4, said so; the losses of its 10 steps and
    evaluations are those of the plain run (`trained`) up to float32 roundoff (1e-5; see tests/test_training.py).
    The same on a 4x2 mesh of simulated devices, with FSDP, is the slow test below (a process of its own).
    (Slow too: a second training run. By default tests/test_training.py checks the accumulated gradient against
    the big batch's.)"""
    out = tmp_path / "accumulated"
    code, output, err = run(capsys, "train", "--config", "micro", "--impl", "reference", "--data", str(corpus),
                            "--out", str(out), "--max-iters", "10", "--eval-interval", "5", "--no-progress",
                            "--accumulate", "2")
    assert code == 0, output + err
    assert re.search(r"^Each step: 8 sequences of 16 tokens = 128 tokens, in 2 micro-batches of 4 \(gradient "
                     r"accumulation\); float32; one \w+ device\.$", output, re.MULTILINE), output
    plain = json.loads((trained[2] / "history.json").read_text())
    accumulated = json.loads((out / "history.json").read_text())
    assert accumulated["steps"] == plain["steps"] == [0, 5, 10]
    for name in ("batch_losses", "train_losses", "eval_losses"):
        assert accumulated[name] == pytest.approx(plain[name], rel=1e-5), name
    assert json.loads((out / "checkpoint.json").read_text())["config"]["train"]["accumulate"] == 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_on_a_mesh_with_accumulation_gives_the_plain_runs_losses(trained, corpus, tmp_path):
    """`jaxgpt train --mesh 4x2 --fsdp --accumulate 2` in a new process, which splits the CPU into 8 simulated
    devices before JAX starts: each batch is split in 2 micro-batches and 4 ways, every weight 2 ways, the
    parameters and Adam's moments 4 ways more. The losses of its 10 steps and evaluations are those of the
    plain run (`trained`: one pass, one device) up to float32 roundoff (1e-5; see tests/test_training.py).
    (Slow: a new process imports JAX and compiles for 8 devices. The default run has the accumulation above,
    and tests/test_training.py's checks of the mesh's layouts.)"""
    import os
    import subprocess
    import sys

    from jaxgpt import settings

    out = tmp_path / "mesh"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # As the checks compile (jaxgpt/grader/pytest_plugin.py): few optimisation passes for a tiny program, and
    # the compiled programs kept between runs.
    env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    if settings.xla_cache_dir():
        env.update(JAX_COMPILATION_CACHE_DIR=settings.xla_cache_dir(), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    process = subprocess.run(
        [sys.executable, "-m", "jaxgpt.cli", "train", "--config", "micro", "--impl", "reference", "--data",
         str(corpus), "--out", str(out), "--max-iters", "10", "--eval-interval", "5", "--no-progress",
         "--mesh", "4x2", "--fsdp", "--accumulate", "2"],
        capture_output=True, text=True, env=env, timeout=540)
    output = process.stdout + process.stderr
    assert process.returncode == 0 and "Traceback" not in output, output
    assert ("Each step: 8 sequences of 16 tokens = 128 tokens, in 2 micro-batches of 4 (gradient accumulation); "
            "float32; a 4x2 mesh of 8 cpu devices, each micro-batch split 4 ways (weights split 2 ways; "
            "parameters and optimiser state split over the 4 data devices).") in output, output
    plain = json.loads((trained[2] / "history.json").read_text())
    meshed = json.loads((out / "history.json").read_text())
    assert meshed["steps"] == plain["steps"] == [0, 5, 10]
    for name in ("batch_losses", "train_losses", "eval_losses"):
        assert meshed[name] == pytest.approx(plain[name], rel=1e-5), name
    saved = json.loads((out / "checkpoint.json").read_text())["config"]["train"]
    assert {k: saved[k] for k in ("precision", "accumulate", "data_parallel", "model_parallel",
                                  "fully_sharded")} == {"precision": "float32", "accumulate": 2,
                                                        "data_parallel": 4, "model_parallel": 2,
                                                        "fully_sharded": True}
    assert cli._saved_mesh(out) == (4, 2)  # what --resume splits the CPU into before JAX starts


def test_byte_level_training_on_any_utf8_text_round_trips_and_samples(capsys, tmp_path):
    """--tokenizer byte: a text with accents, other scripts and emoji encodes and decodes exactly, trains, and
    the checkpoint carries the tokenizer, so sampling needs no text (and takes a prompt the text never had)."""
    from jaxgpt.tokenizer import ByteTokenizer
    from jaxgpt.training import checkpoint

    text = ("Déjà vu, naïve café: « ça va ? » — Ελληνικά, русский, 日本語, emoji 🎉🚀.\n" * 40)
    assert ByteTokenizer().decode(ByteTokenizer().encode(text)) == text
    corpus = tmp_path / "mine.txt"
    corpus.write_text(text, encoding="utf-8")
    out_dir = tmp_path / "bytes"
    code, out, err = run(capsys, "train", "--config", "micro", "--impl", "reference", "--data", str(corpus),
                         "--tokenizer", "byte", "--out", str(out_dir), "--max-iters", "4", "--eval-interval", "2",
                         "--no-progress")
    assert code == 0, out + err
    _, config, tokenizer, _ = checkpoint.load(out_dir)
    assert isinstance(tokenizer, ByteTokenizer) and config.model.vocab_size == 256 and config.train.tokenizer == "byte"
    code, out, err = run(capsys, "sample", "--checkpoint", str(out_dir), "--prompt", "Ωmega ✓", "--tokens", "20")
    assert code == 0 and out.startswith("Ωmega ✓"), out + err
    code, out, err = run(capsys, "train", "--resume", str(out_dir), "--data", str(corpus), "--tokenizer", "char")
    assert code == 2 and "--tokenizer char (it has byte)" in err, out + err


def test_train_model_lstm_writes_a_checkpoint_that_sample_reads(capsys, tmp_path, corpus):
    """--model lstm trains task 15's CharLSTM with the GPT's command; jaxgpt sample rebuilds it from the checkpoint"""
    out_dir = tmp_path / "lstm"
    code, out, err = run(capsys, "train", "--model", "lstm", "--config", "micro", "--impl", "reference", "--data",
                         str(corpus), "--out", str(out_dir), "--max-iters", "4", "--eval-interval", "2",
                         "--no-progress")
    assert code == 0 and "Done: eval loss" in out, out + err
    code, out, err = run(capsys, "sample", "--checkpoint", str(out_dir), "--prompt", "the ", "--tokens", "12")
    assert code == 0 and len(out.removesuffix("\n")) == len("the ") + 12, out + err
    code, _, err = run(capsys, "train", "--model", "lstm", "--precision", "bfloat16", "--data", str(corpus))
    assert code == 2 and "does not take --precision" in err


def test_train_resume_continues_an_lstm_run_and_refuses_another_model_or_tokenizer(capsys, tmp_path, corpus):
    """`jaxgpt train --resume DIR` continues a CharLSTM run (byte-level here) as an LSTM run, with its carried
    state, without being told --model lstm; a flag that would change its model, configuration or tokenizer is
    refused with a sentence, as for the GPT"""
    from jaxgpt.training import loop, recurrent

    config = recurrent.get_config("micro").with_overrides(4, 2, tokenizer="byte")
    run_ = recurrent.prepare(config, impl="reference", text=CORPUS, steps_per_call=2)
    run_.step = 2  # saved as a run stopped at step 2 of 4 (tests/test_recurrent_training.py trains one)
    out = tmp_path / "lstm"
    loop.save(run_, out)
    for argv, words in ((["--model", "gpt"], "which trained task 15's CharLSTM (--model lstm), with its own model"),
                        (["--tokenizer", "char"], "--tokenizer char (it has byte)"),
                        (["--config", "tiny"], "--config lstm-tiny (it has lstm-micro)")):
        code, out_, err = run(capsys, "train", "--resume", str(out), "--data", str(corpus), *argv)
        assert code == 2 and words in err, out_ + err
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "checkpoint.json").write_text(json.dumps({"source": {"impl": "reference", "task": 1}}))
    code, _, err = run(capsys, "train", "--model", "lstm", "--resume", str(gpt))
    assert code == 2 and "which trained a MiniGPT (--model gpt)" in err, err
    code, out_, err = run(capsys, "train", "--resume", str(out), "--data", str(corpus), "--no-progress")
    assert code == 0, out_ + err
    assert (f"Resuming `lstm-micro` from {out} at step 2 of 4: task 15's CharLSTM from reference, the same "
            f"optimiser state, LSTM state and chunks.") in out_ and "Done: eval loss" in out_, out_
    code, out_, err = run(capsys, "sample", "--checkpoint", str(out), "--prompt", "Ωmega ✓", "--tokens", "8")
    assert code == 0 and out_.startswith("Ωmega ✓"), out_ + err
