"""The `jaxgpt` command: progress, check, hint, train, sample, play.

    jaxgpt progress                      one line per task: passed, N of M checks, not started, blocked
    jaxgpt check 3 [-v]                  grade task 3 (tasks/task03_head.py); exit 0 when every check passes
    jaxgpt watch [3]                     check a task again each time its file in tasks/ is saved
    jaxgpt hint 3                        the next hint for task 3
    jaxgpt train --config tiny           train your task 1 MiniGPT (--impl reference for the reference's)
    jaxgpt sample --checkpoint checkpoints/tiny --prompt "ROMEO:"
    jaxgpt play --checkpoint checkpoints/tiny          a page in your browser to play with it
    jaxgpt ladder --data input.txt       the video's loss ladder, bigram to GPT, from your own modules

Whatever goes wrong on the learner's side (an unfinished task, a bad path, a damaged checkpoint, a prompt
with unknown characters) is said in a sentence on stderr with a non-zero exit code, never a traceback.

`check`, `progress` and `watch` grade in a worker process (jaxgpt/grader/worker.py), so this process never imports
JAX for them; a check that runs past its time limit is stopped, and Ctrl-C gives "stopped" and exit code 130,
never a pass.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Sequence

from jaxgpt.grader import task_list

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """Something the person at the terminal can fix; printed as it is, with exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its own message (or --help)
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args)
    except UserError as err:
        print(str(err), file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgpt", description="The JAX GPT challenge: check your tasks, "
                                     "reveal hints, train and sample your model.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    impl_help = ("the code to use: `tasks` (your solutions, the default), `reference`, a directory laid out "
                 "like tasks/, or one .py file")

    limit_help = "stop a check that runs longer than this many seconds (default: %(default)g)"

    p = sub.add_parser("progress", help="show every task's status")
    p.add_argument("--impl", default="tasks", help=impl_help)
    p.add_argument("--time-limit", type=float, default=_default_limit(), metavar="SECONDS", help=limit_help)
    p.set_defaults(run=cmd_progress)

    p = sub.add_parser("check", help="run one task's checks")
    p.add_argument("task", help="the task number")
    p.add_argument("--impl", default="tasks", help=impl_help)
    p.add_argument("-v", "--verbose", action="store_true", help="list every check, also when not started")
    p.add_argument("--time-limit", type=float, default=_default_limit(), metavar="SECONDS", help=limit_help)
    p.add_argument("--in-process", action="store_true",
                   help="run the checks in this process, not in a worker (for debugging the checks themselves: "
                        "an endless loop then cannot be stopped)")
    p.add_argument("--no-background", action="store_true",
                   help="grade in a worker of this command's own, not in the background grader that the first "
                        "check starts and later checks share (it exits after 20 idle minutes)")
    p.add_argument("--stop-background", action="store_true",
                   help="end the background grader now (and check nothing when no task is given: `0`)")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("watch", help="check a task each time its file is saved (Ctrl-C to stop)")
    p.add_argument("task", nargs="?", default=None,
                   help="the task number (default: the task whose file was saved last)")
    p.add_argument("--impl", default="tasks", help="a directory laid out like tasks/ (the default) or one .py file")
    p.add_argument("-v", "--verbose", action="store_true", help="list every check, also when not started")
    p.add_argument("--time-limit", type=float, default=_default_limit(), metavar="SECONDS", help=limit_help)
    p.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                   help="how often to look for saved files (default: %(default)g)")
    p.set_defaults(run=cmd_watch)

    p = sub.add_parser("hint", help="reveal the next hint for a task")
    p.add_argument("task", help="the task number")
    p.add_argument("rung", nargs="?", type=int, default=None,
                   help="show this hint of the ladder (a failing check's verdict names the one that fits)")
    p.set_defaults(run=cmd_hint)

    p = sub.add_parser(
        "train", help="train a MiniGPT configuration with a progress bar and checkpoints",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a MiniGPT, saving a checkpoint at every evaluation and when it stops.\n\n"
                    "Ctrl-C is answered at once: the run stops when the compiled call in progress ends (a few\n"
                    "steps), evaluates and saves; a second Ctrl-C skips that evaluation. A save cut short\n"
                    "leaves the previous checkpoint whole. `--resume DIR` (with the same --data) continues the\n"
                    "run saved in DIR with its optimiser state, step and batches: the losses are those of a run\n"
                    "never interrupted.\n\n"
                    "A directory that holds the checkpoint of another run is never replaced unless you add\n"
                    "--overwrite. It is refused rather than renamed, so that checkpoints/tiny always names the\n"
                    "run you think it does when you sample from it; each kind of run has its own default.\n\n"
                    "At scale (Part 5): --precision bfloat16, --accumulate N, --mesh D or DxM and --fsdp change\n"
                    "how a step is computed, not which batches it sees: --batch-size is always the sequences of\n"
                    "one optimiser step, split into N micro-batches and over the mesh's D devices. They are\n"
                    "saved with the checkpoint and kept by --resume. The first lines of a run say how each\n"
                    "step is computed: its batch, tokens, micro-batches, precision and devices.")
    p.add_argument("--config", default=None, help="tiny (a laptop CPU, minutes; the default), speedrun (the same "
                   "model tuned to reach eval loss 1.89 soonest), challenge, video (a GPU), micro (seconds); with "
                   "--resume, the checkpoint's")
    p.add_argument("--impl", default=None, help=impl_help.replace("the default", "the default; with --resume, "
                                                                  "the code that trained the checkpoint"))
    p.add_argument("--task", type=int, default=None, choices=(1, 6),
                   help="whose MiniGPT: task 1's (Flax's layers, the default) or task 6's (your own parts)")
    p.add_argument("--data", default=None, help="a UTF-8 text file to train on (default: tiny Shakespeare)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="the checkpoint directory (default: checkpoints/<config>, with -task6 for --task 6 and "
                        "-reference for --impl reference; with --resume, the directory resumed)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run whose checkpoint is in DIR, where it stopped")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint of another run in the output directory (at this run's first "
                        "save, not before)")
    p.add_argument("--max-iters", type=int, default=None, help="override the configuration's step count")
    p.add_argument("--eval-interval", type=int, default=None, help="override how often to evaluate")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="override the sequences of one optimiser step: the whole batch of a step, which "
                        "--accumulate and --mesh split, never one micro-batch or one device's share")
    p.add_argument("--model", default=None, choices=("gpt", "lstm"),
                   help="gpt (the default): your MiniGPT; lstm: task 15's CharLSTM, trained with its state "
                        "carried from chunk to chunk (its configurations: tiny, micro); with --resume, the "
                        "checkpoint's")
    p.add_argument("--tokenizer", default=None, choices=("char", "byte"),
                   help="char (the default): one token per distinct character of the text; byte: one token per "
                        "UTF-8 byte, 256 in all, for any text of your own (accents, emoji, any script). The "
                        "checkpoint keeps the tokenizer, so sampling never needs the text again")
    p.add_argument("--precision", default=None, choices=("float32", "bfloat16"),
                   help="float32 (the default), or bfloat16: the forward and backward passes run on a bfloat16 "
                        "copy of the parameters, so the model's matmuls, activations and (in Flax's attention "
                        "layer) its attention softmax compute in bfloat16; the logits are cast to float32 for "
                        "the loss, and the parameters, gradients and optimiser moments stay float32. "
                        "Evaluation and sampling use float32. Faster on GPUs; on a CPU no faster")
    p.add_argument("--accumulate", type=int, default=None, metavar="N",
                   help="run each step's batch as N micro-batches of batch-size/N sequences, one after the "
                        "other, and average their gradients before the one optimiser step: the same step "
                        "(up to roundoff) with about 1/N of the activation memory (default 1)")
    p.add_argument("--mesh", default=None, metavar="D|DxM",
                   help="split each step over D devices (data parallelism: each micro-batch split D ways, the "
                        "parameters copied on each), or a DxM grid (also model parallelism: each weight split "
                        "M ways). On a CPU, jaxgpt train splits it into D*M simulated devices before JAX "
                        "starts: a way to try the mesh, not to go faster (they share the cores)")
    p.add_argument("--fsdp", action="store_true",
                   help="with --mesh: also split the parameters and optimiser state over the D data-parallel "
                        "devices (fully sharded data parallelism), gathered where needed by the compiler")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a directory written by `jaxgpt train`")
    p.add_argument("--prompt", default=None, help="the text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=500, help="how many new characters to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="below 1 safer, above 1 wilder, 0 greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest characters")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
    p.add_argument("--impl", default=None, help="the code whose MiniGPT to use (default: the one that trained "
                   "the checkpoint)")
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("ladder", help="climb the video's loss ladder (bigram to GPT) with your modules and "
                       "compare each rung's eval loss with the video's")
    from jaxgpt import ladder  # import-light: no JAX until it runs

    ladder.add_arguments(p)
    p.set_defaults(run=ladder.run_from_args)

    p = sub.add_parser("play", help="serve a page on this computer to play with a checkpoint (Ctrl-C stops it)")
    p.add_argument("--checkpoint", required=True, help="a directory written by `jaxgpt train`")
    p.add_argument("--port", type=int, default=8000,
                   help="the port on 127.0.0.1 (default: %(default)s; 0 takes any free port)")
    p.add_argument("--impl", default=None, help="the code whose MiniGPT to use (default: the one that "
                   "trained the checkpoint)")
    p.set_defaults(run=cmd_play)
    return parser


