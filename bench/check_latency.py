"""Benchmark: how long a learner waits for a verdict, task by task, with the reference solutions.

    .venv/bin/python bench/check_latency.py [--tasks 1-15] [--repeats 3] [--skip notebook,watch] [--out PATH]

For each task it measures, in wall-clock seconds as the learner waits:
  cold      `jaxgpt check N --impl reference` with no background grader running and an empty compilation
            cache (JAXGPT_XLA_CACHE points at a fresh temporary directory): the first check on a new machine;
  cold_filled  the same command in a new process, with no background grader running, on the compilation
            cache that the cold check left (the persistent cache the checks keep by default): a learner's
            first check in a later terminal session, or after the background grader went idle;
  warm      the same command again: the background grader that the previous check started answers it (every
            later check from the terminal);
  notebook  `check(N)` in a real Jupyter kernel that has run the notebook's set-up cell and its stub cells
            filled in with the reference solutions: the first call in a kernel whose cache is empty, the
            first call in a kernel whose cache was filled by an earlier kernel, and a call again in the
            same kernel after re-running the stub cell (a learner's edit-and-check loop); the tasks are
            taken in order, each stub cell run right before its check, then again, and the first
            check comes --think-s seconds after the set-up cell (a learner reads before checking); a task
            whose stub cell the notebook does not have yet is left out, with a note;
  watch     from saving the task's file to its verdict appearing under `jaxgpt watch`, once it has started:
            the first save of each task in the session, and later saves (--repeats - 1 of them); measured
            only where `jaxgpt watch --help` exists, in a temporary copy of the repository whose tasks/ holds
            the reference solutions (neither the checkout nor a learner's work is touched).
Each figure is the median of --repeats runs. The figures leave out `uv run`'s own start (run this with the
environment's Python). It prints a table and writes bench/results/check_latency.json with every run and the
machine (bench/machine.py's `describe()`, with pytest's and cloudpickle's versions and the number of
uncommitted files).

The targets are issue 5's: cold <= 5 s (the first check of a session: cold_filled; cold, with an empty cache,
is the first check on a new machine and is reported beside it), warm <= 3 s, notebook <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import describe, load_average, versions  # bench/machine.py, beside this script

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
TARGETS_S = {"cold": 5.0, "warm": 3.0, "notebook": 2.0}
FIGURES = ("cold", "cold_filled", "warm", "notebook", "watch")  # what --skip names; a result key's figure is
# the longest of these its name starts with (cold_filled_cache_s is cold_filled's, not cold's)
DEFAULT_TASKS = "1-15"
CHECK_TIMEOUT_S = 900
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=DEFAULT_TASKS,
                        help=f"the tasks to measure: 1-15, 3, or 1,3,5 (default {DEFAULT_TASKS})")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported (3)")
    parser.add_argument("--skip", default="", help="comma-separated figures to leave out: cold, cold_filled, "
                        "warm, notebook, watch (cold_filled and warm need cold's caches: skipping cold fills "
                        "them first, unmeasured)")
    parser.add_argument("--think-s", type=float, default=30.0,
                        help="seconds a kernel sits idle after its set-up cell before the first check, "
                        "as a learner reads and writes (a grader may warm up meanwhile; default 30)")
    parser.add_argument("--out", default=str(HERE / "results" / "check_latency.json"), help="the result file")
    parser.add_argument("--update", action="store_true", help="keep the figures of the existing result file "
                        "that this run does not measure (with the machine they were measured on)")
    args = parser.parse_args(argv)
    tasks = _parse_tasks(args.tasks)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures in --skip: {', '.join(sorted(unknown))}")
    repeats = max(1, args.repeats)

    started = time.time()
    result = {"what": "seconds a learner waits for a verdict with the reference solutions (median of "
                      f"{repeats} runs)", "tasks": {str(n): {} for n in tasks}, "targets_s": TARGETS_S,
              "repeats": repeats, "machine": machine(), "notes": []}
    with tempfile.TemporaryDirectory(prefix="jaxgpt-latency-") as tmp:
        tmp = Path(tmp)
        result["import_jax_flax_optax_s"] = _median([_timed([sys.executable, "-c", "import jax, flax, optax"],
                                                            os.environ.copy())[0] for _ in range(repeats)])
        print(f"importing jax, flax and optax in a fresh process: {result['import_jax_flax_optax_s']:.1f} s",
              flush=True)
        terminal(tasks, repeats, skip, tmp, result)
        if "notebook" not in skip:
            result["notebook_think_s"] = args.think_s
            notebook(tasks, repeats, tmp, result, args.think_s)
        if "watch" not in skip:
            watch(tasks, repeats, tmp, result)
    result["machine"]["load_average_at_end"] = _load()
    result["bench_wall_s"] = round(time.time() - started, 1)

    out = Path(args.out)
    if args.update and out.is_file():
        result = _merged(json.loads(out.read_text(encoding="utf-8")), result, set(FIGURES) - skip)
    print()
    print(table(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwritten to {out}")
    return 0


def _merged(old: dict, new: dict, measured: set) -> dict:
    """`new`, with the figures of `old` that `new` did not measure (per task, and the runs behind them)."""
    def ours(key: str) -> bool:
        return _figure_of(key) in measured

    for n, row in old.get("tasks", {}).items():
        kept = {k: v for k, v in row.items() if k != "not_passed" and not ours(k)}
        problems = [p for p in row.get("not_passed", []) if not ours(p)]
        fresh = new["tasks"].setdefault(n, {})
        new["tasks"][n] = {**kept, **fresh}
        if problems or fresh.get("not_passed"):
            new["tasks"][n]["not_passed"] = problems + fresh.get("not_passed", [])
    kept_figures = sorted(set(FIGURES) - measured)
    earlier = {k: v for k, v in old.items() if k not in ("tasks", "what", "targets_s", "earlier_runs")}
    earlier["figures_kept_from_it"] = kept_figures
    new["earlier_runs"] = old.get("earlier_runs", []) + [earlier]
    new["notes"].append(f"{', '.join(kept_figures)} figures come from an earlier run (see earlier_runs); "
                        f"{', '.join(sorted(measured))} from this one")
    return new


def _figure_of(key: str) -> str | None:
    """The figure a result key (cold_filled_cache_runs_s) or a not_passed entry ("cold_filled: exit 1: ...")
    belongs to: the longest figure name it starts with."""
    found = [f for f in FIGURES if key == f or key.startswith((f + "_", f + ":", f + " "))]
    return max(found, key=len) if found else None


# ----------------------------------------------------------------------------------------------------------
# The terminal: `jaxgpt check N --impl reference` in fresh processes


def terminal(tasks, repeats, skip, tmp: Path, result) -> None:
    """For each task and repeat: a check on an empty cache (cold), then, with the background grader it started
    stopped, a check in a new process on the cache it filled (cold_filled); after the last repeat, the checks
    that the background grader started by the one before answers (warm)."""
    if {"cold", "cold_filled", "warm"} <= skip:
        return
    command = _jaxgpt()
    for n in tasks:
        row = result["tasks"][str(n)]
        runs: dict[str, list[float]] = {"cold": [], "cold_filled": [], "warm": []}
        cache = None
        # A figure skipped still has its checks run once where a later figure needs them (the cache they fill,
        # the background grader they start), unmeasured.
        cold_repeats = repeats if not {"cold", "cold_filled"} <= skip else 1
        for r in range(cold_repeats):
            cache = tmp / f"cold-{n}-{r}"
            last = r == cold_repeats - 1
            seconds, rc, said = _timed(command + ["check", str(n), "--impl", "reference"], _env(cache, tmp))
            runs["cold"].append(seconds)
            _verdict(row, "cold", rc, said)
            _stop_background(command, tmp)
            if "cold_filled" in skip and not (last and "warm" not in skip):
                continue
            if "cold_filled" in skip:  # warm's background grader, started as cold_filled would start it
                _timed(command + ["check", str(n), "--impl", "reference"], _env(cache, tmp))
                continue
            seconds, rc, said = _timed(command + ["check", str(n), "--impl", "reference"], _env(cache, tmp))
            runs["cold_filled"].append(seconds)
            _verdict(row, "cold_filled", rc, said)
            if not (last and "warm" not in skip):
                _stop_background(command, tmp)
        if "warm" not in skip:
            for r in range(repeats):
                seconds, rc, said = _timed(command + ["check", str(n), "--impl", "reference"], _env(cache, tmp))
                runs["warm"].append(seconds)
                _verdict(row, "warm", rc, said)
            _stop_background(command, tmp)
        for figure, key in (("cold", "cold"), ("cold_filled", "cold_filled_cache"), ("warm", "warm")):
            if figure in skip or not runs[figure]:
                continue
            row[f"{key}_runs_s"] = [round(s, 2) for s in runs[figure]]
            row[f"{key}_s"] = _median(runs[figure])
            print(f"task {n} {figure.replace('_', ' ')}: {row[f'{key}_s']:.1f} s {row[f'{key}_runs_s']}", flush=True)


def _jaxgpt() -> list[str]:
    script = Path(sys.executable).with_name("jaxgpt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "jaxgpt.cli"]


def _stop_background(command, tmp: Path) -> None:
    """Ends the background graders this benchmark started, so that none of them warms a task meanwhile."""
    subprocess.run(command + ["check", "0", "--stop-background"], env=_env(None, tmp), cwd=REPO_ROOT,
                   capture_output=True, timeout=60)


def _env(cache: Path | None, tmp: Path | None = None, **extra) -> dict:
    env = os.environ.copy()
    if tmp is not None:  # the background graders of this benchmark, apart from the learner's own
        env["JAXGPT_BACKGROUND_DIR"] = str(tmp / "background")
        env["JAXGPT_BACKGROUND"] = "on"
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        env["JAXGPT_XLA_CACHE"] = str(cache)
    env.update(extra)
    return env


def _timed(command, env, cwd=REPO_ROOT) -> tuple[float, int, str]:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    return time.perf_counter() - began, done.returncode, done.stdout + done.stderr


def _verdict(row: dict, figure: str, rc: int, said: str) -> None:
    """Keeps the words of any verdict that is not a pass, so that a figure never hides a failure."""
    if rc != 0 or "checks pass. Well done" not in said:
        row.setdefault("not_passed", []).append(f"{figure}: exit {rc}: {_words(said)}")


def _words(said: str) -> str:
    """A verdict's heading and its failing checks (or the end of what was said, when there is no verdict)."""
    lines = [line for line in _ANSI.sub("\n", said).splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if re.match(r"\s*Task \d+ · ", line)), None)
    if start is None:
        return " | ".join(lines)[-600:]
    kept = [lines[start]] + [line.strip() for line in lines[start + 1:] if not line.lstrip().startswith("✓")]
    return " | ".join(kept)[:1200]


