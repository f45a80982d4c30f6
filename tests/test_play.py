"""`jaxgpt play` (jaxgpt/play.py): the page that plays with a checkpoint, tested end to end.

The server runs as the learner runs it, `python -m jaxgpt.play --checkpoint DIR --port 0`, in a subprocess,
on a checkpoint of a randomly initialised reference MiniGPT (task 1's) saved with checkpoint.save. A real
headless Chromium opens the page, types a prompt, sets the fields, clicks Generate and reads the completion.

The browser is driven through chromedriver's W3C WebDriver protocol, which is plain HTTP and JSON, with
urllib: no Python package and nothing downloaded at test time, only Debian's `chromium` and
`chromium-driver` (apt-get install chromium chromium-driver). Without them the browser tests skip and say
so; with JAXGPT_REQUIRE_BROWSER=1 (CI) they fail instead, so that CI never passes by skipping them.

With the same seed the page writes what `jaxgpt sample` (sampling.sample) writes: the prompt and length
are chosen so that both run the model on the same window of block_size tokens, so the logits are the same
numbers and so is every token drawn.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from jaxgpt import play
from jaxgpt.tokenizer import ByteTokenizer, CharTokenizer

CORPUS = "the quick brown fox jumps over the lazy dog.\nthe lazy dog sleeps in the sun.\n"
TOKENIZER = CharTokenizer.from_text(CORPUS)
PROMPT, LENGTH, SEED, TEMPERATURE, TOP_K = "the lazy ", 45, 7, 0.8, 5  # 9 + 45 tokens > block_size 16
START_TIMEOUT_S, GENERATE_TIMEOUT_S = 90, 30

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
BROWSER_MISSING = ("the browser tests need Chromium and its driver, which are not installed (Debian: "
                   "`apt-get install chromium chromium-driver`)") if not (CHROMIUM and CHROMEDRIVER) else None


# ---- the checkpoint and the server ----------------------------------------------------------------------


def save_checkpoint(directory: Path) -> Path:
    """A checkpoint of the reference's task 1 MiniGPT at its random initialisation (micro sizes)."""
    import jax

    from jaxgpt.training import checkpoint, configs, loop

    config = configs.get_config("micro").with_vocab_size(TOKENIZER.vocab_size)
    model = loop.build_model(loop.model_class("reference", 1), config)
    params = loop.init_params(model, config, jax.random.PRNGKey(0))
    checkpoint.save(directory, params, config, TOKENIZER, step=0, source={"impl": "reference", "task": 1})
    return directory


_STARTED_EARLY: dict = {}  # "saved": the checkpoint's directory, "server": its server, started when collection ended


def start_early(session, items):
    """Called by tests/conftest.py once collection is done, with this file's selected tests: saves the checkpoint
    and starts its server at once, so that the server imports JAX and compiles (seconds) while the tests before
    these run."""
    if not any("server" in item.fixturenames for item in items):
        return
    where = Path(tempfile.mkdtemp(prefix="jaxgpt-play-"))
    session.config.add_cleanup(lambda: shutil.rmtree(where, ignore_errors=True))
    _STARTED_EARLY["saved"] = save_checkpoint(where / "ckpt")
    _STARTED_EARLY["server"] = Server(_STARTED_EARLY["saved"])
    session.config.add_cleanup(_STARTED_EARLY["server"].stop)  # also when these tests never run (-x, Ctrl-C)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of the reference's task 1 MiniGPT at its random initialisation (micro sizes): the one
    start_early saved, or a new one."""
    if "saved" in _STARTED_EARLY:
        return _STARTED_EARLY["saved"]
    return save_checkpoint(tmp_path_factory.mktemp("play") / "ckpt")


class Server:
    """`python -m jaxgpt.play` in a subprocess; `url` once it serves, everything it printed in `output`."""

    def __init__(self, directory: Path):
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jaxgpt.play", "--checkpoint", str(directory), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=Path(__file__).resolve().parents[1])
        self.lines: list[str] = []
        self._serving = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def wait(self) -> None:
        """Until it serves (it imports JAX and compiles: seconds)."""
        if not self._serving.wait(START_TIMEOUT_S) or self.process.poll() is not None:
            self.stop()
            pytest.fail(f"`python -m jaxgpt.play` did not start serving:\n{self.output}")
        self.url = re.search(r"http://127\.0\.0\.1:\d+/", self.output).group(0)

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            if "http://127.0.0.1:" in line:
                self._serving.set()
        self._serving.set()  # it ended

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def server(saved):
    """The server (the one start_early started, or a new one), with `expected`: what `jaxgpt sample` writes with
    the test's settings, computed here while the server starts."""
    running = _STARTED_EARLY.pop("server", None) or Server(saved)
    try:
        running.expected = expected_completion(saved)
        running.wait()
        yield running
    finally:
        running.stop()