# ----------------------------------------------------------------------------------------------------
# progress, check, hint


def _task(number: str) -> task_list.Task:
    try:
        return task_list.get_task(number)
    except LookupError as err:
        raise UserError(str(err), EXIT_USAGE) from None


def _implementation(spec: str):
    from jaxgpt.grader import implementation

    try:
        return implementation.resolve(spec)
    except implementation.LoadError as err:
        raise UserError(str(err), EXIT_USAGE) from None


def _default_limit() -> float:
    from jaxgpt.grader.runner import DEFAULT_TIMEOUT_S

    return DEFAULT_TIMEOUT_S


def _time_limit(args) -> float:
    if not args.time_limit > 0:
        raise UserError(f"--time-limit must be more than 0 seconds, got {args.time_limit:g}.", EXIT_USAGE)
    return args.time_limit


def _require_checks(task: task_list.Task) -> None:
    if not task.test_file.exists():
        raise UserError(
            f"{task.test_file} is missing. The checks live in the repository's tests/ folder: install the "
            "challenge from a clone with `pip install -e .` so that they can be found.")


def status_line(verdict) -> str:
    """A task's status in a few words: passed, 3 of 7 checks pass, not started, blocked by task 3."""
    import re

    from jaxgpt.grader.outcomes import Status

    status = verdict.status
    if status in (Status.PASSED, Status.NOT_STARTED, Status.STOPPED):
        return str(status)
    if status == Status.BLOCKED:
        message = next(c.message for c in verdict.checks if c.status == Status.BLOCKED)
        found = re.search(r"builds on task (\d+)", message)
        return f"blocked by task {found.group(1)}" if found else "blocked by an earlier task"
    if getattr(verdict, "load_error", None) is not None and status == Status.FAILED:
        return "does not load (jaxgpt check says why)"
    counted = [c for c in verdict.checks if c.status != Status.SKIPPED]
    passed = sum(c.status == Status.PASSED for c in counted)
    return f"{passed} of {len(counted)} checks pass"