# ----------------------------------------------------------------------------------------------------------
# The notebook: check(N) in a real kernel


def notebook(tasks, repeats, tmp: Path, result, think_s: float) -> None:
    try:
        from jupyter_client import KernelManager  # noqa: F401
        from jaxgpt.notebook import build as nb_builder
    except ImportError as err:
        result["notes"].append(f"notebook figures skipped: {err}")
        print(result["notes"][-1], flush=True)
        return
    built = nb_builder.build(solutions=True)
    cells = {int(c.id[4:6]): c.source for c in built.cells if re.fullmatch(r"task\d\d-code", c.id or "")}
    missing = [n for n in tasks if n not in cells]
    if missing:
        result["notes"].append(f"notebook figures skipped for task{'s' if len(missing) > 1 else ''} "
                               f"{', '.join(map(str, missing))}: the notebook has no stub cell for "
                               f"{'them' if len(missing) > 1 else 'it'} yet")
        print(result["notes"][-1], flush=True)
        tasks = [n for n in tasks if n in cells]
        if not tasks:
            return
    # The notebook's own set-up cell (it imports check and may start the grader), as a learner runs it.
    setup = next((c.source for c in built.cells if c.id == "setup"), "from jaxgpt import check, hint\n")
    runs = {"notebook_first_empty_cache": [], "notebook_first_filled_cache": [], "notebook_again": []}
    for r in range(repeats):
        cache = tmp / f"kernel-{r}"
        for kind in ("empty", "filled"):
            # An empty cache for the first kernel of a pair; the second kernel reuses what the first one wrote.
            times, extra = _kernel_session(tasks, setup, cells, cache, result, think_s)
            for n in tasks:
                first, again, said = times.get(n, (None, None, "the kernel did not answer"))
                if first is not None:
                    runs[f"notebook_first_{kind}_cache"].append((n, first))
                if kind == "empty" and again is not None:
                    runs["notebook_again"].append((n, again))
                if "Well done" not in said:
                    result["tasks"][str(n)].setdefault("not_passed", []).append(
                        f"notebook ({kind} cache): {_words(said)}")
            result.setdefault("kernel_start_s", []).append(extra["start"])
            result.setdefault("kernel_setup_cell_s", []).append(extra["setup"])
            print(f"kernel {r + 1}/{repeats} ({kind} cache): start {extra['start']:.1f} s, set-up cell "
                  f"{extra['setup']:.1f} s; check(N) first/again: "
                  + ", ".join(f"{n}: {t[0]:.1f}/{t[1]:.1f}" for n, t in times.items()
                              if t[0] is not None and t[1] is not None), flush=True)
    for figure, pairs in runs.items():
        for n in tasks:
            values = [s for m, s in pairs if m == n]
            if values:
                result["tasks"][str(n)][figure + "_runs_s"] = [round(v, 2) for v in values]
                result["tasks"][str(n)][figure + "_s"] = _median(values)