def expected_completion(saved) -> str:
    """The completion `jaxgpt sample` writes for PROMPT with the test's settings (sampling.sample)."""
    import jax

    from jaxgpt import sampling
    from jaxgpt.training import checkpoint, loop

    params, config, tokenizer, _ = checkpoint.load(saved)
    model = loop.build_model(loop.model_class("reference", 1), config)
    ids = sampling.sample(model, params, tokenizer.encode(PROMPT), jax.random.PRNGKey(SEED), LENGTH,
                          temperature=TEMPERATURE, top_k=TOP_K, block_size=config.model.block_size)
    return tokenizer.decode(ids[len(PROMPT):])


def post(server, fields) -> tuple[int, list[dict]]:
    """POST /generate: the status and the JSON lines of the answer, in order."""
    request = urllib.request.Request(server.url + "generate", data=json.dumps(fields).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=GENERATE_TIMEOUT_S) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    return status, [json.loads(line) for line in body.decode("utf-8").splitlines()]


FIELDS = {"prompt": PROMPT, "temperature": str(TEMPERATURE), "top_k": str(TOP_K), "length": str(LENGTH),
          "seed": str(SEED)}


# ---- the command and the stream, without a browser ------------------------------------------------------


def test_the_stream_is_one_line_per_token_and_writes_what_jaxgpt_sample_writes(server):
    status, events = post(server, FIELDS)
    assert status == 200, events
    assert events[0]["prompt"] == PROMPT and events[0]["seed"] == SEED and "`micro` at step 0" in \
        events[0]["checkpoint"]
    pieces = [e["text"] for e in events[1:-1]]
    assert len(pieces) == LENGTH and all(len(p) == 1 for p in pieces), "one character per token of a char model"
    assert events[-1]["done"] and events[-1]["tokens"] == LENGTH
    assert "".join(pieces) == server.expected, "the page's sampler differs from sampling.sample with the same seed"
    again = post(server, FIELDS)[1]
    assert again[1:-1] == events[1:-1], "the same seed must write the same text"


def test_bad_parameters_are_refused_with_one_message(server):
    cases = {
        "temperature": ("-1", "Temperature must be 0 or more"),
        "length": ("100000", "Length must be a whole number of characters from 1 to 2,000, got 100,000."),
        "top_k": ("0", f"Top-k must be a whole number from 1 to {TOKENIZER.vocab_size}"),
        "seed": ("1.5", "Seed must be a whole number"),
        "prompt": ("ROMEO:", "never saw in training: ':', 'E', 'M', 'O', 'R'."),
    }
    for field, (value, words) in cases.items():
        status, events = post(server, dict(FIELDS, **{field: value}))
        assert status == 400 and len(events) == 1 and words in events[0]["error"], (field, events)
    status, events = post(server, dict(FIELDS, temperature="", length="2001"))
    assert status == 400 and "Temperature is empty" in events[0]["error"] and "got 2,001" in events[0]["error"]
    status, events = post(server, dict(FIELDS, temperature="0", top_k="", seed="", length="3", prompt=""))
    assert status == 200 and events[0]["prompt"] == "\n" and events[-1]["done"], "greedy, all, a new seed"