def cmd_progress(args) -> int:
    from jaxgpt.grader import worker

    limit = _time_limit(args)
    impl = _implementation(args.impl)
    width = max(len(t.title) for t in task_list.TASKS)
    print(f"Progress of {impl.label}:")
    done = 0
    with worker.Grader() as grader:
        grader.start()
        for task in task_list.TASKS:
            verdict = None
            if not task.test_file.exists():
                status = "no checks yet"
            else:
                verdict = grader.grade(task, impl, timeout_s=limit,
                                       progress=worker.Progress.terminal(prefix=f"  task {task.number}:"))
                status = status_line(verdict)
                done += verdict.passed
            print(f"  {task.number:>2}  {task.title:<{width}}  {task.minutes:>3} min  {task.stars}  {status}",
                  flush=True)
            if verdict is not None and verdict.stopped:
                print(f"Stopped at task {task.number}: the tasks from there on were not checked.")
                return EXIT_INTERRUPTED
    print(f"{done} of {len(task_list.TASKS)} tasks passed.")
    return EXIT_OK


def _grade_in_background(args, task, impl, limit: float):
    """The verdict from the background grader (jaxgpt/grader/server.py), or None where it cannot serve."""
    from jaxgpt.grader import server, worker

    if args.no_background or not server.usable():
        return None
    try:
        return server.BackgroundGrader().grade(task, impl, timeout_s=limit, progress=worker.Progress.terminal())
    except server.Unavailable:
        return None


