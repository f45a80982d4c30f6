"""Benchmark: the reference CharLSTM (task 15) against the reference GPT (task 1) at a similar parameter count,
each trained for the same wall-clock budget on tiny Shakespeare; a third run trains the LSTM with its state
reset at every chunk, the mistake task 15's lesson measures.

    .venv/bin/python bench/lstm_vs_gpt.py [--data PATH_TO_INPUT_TXT] [--seconds 150] [--eval-every 15]

The GPT is the `tiny` configuration (818,241 parameters); the LSTM is recurrent.CONFIGS['tiny'], one layer of
312 (820,625 parameters), with the same 64 x 64 tokens a step, the same AdamW, clipping and weight decay. Both
train at the configuration's peak learning rate held constant (a cosine schedule would tie each run's rate to a
step count that a time budget does not know). The budget counts training calls only; compiling and evaluating
pause the clock (their seconds are written down too). The runs are interleaved, one compiled call (10 steps) of
each in turn, so that whatever else the machine does meanwhile slows them alike; the last call of a run may end
a few seconds past the budget (each run's own seconds are written down).

Evaluation, every --eval-every seconds of training, on the eval split (the last 10% of the text):
    gpt              20 random windows of 64 x 64 tokens, each read from nothing (loop.make_evaluate)
    lstm (streamed)  the first 20 chunks of 64 streams, read in order from the zero state, every character
                     predicted from all of its stream before it (recurrent.make_evaluate)
    lstm (windowed)  the GPT's measure on the LSTM: the same kind of random windows, each from the zero state
Writes bench/results/lstm_vs_gpt.json (parameters, steps, seconds, eval losses, the curves, the machine, a
sample of each) and pictures/lstm_vs_gpt.png (every eval curve on one plot against training seconds, and beside it
against steps, where the machine's load does not enter).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
sys.path.insert(0, str(HERE))

import machine  # noqa: E402  (bench/machine.py)


def _constant(config, seconds_hint: str):
    """The configuration with its peak learning rate held constant (see the module docstring)."""
    train = dataclasses.replace(config.train, schedule="constant", warmup_iters=0, min_lr=config.train.learning_rate)
    return dataclasses.replace(config, train=train, description=config.description + seconds_hint)


class _Timed:
    """One run trained in slices: its training seconds, its curve, and what compiling and evaluating took."""

    def __init__(self, name, run, eval_every, extra_eval=None, say=print):
        self.name, self.run, self.eval_every, self.extra_eval, self.say = name, run, eval_every, extra_eval, say
        self.trained = self.compile_seconds = self.eval_seconds = 0.0
        self.next_eval = eval_every
        self.curve = {"seconds": [], "steps": [], "eval_loss": [], "train_loss": []}
        if extra_eval is not None:
            self.curve["eval_loss_windowed"] = []

    def compile(self):
        """The first call compiles (its k steps are thrown away: the run starts again from its first
        parameters, and the LSTM's carried state from zeros), then the evaluation at step 0."""
        import jax

        run = self.run
        started = time.perf_counter()
        jax.block_until_ready(run.train_steps(run.params, run.opt_state, run.train_data, run.train_key, 0))
        self.compile_seconds = time.perf_counter() - started
        if hasattr(run.train_steps, "lstm_state"):
            from jaxgpt.training import recurrent

            run.train_steps.lstm_state = recurrent.zero_state(run.config.model, run.config.train.batch_size)
        self.evaluate()

    def evaluate(self):
        import jax

        run = self.run
        started = time.perf_counter()
        key = jax.random.fold_in(run.eval_key, run.step)
        train_loss, eval_loss = (float(v) for v in run.evaluate(run.params, run.train_data, run.eval_data, key))
        self.curve["seconds"].append(round(self.trained, 2))
        self.curve["steps"].append(run.step)
        self.curve["eval_loss"].append(round(eval_loss, 4))
        self.curve["train_loss"].append(round(train_loss, 4))
        line = f"  {self.name:10s} {self.trained:6.1f} s, step {run.step:5d}: eval {eval_loss:.4f}"
        if self.extra_eval is not None:
            windowed = float(self.extra_eval(run.params, run.train_data, run.eval_data, key)[1])
            self.curve["eval_loss_windowed"].append(round(windowed, 4))
            line += f" (windowed {windowed:.4f})"
        self.eval_seconds += time.perf_counter() - started
        self.say(line)

    def call(self, budget):
        """One training call (steps_per_call steps); evaluates when its time comes or the budget is spent."""
        import numpy as np

        run = self.run
        started = time.perf_counter()
        run.params, run.opt_state, losses = run.train_steps(run.params, run.opt_state, run.train_data,
                                                            run.train_key, run.step)
        losses = np.asarray(losses)  # waits for the call
        self.trained += time.perf_counter() - started
        run.step += run.steps_per_call
        if not np.all(np.isfinite(losses)):
            raise RuntimeError(f"{self.name}: the loss became {losses} by step {run.step}")
        if self.trained >= self.next_eval or self.trained >= budget:
            self.evaluate()
            self.next_eval += self.eval_every

    def result(self):
        run = self.run
        tokens = run.config.train.batch_size * run.config.model.block_size
        curve = self.curve
        return {"n_params": run.history.n_params, "steps": run.step, "train_seconds": round(self.trained, 1),
                "compile_seconds": round(self.compile_seconds, 1), "eval_seconds": round(self.eval_seconds, 1),
                "tokens_per_second": round(run.step * tokens / self.trained),
                "final_eval_loss": curve["eval_loss"][-1],
                **({"final_eval_loss_windowed": curve["eval_loss_windowed"][-1]} if "eval_loss_windowed" in curve
                   else {}),
                "curve": curve}


def _train_interleaved(timed, seconds):
    """Trains every run for `seconds` of its own training calls, one call of each in turn, so that whatever
    else the machine does slows them alike."""
    for t in timed:
        t.compile()
    while any(t.trained < seconds for t in timed):
        for t in timed:
            if t.trained < seconds:
                t.call(seconds)


def _sample(model, params, tokenizer, block_size) -> str:
    import jax

    from jaxgpt import sampling

    ids = sampling.sample(model, params, tokenizer.encode("\n"), jax.random.PRNGKey(0), 200, block_size=block_size)
    return tokenizer.decode(ids[1:])


def _picture(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True, layout="constrained")
    styles = {"gpt": ("GPT, 64-token windows", "tab:blue"), "lstm": ("LSTM, state carried, read in order", "tab:orange"),
              "lstm_reset": ("LSTM, state reset every chunk, read in order", "tab:red")}
    for ax, x, label in ((axes[0], "seconds", "training seconds (compiling and evaluating not counted)"),
                         (axes[1], "steps", "step (64 x 64 tokens each)")):
        for name, (what, color) in styles.items():
            if name not in runs:
                continue
            curve = runs[name]["curve"]
            ax.plot(curve[x], curve["eval_loss"], "-", color=color, marker="o", markersize=3,
                    label=f"{what} ({runs[name]['n_params']:,} parameters)")
            if "eval_loss_windowed" in curve:
                ax.plot(curve[x], curve["eval_loss_windowed"], "--", color=color, linewidth=1,
                        label=f"{what.split(',')[0]}, {what.split(',')[1].strip()}, on 64-token windows from zeros")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("eval loss (nats per character)")
    axes[0].set_ylim(top=min(3.0, axes[0].get_ylim()[1]))  # the first evaluation (about 4.2-4.6) lies above
    axes[1].legend(fontsize=7.5)
    fig.suptitle(f"tiny Shakespeare: {result['budget_seconds']:g} s of training each, interleaved, on "
                 f"{result['machine']['cpus']} CPU cores shared with other work (load "
                 f"{result['machine']['load_average_at_start']:.1f})", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_CORPUS), help=f"tiny Shakespeare's input.txt ({DEFAULT_CORPUS})")
    parser.add_argument("--seconds", type=float, default=150.0, help="training seconds for each run (default 150)")
    parser.add_argument("--eval-every", type=float, default=15.0, help="seconds of training between evaluations")
    parser.add_argument("--no-reset", action="store_true", help="skip the run with the state reset every chunk")
    parser.add_argument("--out", default=str(HERE / "results" / "lstm_vs_gpt.json"))
    parser.add_argument("--picture", default=str(REPO / "pictures" / "lstm_vs_gpt.png"))
    parser.add_argument("--picture-only", action="store_true", help="draw the picture again from --out, no training")
    args = parser.parse_args(argv)
    if args.picture_only:
        _picture(json.loads(Path(args.out).read_text(encoding="utf-8")), Path(args.picture))
        print(f"drawn from {args.out} into {args.picture}")
        return 0

    import jax

    from jaxgpt.data import DataError, load_text
    from jaxgpt.training import configs, loop, recurrent

    try:
        text = load_text(args.data)
    except DataError as err:
        print(err, file=sys.stderr)
        return 1
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    hint = f" (constant learning rate, {args.seconds:g} s budget)"
    gpt_config = _constant(configs.get_config("tiny"), hint)
    lstm_config = _constant(recurrent.get_config("tiny"), hint)
    gpt = loop.prepare(gpt_config, impl="reference", text=text)
    timed = [_Timed("gpt", gpt, args.eval_every)]
    variants = [("lstm", True)] + ([] if args.no_reset else [("lstm_reset", False)])
    for name, carry in variants:
        run = recurrent.prepare(lstm_config, impl="reference", text=text)
        if not carry:
            tx = loop.make_optimizer(run.config.train)
            run.train_steps.train_steps = recurrent.make_train_steps(run.model, tx, run.config, run.steps_per_call,
                                                                     carry_state=False)
        timed.append(_Timed(name, run, args.eval_every, extra_eval=loop.make_evaluate(run.model, run.config)))
    print(f"{', '.join(t.name for t in timed)}: {args.seconds:g} s of training each, one call of each in turn")
    _train_interleaved(timed, args.seconds)
    runs = {}
    for t in timed:
        runs[t.name] = t.result()
        if t.name != "gpt":
            runs[t.name]["carry_state"] = t.name == "lstm"
        runs[t.name]["sample"] = _sample(t.run.model, t.run.params, t.run.tokenizer, t.run.config.model.block_size)

    result = {
        "budget_seconds": args.seconds,
        "eval_every_seconds": args.eval_every,
        "configs": {"gpt": gpt_config.to_dict(), "lstm": lstm_config.to_dict()},
        "runs": runs,
        "note": "training seconds only (compiling and evaluating pause the clock); the same machine ran other "
                "work meanwhile, so the seconds are noisy: compare the runs with each other, not with other days",
        "machine": {"cpu": machine.cpu_model(), "cpus": os.cpu_count(), "load_average_at_start": load_at_start,
                    "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                    "platform": platform.platform(), "jax": jax.__version__, "device": str(jax.devices()[0])},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    _picture(result, Path(args.picture))
    for name, r in runs.items():
        extra = f", windowed {r['final_eval_loss_windowed']}" if "final_eval_loss_windowed" in r else ""
        print(f"{name}: {r['n_params']:,} parameters, {r['steps']:,} steps in {r['train_seconds']} s "
              f"({r['tokens_per_second']:,} tokens/s), eval loss {r['final_eval_loss']}{extra}")
    print(f"written to {out} and {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