def _kernel_session(tasks, setup, cells: dict, cache: Path, result, think_s: float):
    """One kernel, as a learner goes through the notebook: the set-up cell, a pause, then for each task its
    stub cell and `check(N)` (timed); then for each task again its stub cell re-run and `check(N)` (timed).
    The stub cell runs right before each check because later tasks redefine names (task 6's Block and
    MiniGPT replace task 1's), as in the notebook."""
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    began = time.perf_counter()
    km.start_kernel(cwd=str(REPO_ROOT), env=_env(cache))
    kc = km.client()
    kc.start_channels()
    times: dict[int, tuple] = {}
    extra = {"start": 0.0, "setup": 0.0}

    def run_cell(number: int) -> bool:
        _, status, said = _execute(kc, cells[number])
        if status != "ok":
            result["notes"].append(f"task {number}'s stub cell raised in the kernel: {said[-500:]}")
        return status == "ok"

    try:
        kc.wait_for_ready(timeout=300)
        extra["start"] = round(time.perf_counter() - began, 2)
        seconds, status, said = _execute(kc, setup)
        extra["setup"] = round(seconds, 2)
        if status != "ok":
            result["notes"].append(f"the set-up cell raised in the kernel: {said[-500:]}")
            return times, extra
        time.sleep(think_s)
        defined = set()
        for n in tasks:
            for m in sorted(cells):  # the earlier tasks' cells too, as a learner going top to bottom has run them
                if m < n and m not in defined and run_cell(m):
                    defined.add(m)
            if not run_cell(n):
                continue
            defined.add(n)
            first, status, said = _execute(kc, f"check({n})")
            times[n] = (first, None, said if status == "ok" else f"check({n}) raised: {said[-500:]}")
        for n in tasks:
            if n not in times or not run_cell(n):
                continue
            again, status, said = _execute(kc, f"check({n})")
            if status != "ok" or "Well done" not in said:  # keep the words of any call that did not pass
                said = f"again: {said if status == 'ok' else 'raised: ' + said[-500:]}"
            times[n] = (times[n][0], again, times[n][2] if "Well done" not in times[n][2] else said)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return times, extra