def test_a_missing_or_corrupted_checkpoint_stops_the_command_with_a_sentence(capsys, tmp_path, saved):
    code = play.main(["--checkpoint", str(tmp_path / "nothing"), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "There is no checkpoint at" in err and "Traceback" not in err
    damaged = tmp_path / "damaged"
    shutil.copytree(saved, damaged)
    (damaged / "params.msgpack").write_bytes(b"not the parameters")
    code = play.main(["--checkpoint", str(damaged), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "does not match the SHA-256" in err and "Traceback" not in err
    assert err.count("\n") == 1, f"one sentence on one line: {err!r}"
    assert play.main(["--checkpoint", str(saved), "--port", "70000"]) == 2
    assert "--port must be from 0 to 65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = play.main(["--checkpoint", str(saved), "--port", str(taken.getsockname()[1])])
    assert code == 2 and "is in use; choose another with --port N" in capsys.readouterr().err


def test_only_this_page_may_use_the_model(server):
    for headers in ({"Host": "evil.example"}, {"Origin": "https://evil.example"}):
        request = urllib.request.Request(server.url + "generate", data=json.dumps(FIELDS).encode(),
                                         headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=GENERATE_TIMEOUT_S)
        assert refused.value.code == 403


def test_a_byte_model_is_streamed_in_whole_characters():
    stream = play._TextStream(ByteTokenizer())
    text = "né à 5 €, 🙂."
    pieces = [stream.feed(b) for b in text.encode("utf-8")] + [stream.finish()]
    assert "".join(pieces) == text
    assert all(len(p) <= 1 for p in pieces) and "" in pieces, "each piece whole, none before a character ends"
    broken = play._TextStream(ByteTokenizer())
    assert [broken.feed(b) for b in b"\xe2\x82"] == ["", ""] and broken.feed(ord("x")) == "\ufffdx"
    chars = play._TextStream(TOKENIZER)
    assert chars.feed(TOKENIZER.encode("q")[0]) == "q" and chars.finish() == ""


def test_a_byte_model_finishes_the_character_the_length_cut():
    stream = play._TextStream(ByteTokenizer())
    assert [stream.feed(b) for b in "é".encode("utf-8")] == ["", "é"] and not stream.inside_character
    for byte in "🙂".encode("utf-8")[:3]:
        assert stream.feed(byte) == "" and stream.inside_character
    assert stream.feed("🙂".encode("utf-8")[3]) == "🙂" and not stream.inside_character
    assert not play._TextStream(TOKENIZER).inside_character


# ---- a byte-level checkpoint, trained here, served and asked through the HTTP API ------------------------

BYTE_TEXT = "Déjà vu, naïve café 🙂 — « ça va ? » 🎉 crème brûlée.\n" * 40  # 2,800 bytes, 2,080 characters


@contextlib.contextmanager
def serving(directory: Path):
    """jaxgpt/play.py's server for `directory` in this process (a thread), on a free port."""
    session = play.Session(directory)
    session.start()
    httpd = play.make_server(session, 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}/")
    finally:
        httpd.shutdown()
        httpd.server_close()


def train_bytes(tmp_path: Path, steps: int) -> Path:
    """`jaxgpt train --tokenizer byte` of the micro GPT on BYTE_TEXT, saved in the test's own directory."""
    from jaxgpt import cli

    corpus, out = tmp_path / "accents and emoji.txt", tmp_path / "bytes"
    corpus.write_text(BYTE_TEXT, encoding="utf-8")
    code = cli.main(["train", "--config", "micro", "--impl", "reference", "--data", str(corpus), "--tokenizer",
                     "byte", "--out", str(out), "--max-iters", str(steps), "--eval-interval", str(steps),
                     "--no-progress"])
    assert code == 0
    return out


def sampled_bytes(directory: Path, prompt: str, tokens: int, seed: int, temperature: float) -> list[int]:
    """The bytes `jaxgpt sample` (sampling.sample) writes after `prompt`."""
    import jax

    from jaxgpt import sampling
    from jaxgpt.training import checkpoint, loop

    params, config, tokenizer, _ = checkpoint.load(directory)
    model = loop.build_model(loop.model_class("reference", 1), config)
    prompt_ids = tokenizer.encode(prompt)
    ids = sampling.sample(model, params, prompt_ids, jax.random.PRNGKey(seed), tokens, temperature=temperature,
                          block_size=config.model.block_size)
    return [int(i) for i in ids[len(prompt_ids):]]


@pytest.mark.slow
def test_a_byte_checkpoint_answers_through_the_http_api_in_whole_characters(tmp_path):
    """A model trained with --tokenizer byte on a text with accents and emoji, served by jaxgpt/play.py: the
    answer is UTF-8 JSON lines (read strictly), each piece whole characters, the completion what `jaxgpt
    sample` writes with the same seed, finished where the length ended inside a character. (Slow: it trains a
    model of its own. The default run keeps the byte stream's unit tests above, the byte training of
    tests/test_cli.py and the served character model's HTTP and browser tests.)"""
    directory = train_bytes(tmp_path, 4)
    prompt = "naïve café 🙂 "
    with serving(directory) as server:
        status, events = post(server, {"prompt": prompt, "temperature": "1", "top_k": "", "length": "40",
                                       "seed": "3"})
    assert status == 200, events
    assert events[0]["prompt"] == prompt and "`micro` at step 4" in events[0]["checkpoint"]
    done = events[-1]
    assert done["done"] and 40 <= done["tokens"] <= 40 + play.MAX_CHARACTER_TAIL, done
    pieces = [e["text"] for e in events[1:-1]]
    assert all(pieces) and done["pieces"] == len(pieces)
    written = sampled_bytes(directory, prompt, done["tokens"], seed=3, temperature=1.0)
    assert "".join(pieces) == ByteTokenizer().decode(written), "the page must write what `jaxgpt sample` writes"
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(bytes(written[:40]))
    cut = bool(decoder.getstate()[0])  # the 40th byte ended inside a character: the page finished it
    assert (done["tokens"] > 40) == cut, (written, done)


@pytest.mark.slow
def test_a_trained_byte_checkpoint_writes_its_accents_and_emoji_through_the_http_api(tmp_path):
    """Trained long enough to learn BYTE_TEXT: its greedy completions are the text's own characters, accents and
    emoji whole, with no replacement character, also where the length asked for ends inside an emoji"""
    directory = train_bytes(tmp_path, 120)
    prompt = "naïve café "
    with serving(directory) as server:
        status, events = post(server, {"prompt": prompt, "temperature": "0", "length": "2", "seed": "0"})
        assert status == 200 and "".join(e.get("text", "") for e in events[1:]) == "🙂", events
        assert events[-1]["tokens"] == 4, "2 bytes of a 4-byte emoji, finished by 2 more"
        status, events = post(server, {"prompt": prompt, "temperature": "0", "length": "120", "seed": "0"})
    completion = "".join(e.get("text", "") for e in events[1:])
    assert status == 200 and events[-1]["done"], events
    assert "\ufffd" not in completion and {"é", "è", "û", "🎉", "«"} <= set(completion), completion
    assert prompt + completion in BYTE_TEXT * 2, completion


def test_an_lstm_checkpoint_is_served_as_jaxgpt_sample_samples_it(tmp_path):
    """jaxgpt play serves task 15's CharLSTM (`jaxgpt train --model lstm`) too, writing what the sampler writes"""
    import jax

    from jaxgpt import sampling
    from jaxgpt.training import checkpoint, recurrent

    config = recurrent.get_config("micro").with_vocab_size(TOKENIZER.vocab_size)
    model = recurrent.build_model(recurrent.model_class("reference"), config)
    params = recurrent.init_params(model, config, jax.random.PRNGKey(1))
    checkpoint.save(tmp_path, params, config, TOKENIZER, step=0, source={"impl": "reference", "task": 15})
    loaded = play.Session(tmp_path).start()
    got = "".join(play.generate(loaded, TOKENIZER.encode(PROMPT), 30, temperature=1.0, top_k=None, seed=SEED))
    ids = sampling.sample(model, params, TOKENIZER.encode(PROMPT), jax.random.PRNGKey(SEED), 30,
                          block_size=config.model.block_size)
    assert got == TOKENIZER.decode(ids[len(PROMPT):])


# ---- in a real browser ----------------------------------------------------------------------------------


class Browser:
    """Headless Chromium through chromedriver's W3C WebDriver protocol (HTTP and JSON, with urllib)."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def __init__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.profile = tempfile.mkdtemp(prefix="jaxgpt-play-chromium-")
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.driver.poll() is not None:
                self.quit()
                pytest.fail("chromedriver did not start.")
            time.sleep(0.1)
        options = {"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                                "--disable-dev-shm-usage", "--no-first-run",
                                                f"--user-data-dir={self.profile}"]}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            value = json.loads(err.read() or b"{}").get("value") or {}
            raise AssertionError(f"WebDriver {method} {path}: {value.get('error')}: "
                                 f"{str(value.get('message', ''))[:300]}") from None

    def _do(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self._do("POST", "/url", {"url": url})

    def element(self, css: str) -> str:
        return self._do("POST", "/element", {"using": "css selector", "value": css})[self.ELEMENT]

    def type(self, css: str, text: str) -> None:
        """Clears the field and types `text` into it, key by key."""
        element = self.element(css)
        self._do("POST", f"/element/{element}/clear", {})
        if text:
            self._do("POST", f"/element/{element}/value", {"text": text})

    def click(self, css: str) -> None:
        self._do("POST", f"/element/{self.element(css)}/click", {})

    def visible_text(self, css: str) -> str:
        """What the page shows of an element ("" while it is hidden)."""
        return self._do("GET", f"/element/{self.element(css)}/text")

    def run(self, script: str):
        return self._do("POST", "/execute/sync", {"script": script, "args": []})

    def quit(self) -> None:
        try:
            if getattr(self, "session", None):
                self._do("DELETE", "")
        finally:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if BROWSER_MISSING:
        if os.environ.get("JAXGPT_REQUIRE_BROWSER"):
            pytest.fail(BROWSER_MISSING + ", and JAXGPT_REQUIRE_BROWSER is set.")
        pytest.skip(BROWSER_MISSING)
    started = Browser()
    yield started
    started.quit()


def generate_on_page(browser, **fields) -> dict:
    """Fills the page's fields, clicks Generate, waits for the end; what the page then shows."""
    for name, value in fields.items():
        browser.type(f"#{name}", str(value))
    browser.click("#generate")
    deadline = time.monotonic() + GENERATE_TIMEOUT_S
    while browser.run("return document.getElementById('output').dataset.state") != "done":
        assert time.monotonic() < deadline, "the page did not finish generating"
        time.sleep(0.05)
    return browser.run("""const $ = (id) => document.getElementById(id);
        return {prompt: $('prompt-echo').textContent, completion: $('completion').textContent,
                chunks: Number($('output').dataset.chunks), status: $('status').textContent,
                message: $('message').hidden ? '' : $('message').textContent};""")


def test_the_page_answers_a_prompt_token_by_token(browser, server):
    browser.open(server.url)
    assert browser.run("return document.title") == "Play with your model"
    assert "`micro` at step 0" in browser.visible_text("#checkpoint")
    shown = generate_on_page(browser, prompt=PROMPT, temperature=TEMPERATURE, top_k=TOP_K, length=LENGTH,
                             seed=SEED)
    assert shown["message"] == "", shown
    assert shown["prompt"] == PROMPT
    assert len(shown["completion"]) == LENGTH and set(shown["completion"]) <= set(TOKENIZER.chars), shown
    assert shown["completion"] == server.expected, "the page must write what `jaxgpt sample` writes with this seed"
    assert shown["chunks"] > 1, "the completion arrived in one piece, not token by token"
    assert f"{LENGTH} characters in" in shown["status"] and f"seed {SEED}" in shown["status"]
    assert browser.visible_text("#output").startswith(PROMPT.strip())


def test_the_page_refuses_bad_parameters_with_a_message(browser, server):
    browser.open(server.url)
    shown = generate_on_page(browser, prompt=PROMPT, temperature=-1, length=LENGTH)
    assert "Temperature must be 0 or more" in shown["message"] and shown["completion"] == "", shown
    assert "Temperature must be 0 or more" in browser.visible_text("#message")
    shown = generate_on_page(browser, temperature=1, length=10**6)
    assert "Length must be a whole number of characters from 1 to 2,000, got 1,000,000." == shown["message"]
    shown = generate_on_page(browser, prompt="Hello", length=5)
    assert "never saw in training: 'H'." in shown["message"], shown
    shown = generate_on_page(browser, prompt=PROMPT, length=5, seed="")
    assert shown["message"] == "" and len(shown["completion"]) == 5, "the message goes once the fields are right"


def test_the_page_says_when_the_checkpoint_becomes_unreadable_and_follows_a_new_save(browser, server, saved):
    from jaxgpt.training import checkpoint

    browser.open(server.url)
    moved = saved.with_name("moved")
    saved.rename(moved)
    try:
        shown = generate_on_page(browser, prompt=PROMPT, temperature=1, length=5, seed=1)
    finally:
        moved.rename(saved)
    assert shown["message"].startswith("The checkpoint cannot be read any more. There is no checkpoint at"), shown
    params = saved / "params.msgpack"
    good = params.read_bytes()
    params.write_bytes(good[: len(good) // 2])
    try:
        shown = generate_on_page(browser)
        assert "does not match the SHA-256" in shown["message"] and shown["completion"] == "", shown
        browser.open(server.url)  # the page itself says it too, not a stack trace
        assert "does not match the SHA-256" in browser.visible_text("#message")
        assert "Traceback" not in browser.run("return document.body.textContent")
    finally:
        params.write_bytes(good)
    shown = generate_on_page(browser, prompt=PROMPT, length=5)
    assert shown["message"] == "" and len(shown["completion"]) == 5, "whole again, it is read again"
    params, config, tokenizer, _ = checkpoint.load(saved)  # a training run saves a later step into it
    checkpoint.save(saved, params, config, tokenizer, step=5, source={"impl": "reference", "task": 1})
    shown = generate_on_page(browser)
    assert shown["message"] == "" and "`micro` at step 5 of" in browser.visible_text("#checkpoint"), shown


def test_ctrl_c_stops_the_server_with_a_sentence(server):
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(30) == 0
    time.sleep(0.1)  # the reader thread takes the last line
    assert "Stopped serving the page." in server.output and "Traceback" not in server.output, server.output