def cmd_check(args) -> int:
    from jaxgpt.grader import worker

    if args.stop_background:
        from jaxgpt.grader import server

        stopped = server.stop_all()
        print(f"Ended {stopped} background grader{'s' if stopped != 1 else ''}.")
        if args.task == "0":
            return EXIT_OK
    task = _task(args.task)
    limit = _time_limit(args)
    _require_checks(task)
    impl = _implementation(args.impl)
    if args.in_process:
        from jaxgpt.grader.runner import run_suite

        verdict = run_suite(task, impl, timeout_s=limit)
    else:
        verdict = _grade_in_background(args, task, impl, limit)
        if verdict is None:
            with worker.Grader() as grader:
                verdict = grader.grade(task, impl, timeout_s=limit, progress=worker.Progress.terminal())
    print(verdict.text(verbose=args.verbose), flush=True)
    if verdict.stopped:
        return EXIT_INTERRUPTED
    return EXIT_OK if verdict.passed else EXIT_FAILED


def _watched_files(impl, task: task_list.Task | None) -> dict[int, list[Path]]:
    """For each task to watch, the files whose saving re-checks it: its own and those of the tasks it builds on."""
    from jaxgpt.grader import implementation

    if isinstance(impl, implementation.FileImplementation):
        return {t.number: [impl.path] for t in ([task] if task else task_list.TASKS)}
    if not isinstance(impl, implementation.PackageImplementation):
        raise UserError("jaxgpt watch watches files: give --impl a directory laid out like tasks/ or a .py file.",
                        EXIT_USAGE)
    tasks = [task] if task else list(task_list.TASKS)
    return {t.number: [impl.path_of(t)] + [impl.path_of(task_list.get_task(n)) for n in t.builds_on]
            for t in tasks}


def _stamp(path: Path) -> tuple | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def cmd_watch(args) -> int:
    import time

    from jaxgpt.grader import worker

    limit = _time_limit(args)
    if not args.interval > 0:
        raise UserError(f"--interval must be more than 0 seconds, got {args.interval:g}.", EXIT_USAGE)
    task = _task(args.task) if args.task is not None else None
    impl = _implementation(args.impl)
    watched = _watched_files(impl, task)
    own_file = {number: files[0] for number, files in watched.items()}
    stamps = {path: _stamp(path) for files in watched.values() for path in files}
    if task is None:  # start with the task whose file was saved last
        first = max(own_file, key=lambda n: ((stamps.get(own_file[n]) or (0, 0))[0], -n))
    else:
        first = task.number
    where = _display(own_file[first]) if task else _display(getattr(impl, "directory", own_file[first]))
    print(f"Watching {where}: each save checks the task again. Ctrl-C to stop.", flush=True)
    with worker.Grader(keep_warm=True) as grader:
        grader.start()
        try:
            pending = [first]
            while True:
                while pending:
                    number = pending.pop(0)
                    _require_checks(task_list.get_task(number))
                    print(f"\n── {time.strftime('%H:%M:%S')} · task {number} · {_display(own_file[number])} ──",
                          flush=True)
                    verdict = grader.grade(number, impl, timeout_s=limit, progress=worker.Progress.terminal())
                    print(verdict.text(verbose=args.verbose), flush=True)
                    if verdict.stopped:
                        raise KeyboardInterrupt
                time.sleep(args.interval)
                changed = [path for path in stamps if _stamp(path) != stamps[path]]
                if not changed:
                    continue
                time.sleep(min(0.2, args.interval))  # let an editor finish writing
                for path in changed:
                    stamps[path] = _stamp(path)
                for number, files in watched.items():
                    if any(path in files for path in changed) and number not in pending:
                        if own_file[number] in changed or task is not None:
                            pending.append(number)
        except KeyboardInterrupt:
            print("\nStopped watching.", flush=True)
            return EXIT_OK


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cmd_hint(args) -> int:
    from jaxgpt.grader import hints

    task = _task(args.task)
    print(hints.next_hint_cli(task.number, hints.STATE_FILE, rung=args.rung))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------