def _execute(kc, code: str) -> tuple[float, str, str]:
    said = []

    def hook(msg):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            said.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            said.append(content.get("data", {}).get("text/plain", ""))
        elif kind == "error":
            said.append(_ANSI.sub("", "\n".join(content.get("traceback", []))))

    began = time.perf_counter()
    reply = kc.execute_interactive(code, timeout=CHECK_TIMEOUT_S, output_hook=hook, store_history=False)
    return time.perf_counter() - began, reply["content"]["status"], "".join(said)


# ----------------------------------------------------------------------------------------------------------
# jaxgpt watch: from saving a task's file to its verdict


def watch(tasks, repeats, tmp: Path, result) -> None:
    probe = subprocess.run(_jaxgpt() + ["watch", "--help"], capture_output=True, text=True, cwd=REPO_ROOT,
                           timeout=120)
    if probe.returncode != 0:
        result["notes"].append("watch figures skipped: `jaxgpt watch --help` exited "
                               f"{probe.returncode} (the command does not exist yet)")
        print(result["notes"][-1], flush=True)
        return
    repo = tmp / "repo"
    for name in ("jaxgpt", "tests", "reference", "tasks", "hints", "lessons", "pictures"):
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, repo / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    shutil.copy(REPO_ROOT / "pyproject.toml", repo / "pyproject.toml")
    for source in (REPO_ROOT / "reference").glob("task*.py"):
        shutil.copy(source, repo / "tasks" / source.name)
    # The copy's jaxgpt comes first on the path (the editable install's finder comes after it), so its
    # tasks/ is the one watched.
    env = _env(tmp / "watch-cache", PYTHONPATH=str(repo), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "jaxgpt.cli", "watch"]
    proc = subprocess.Popen(command, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    output = _Output(proc)
    verdict_line = r"Task {} · [^\n]*(checks pass|not started|stopped|builds on|\d+ of \d+)"
    try:
        # It may check a task as soon as it starts (jaxgpt watch checks the task saved last): wait for that
        # verdict, or for 90 quiet seconds, so that the figures below are a learner's saves in a warm watch.
        began = time.perf_counter()
        output.wait_for(re.compile(verdict_line.format(r"\d+")), 0, limit_s=600, quiet_s=90.0)
        result["watch_start_s"] = round(time.perf_counter() - began, 2)
        output.quiet_for(2.0, limit_s=120)
        if proc.poll() is not None:
            result["notes"].append(f"watch figures skipped: `jaxgpt watch` exited {proc.returncode} at once: "
                                   f"{output.text()[-500:]}")
            return
        for r in range(repeats):
            for n in tasks:
                path = next((repo / "tasks").glob(f"task{n:02d}_*.py"))
                mark = output.length()
                saved = time.perf_counter()
                with path.open("a", encoding="utf-8") as f:  # a real change, as an editor's save makes
                    f.write(f"\n# saved by bench/check_latency.py ({r})\n")
                found = output.wait_for(re.compile(verdict_line.format(n)), mark, limit_s=CHECK_TIMEOUT_S)
                row = result["tasks"][str(n)]
                if found is None:
                    row.setdefault("not_passed", []).append(f"watch: no verdict after saving: "
                                                            f"{output.text()[mark:][-300:]}")
                    continue
                arrived, line = found
                row.setdefault("watch_first_runs_s" if r == 0 else "watch_again_runs_s", []).append(
                    round(arrived - saved, 2))
                if "Well done" not in line:
                    row.setdefault("not_passed", []).append(f"watch: {line.strip()}")
                output.quiet_for(1.0, limit_s=120)
        for n in tasks:
            row = result["tasks"][str(n)]
            for figure in ("watch_first", "watch_again"):
                if row.get(figure + "_runs_s"):
                    row[figure + "_s"] = _median(row[figure + "_runs_s"])
                    print(f"task {n} {figure.replace('_', ' ')}: {row[figure + '_s']:.1f} s "
                          f"{row[figure + '_runs_s']}", flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class _Output:
    """Everything a child process writes, with the time each piece arrived."""

    def __init__(self, proc):
        self._chunks: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        fd = stream.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                return
            with self._lock:
                self._chunks.append((time.perf_counter(), _ANSI.sub("", data.decode("utf-8", "replace"))))

    def text(self) -> str:
        with self._lock:
            return "".join(c for _, c in self._chunks)

    def length(self) -> int:
        return len(self.text())

    def quiet_for(self, seconds: float, limit_s: float) -> bool:
        began = time.perf_counter()
        while time.perf_counter() - began < limit_s:
            with self._lock:
                last = self._chunks[-1][0] if self._chunks else began
            if time.perf_counter() - max(last, began) >= seconds:
                return True
            time.sleep(0.05)
        return False

    def wait_for(self, pattern, offset: int, limit_s: float, quiet_s: float | None = None):
        """The time the first match of `pattern` after `offset` arrived, and its line; None when the process
        ended, `limit_s` passed, or (with `quiet_s`) it wrote nothing for `quiet_s` seconds."""
        began = time.perf_counter()
        while time.perf_counter() - began < limit_s:
            with self._lock:
                chunks = list(self._chunks)
            last = chunks[-1][0] if chunks else began
            if quiet_s is not None and time.perf_counter() - max(last, began) >= quiet_s:
                return None
            seen, position = "", 0
            for arrived, chunk in chunks:
                position += len(chunk)
                seen += chunk
                if position > offset:
                    match = pattern.search(seen, offset)
                    if match:
                        line = seen[match.start():].split("\n", 1)[0]
                        return arrived, line
            if not self._thread.is_alive():
                return None
            time.sleep(0.02)
        return None


# ----------------------------------------------------------------------------------------------------------
# The machine and the table


def machine() -> dict:
    """bench/machine.py's record of the machine, with the grader's own packages and the state of the checkout
    (`git` keeps the keys of earlier result files: the commit and the number of uncommitted files)."""
    record = describe()
    record.update(versions("pytest", "cloudpickle"))
    git = {"commit": record.get("commit")}
    try:
        changed = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO_ROOT,
                                 timeout=30).stdout.splitlines()
        git["uncommitted_files"] = len(changed)
    except (OSError, subprocess.SubprocessError):
        pass
    record["git"] = git
    return record


def _load():
    return load_average()


def table(result) -> str:
    columns = [("cold_s", "cold"), ("cold_filled_cache_s", "cold (filled)"), ("warm_s", "warm"), ("notebook_first_empty_cache_s", "nb 1st (empty)"),
               ("notebook_first_filled_cache_s", "nb 1st (filled)"), ("notebook_again_s", "nb again"),
               ("watch_first_s", "watch 1st"), ("watch_again_s", "watch again")]
    columns = [(key, title) for key, title in columns if any(key in row for row in result["tasks"].values())]
    lines = ["task  " + "  ".join(f"{title:>15}" for _, title in columns)]
    for n, row in result["tasks"].items():
        lines.append(f"{n:>4}  " + "  ".join(f"{row[key]:>14.1f}s" if key in row else f"{'-':>15}"
                                             for key, _ in columns))
    targets = result["targets_s"]
    lines.append(f"targets: cold <= {targets['cold']:g} s (cold (filled): a session's first check; cold: on an "
                 f"empty cache), warm <= {targets['warm']:g} s, notebook <= "
                 f"{targets['notebook']:g} s; seconds, median of {result['repeats']}; import jax+flax+optax "
                 f"{result['import_jax_flax_optax_s']:.1f} s; load average {result['machine']['load_average_at_start']}"
                 f" at the start, {result['machine'].get('load_average_at_end')} at the end")
    for n, row in result["tasks"].items():
        for problem in row.get("not_passed", []):
            lines.append(f"NOT PASSED, task {n}: {problem}")
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


def _median(values):
    return round(statistics.median(values), 2) if values else None


def _parse_tasks(spec: str) -> list[int]:
    numbers = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            numbers.extend(range(int(lo), int(hi) + 1))
        elif part.strip():
            numbers.append(int(part))
    return numbers


if __name__ == "__main__":
    sys.exit(main())
