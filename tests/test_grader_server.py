"""The background grader (jaxgpt/grader/server.py), tried the way a learner uses it: `jaxgpt check` in a
terminal, again and again, with code that hangs and with Ctrl-C. Each test gets servers of its own (their
sockets in a temporary directory) and ends them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxgpt.grader import server, task_list

REFERENCE = str(task_list.REFERENCE_DIR)


@pytest.fixture
def background(tmp_path, monkeypatch):
    """An environment in which `jaxgpt check` uses a background grader of this test's own."""
    where = tmp_path / "background"
    env = dict(os.environ, JAXGPT_BACKGROUND="on", JAXGPT_BACKGROUND_DIR=str(where), JAXGPT_BACKGROUND_IDLE_S="120")
    yield env
    for key in ("JAXGPT_BACKGROUND", "JAXGPT_BACKGROUND_DIR", "JAXGPT_BACKGROUND_IDLE_S"):
        monkeypatch.setenv(key, env[key])
    server.stop_all()


def _check(env, *args, timeout=300):
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jaxgpt.cli", "check", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=task_list.REPO_ROOT)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - began


def _sockets(env) -> list[Path]:
    return sorted(Path(env["JAXGPT_BACKGROUND_DIR"]).glob("grader-*.sock"))


def test_the_second_check_is_answered_by_the_first_checks_server(background):
    rc, said, _ = _check(background, "2", "--impl", REFERENCE)
    assert rc == 0 and "Well done" in said, said
    first = _sockets(background)
    assert len(first) == 1, "the first check should have left one background grader listening"
    rc, said, _ = _check(background, "2", "--impl", REFERENCE)
    assert rc == 0 and "Well done" in said, said
    assert _sockets(background) == first


def test_a_connection_reset_by_an_ending_server_means_a_worker_of_its_own(tmp_path):
    """A server that was ending when the command connected closes its listener with the connection still
    waiting in it, which resets it: the command grades in a worker of its own (server.Unavailable), and never
    shows ConnectionResetError's traceback"""
    import socket
    import threading

    path = tmp_path / "grader-ending.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    grader = server.BackgroundGrader()
    grader.path = path
    threading.Timer(0.5, listener.close).start()  # the request is sent by then, never accepted
    with pytest.raises(server.Unavailable, match="ended while it checked"):
        grader.grade(2, REFERENCE)


@pytest.mark.slow
def test_a_check_right_after_stop_background_passes(background):
    """`jaxgpt check --stop-background` returns once the servers it ended take no connection, and the next
    check starts a fresh one (it used to meet the ending server and print ConnectionResetError). (Slow: two
    servers start; the default run's guard is the reset test above.)"""
    rc, said, _ = _check(background, "2", "--impl", REFERENCE)
    assert rc == 0 and "Well done" in said, said
    rc, said, _ = _check(background, "0", "--stop-background")
    assert rc == 0 and "Ended 1 background grader." in said, said
    assert _sockets(background) == []
    rc, said, _ = _check(background, "2", "--impl", REFERENCE)
    assert rc == 0 and "Well done" in said and "Traceback" not in said, said
    assert len(_sockets(background)) == 1


@pytest.mark.slow
def test_no_background_grades_in_a_worker_of_its_own(background):
    """`jaxgpt check --no-background` in a terminal, with the background grader on, starts no server. (Slow: a
    process of its own that starts a worker of its own; the default run's guard is tests/test_cli.py's
    test_check_reference_exits_0, which checks the same through cli.main in this process.)"""
    rc, said, _ = _check(background, "2", "--impl", REFERENCE, "--no-background")
    assert rc == 0 and "Well done" in said, said
    assert _sockets(background) == []


def test_a_changed_environment_or_harness_gets_another_server(monkeypatch):
    monkeypatch.setenv("JAXGPT_XLA_CACHE", "/tmp/one")
    one = server.socket_path()
    monkeypatch.setenv("JAXGPT_XLA_CACHE", "/tmp/two")
    assert server.socket_path() != one
    assert len(str(one)) < 100, "Unix socket paths must stay short"


@pytest.mark.slow
def test_an_endless_compiled_loop_is_stopped_and_the_server_answers_again(background, tmp_path):
    hang = tmp_path / "hang.py"
    hang.write_text(textwrap.dedent("""\
        import jax

        def causal_mean_loop(x):
            return jax.lax.while_loop(lambda c: c[0] >= 0, lambda c: (c[0] + 1, c[1]), (0, x))[1]

        causal_mean_matmul = causal_mean_softmax = causal_mean_loop
        """))
    rc, said, _ = _check(background, "2", "--impl", REFERENCE)  # the server is warm before the hang
    assert rc == 0, said
    rc, said, seconds = _check(background, "2", "--impl", str(hang), "--time-limit", "3")
    assert rc == 1 and "Well done" not in said, said
    assert "3 s" in said or "3 seconds" in said, said
    assert seconds < 3 + 30, f"the hang was stopped only after {seconds:.0f} s"
    rc, said, _ = _check(background, "2", "--impl", REFERENCE)
    assert rc == 0 and "Well done" in said, said


@pytest.mark.slow
def test_ctrl_c_says_stopped_and_the_next_check_passes(background):
    rc, said, _ = _check(background, "3", "--impl", REFERENCE)
    assert rc == 0, said
    process = subprocess.Popen([sys.executable, "-m", "jaxgpt.cli", "check", "1", "--impl", REFERENCE],
                               env=background, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=task_list.REPO_ROOT)
    time.sleep(3.0)
    process.send_signal(signal.SIGINT)
    said, _ = process.communicate(timeout=60)
    if process.returncode == 0:  # the whole suite finished within the 3 seconds: nothing left to stop
        pytest.skip("task 1's checks finished before the Ctrl-C")
    assert process.returncode == 130, said
    assert "stopped" in said and "Well done" not in said, said
    rc, said, _ = _check(background, "3", "--impl", REFERENCE)
    assert rc == 0 and "Well done" in said, said