# train, sample


def cmd_train(args) -> int:
    from jaxgpt.training import configs  # plain values: JAX is not imported yet

    if _model_to_train(args) == "lstm":
        return _train_lstm(args)
    config = None
    try:
        if args.resume is None:
            config = configs.get_config(args.config or "tiny").with_overrides(
                args.max_iters, args.eval_interval, batch_size=args.batch_size, precision=args.precision,
                accumulate=args.accumulate, mesh=args.mesh, fully_sharded=True if args.fsdp else None,
                tokenizer=args.tokenizer)
        elif args.mesh is not None:
            configs.parse_mesh(args.mesh)
    except configs.ConfigError as err:
        raise UserError(str(err), EXIT_USAGE) from None
    _prepare_devices(config, args.resume)  # before JAX starts

    from jaxgpt.training import loop

    if args.resume is not None:
        impl, task = args.impl, args.task
        _check_resume_flags(args)
        out = Path(args.out) if args.out else Path(args.resume)
    else:
        impl, task = args.impl or "tasks", args.task or 1
        out = Path(args.out) if args.out else loop.default_out_dir(config.name, impl, task)
    if impl is not None:
        _implementation(impl)  # a bad --impl is a usage error, said before anything loads
    with _training_errors(impl):
        history = loop.train(config, impl=impl, task=task, data_path=args.data, out_dir=out,
                             progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite,
                             data_named_by="--data")
    if history.interrupted:
        if history.checkpoint is not None:
            import shlex

            again = f" --data {shlex.quote(args.data)}" if args.data else ""
            print(f"Continue this run with `jaxgpt train --resume {shlex.quote(str(out))}{again}`.", flush=True)
        return EXIT_INTERRUPTED
    return _done(history, out)


@contextlib.contextmanager
def _training_errors(impl):
    """What a training run can say went wrong on the learner's side, as a sentence and an exit code."""
    from jaxgpt import data
    from jaxgpt.training import configs, loop

    try:
        yield
    except loop.CheckpointExists as err:
        resume = f"continue that run with `jaxgpt train --resume {err.directory}`, " if err.resumable else ""
        raise UserError(f"{err.directory} already holds the checkpoint of another run ({err.description}). "
                        f"Training now would replace it, so nothing was started: {resume}save this one "
                        f"elsewhere with --out DIR, or replace it with --overwrite.", EXIT_USAGE) from None
    except loop.TrainingError as err:
        message = str(err)
        if impl == "tasks" and "NotImplementedError" in message:
            message += " To train the reference's model meanwhile, add --impl reference."
        raise UserError(message[0].upper() + message[1:]) from None
    except configs.ConfigError as err:  # a mesh larger than the devices
        raise UserError(str(err), EXIT_USAGE) from None
    except data.DataError as err:
        raise UserError(str(err)) from None


def _done(history, out) -> int:
    minutes, seconds = divmod(round(history.wall_seconds), 60)
    print(f"Done: eval loss {history.final_eval_loss:.4f} after {history.steps[-1]:,} steps in "
          f"{minutes}m{seconds:02d}s ({history.tokens_per_second:,.0f} tokens/s). Checkpoint in {out}; try "
          f"`jaxgpt sample --checkpoint {out}`.")
    return EXIT_OK


def _model_to_train(args) -> str:
    """"gpt" or "lstm": --model, or with --resume the checkpoint's model (a --model that differs is refused:
    a resumed run keeps its model)."""
    saved = _saved_model(Path(args.resume)) if args.resume is not None else None
    if args.model is not None and saved is not None and args.model != saved:
        kept = "task 15's CharLSTM (--model lstm)" if saved == "lstm" else "a MiniGPT (--model gpt)"
        raise UserError(f"--resume continues the run in {args.resume}, which trained {kept}, with its own model, "
                        f"so that it goes on as if never interrupted; --model {args.model} asks for another. Leave "
                        f"--model out, or start a new run without --resume.", EXIT_USAGE)
    return args.model or saved or "gpt"


def _saved_model(directory: Path) -> str | None:
    """The model of the run saved in `directory`, read without JAX: "lstm" for task 15's CharLSTM, "gpt" for
    a MiniGPT; None when it cannot be read (loading the checkpoint then says why)."""
    import json

    from jaxgpt.training import checkpoint

    try:
        meta = json.loads((directory / checkpoint.META_FILE).read_text(encoding="utf-8"))
        return "lstm" if int((meta.get("source") or {}).get("task", 1)) == 15 else "gpt"
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _train_lstm(args) -> int:
    """`jaxgpt train --model lstm`: task 15's CharLSTM with truncated backpropagation through time; with
    --resume, the CharLSTM run saved there continued with its carried LSTM state (recurrent.prepare)."""
    refused = [flag for flag, value in (("--precision", args.precision), ("--accumulate", args.accumulate),
                                        ("--mesh", args.mesh), ("--fsdp", args.fsdp or None), ("--task", args.task))
               if value is not None]
    if refused:
        raise UserError(f"--model lstm trains task 15's CharLSTM with its own loop, which does not take "
                        f"{', '.join(refused)}; leave {'it' if len(refused) == 1 else 'them'} out.", EXIT_USAGE)
    from jaxgpt.training import configs, recurrent

    config = None
    try:
        if args.resume is None:
            config = recurrent.get_config(args.config or "tiny").with_overrides(
                args.max_iters, args.eval_interval, batch_size=args.batch_size, tokenizer=args.tokenizer)
        elif args.config is not None:
            args.config = recurrent.get_config(args.config).name  # micro: lstm-micro, as the checkpoint says
    except (configs.ConfigError, KeyError) as err:
        raise UserError(str(err).strip("'\""), EXIT_USAGE) from None
    if args.resume is not None:
        impl = args.impl
        _check_resume_flags(args)
        out = Path(args.out) if args.out else Path(args.resume)
    else:
        impl = args.impl or "tasks"
        out = Path(args.out) if args.out else recurrent.default_out_dir(config, impl)
    if impl is not None:
        _implementation(impl)
    with _training_errors(impl):
        history = recurrent.train(config, impl=impl, data_path=args.data, out_dir=out,
                                  progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite,
                                  data_named_by="--data")
    if history.interrupted:
        if history.checkpoint is not None:
            import shlex

            again = f" --data {shlex.quote(args.data)}" if args.data else ""
            print(f"Continue this run with `jaxgpt train --model lstm --resume {shlex.quote(str(out))}{again}`.",
                  flush=True)
        return EXIT_INTERRUPTED
    return _done(history, out)


def _prepare_devices(config, resume: str | None) -> None:
    """A mesh of more than one device (the configuration's, or that of the run --resume continues, which
    keeps its mesh): on a CPU, JAX must split it into that many simulated devices before it starts, so this
    runs before JAX does. Where JAX has started already (a notebook, a test), the mesh check says what to do.
    Where there is a GPU, its devices make the mesh and the CPU's count does not matter."""
    if config is not None:
        data_parallel, model_parallel = config.train.data_parallel, config.train.model_parallel
    else:
        data_parallel, model_parallel = _saved_mesh(Path(resume))
    if data_parallel * model_parallel > 1:
        from jaxgpt.training import scaling

        scaling.simulate_cpu_devices(data_parallel * model_parallel)


def _saved_mesh(directory: Path) -> tuple[int, int]:
    """The mesh of the run saved in `directory`, read without JAX; (1, 1) when it cannot be read (loading the
    checkpoint then says why)."""
    import json

    from jaxgpt.training import checkpoint

    try:
        train = json.loads((directory / checkpoint.META_FILE).read_text(encoding="utf-8"))["config"]["train"]
        return int(train.get("data_parallel", 1)), int(train.get("model_parallel", 1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 1, 1


def _check_resume_flags(args) -> None:
    """With --resume the run keeps its own settings: a flag that asks for others is a usage error, said
    before anything loads."""
    from jaxgpt.training import checkpoint, configs

    try:
        _, saved, _, meta = checkpoint.load(args.resume)
    except checkpoint.CheckpointError as err:
        raise UserError(f"--resume {args.resume}: {err}") from None
    saved_task = int((meta.get("source") or {}).get("task", 1))
    mesh = None
    if args.mesh is not None:
        data_parallel, model_parallel = configs.parse_mesh(args.mesh)
        mesh = f"{data_parallel}x{model_parallel}" if model_parallel > 1 else str(data_parallel)
    clashes = [f"{flag} {given} (it has {kept})" for flag, given, kept in (
        ("--config", args.config, saved.name), ("--max-iters", args.max_iters, saved.train.max_iters),
        ("--eval-interval", args.eval_interval, saved.train.eval_interval), ("--task", args.task, saved_task),
        ("--batch-size", args.batch_size, saved.train.batch_size),
        ("--precision", args.precision, saved.train.precision), ("--tokenizer", args.tokenizer, saved.train.tokenizer),
        ("--accumulate", args.accumulate, saved.train.accumulate), ("--mesh", mesh, saved.train.mesh))
        if given is not None and given != kept]
    if args.fsdp and not saved.train.fully_sharded:
        clashes.append("--fsdp (it trained without)")
    if clashes:
        raise UserError(f"--resume continues the run in {args.resume} with its own settings, so that it goes on "
                        f"as if never interrupted; these flags ask for others: {'; '.join(clashes)}. Leave them "
                        f"out, or start a new run without --resume.", EXIT_USAGE)


def cmd_sample(args) -> int:
    import jax

    from jaxgpt.training import checkpoint, loop
    from jaxgpt import sampling

    if args.tokens < 0:
        raise UserError(f"--tokens must be 0 or more, got {args.tokens}.", EXIT_USAGE)
    if not args.temperature >= 0:
        raise UserError(f"--temperature must be 0 or more, got {args.temperature}.", EXIT_USAGE)
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}.", EXIT_USAGE)
    try:
        params, config, tokenizer, meta = checkpoint.load(args.checkpoint)
    except checkpoint.CheckpointError as err:
        raise UserError(str(err)) from None
    if args.prompt is None:  # a newline, as in the video; a text without any starts from its first character
        args.prompt = "\n" if "\n" in getattr(tokenizer, "stoi", {"\n": 0}) else tokenizer.decode([0])
    if not args.prompt:
        raise UserError("The prompt is empty; give at least one character (the default is a newline).",
                        EXIT_USAGE)
    try:
        prompt_ids = tokenizer.encode(args.prompt)
    except ValueError:
        unknown = sorted({ch for ch in args.prompt if ch not in getattr(tokenizer, "stoi", {})})
        shown = ", ".join(repr(ch) for ch in unknown[:10])
        raise UserError(f"The prompt has characters that the model never saw in training: {shown}. Its "
                        f"vocabulary is the {tokenizer.vocab_size} characters of its training text.") from None

    source = meta.get("source") or {}
    impl = args.impl or source.get("impl") or "reference"
    task = int(source.get("task", 1))
    try:
        if task == 15:  # task 15's CharLSTM (jaxgpt train --model lstm)
            from jaxgpt.training import recurrent

            model = recurrent.build_model(recurrent.model_class(impl), config)
        else:
            model = loop.build_model(loop.model_class(impl, task), config)
    except loop.TrainingError as err:
        hint = "" if args.impl else " Choose the code with --impl (for example --impl reference)."
        raise UserError(f"The checkpoint's model cannot be rebuilt: {err}{hint}") from None
    try:
        ids = sampling.sample(model, params, prompt_ids, jax.random.PRNGKey(args.seed), args.tokens,
                              temperature=args.temperature, top_k=args.top_k,
                              block_size=config.model.block_size)
    except Exception as err:  # the learner's model
        raise UserError("Sampling failed: " + loop.explain_model_error(err, task)) from None
    print(tokenizer.decode(ids))
    return EXIT_OK


def cmd_play(args) -> int:
    from jaxgpt import play

    return play.run(args)


if __name__ == "__main__":
    sys.exit(main())
