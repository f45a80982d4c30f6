"""`jaxgpt play`: a page in your browser to play with a trained model.

    python -m jaxgpt.play --checkpoint checkpoints/tiny [--port 8000] [--impl reference]

serves one page at http://127.0.0.1:PORT/ (this computer only; --port 0 takes any free port and prints it):
a prompt, a temperature, a top-k, a length and a seed, and a Generate button. The completion appears token
by token as the model writes it.

How it works, in the standard library only: `http.server.ThreadingHTTPServer` serves the page (inline CSS
and JavaScript, nothing fetched from elsewhere) and answers `POST /generate` with a stream of JSON lines,
one per token ({"text": ...}), ended by {"done": true, ...} or {"error": "a sentence"}; the page reads it
with `fetch` as it arrives. Each token is one call of a jitted next-token function, which runs the model on
a fixed window of block_size tokens (the context, padded on the right or cropped on the left, exactly as
jaxgpt/sampling.py's loop does) and picks with sampling.py's `pick`. Temperature and top-k are traced
arguments, so the function compiles once, when the page starts, and never per token or per request. The
key is split once per token as sampling.py splits it, so with the same seed the page writes what
`jaxgpt sample` writes (tests/test_play.py checks it). A byte-level model may emit half a UTF-8
character: the page is sent whole characters only, and where the length asked for ends inside a character
the model writes up to 3 more bytes to finish it (the done event counts them), so a completion never ends in
a replacement character that only the cut made.

What can go wrong is said in a sentence, never a traceback: a missing or damaged checkpoint stops the
command at once (exit code 1); one that becomes unreadable while the page is served (it is read again
whenever its files change, so a training run that saves into it gives the page its newest model) is said
on the page; bad parameters (a negative temperature, a length over 2,000, a character the model never saw)
are refused with a message. Ctrl-C stops the server.
"""

from __future__ import annotations

import argparse
import codecs
import errno
import html
import json
import math
import random
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Sequence

from jaxgpt.training import checkpoint

HOST = "127.0.0.1"  # this computer only: the page runs your code's model for whoever can reach it
DEFAULT_PORT = 8000
MAX_LENGTH = 2_000  # tokens of one completion: about a page of text, and a few seconds on a laptop CPU
MAX_PROMPT = 10_000  # characters; the model sees only the last block_size tokens of it anyway
MAX_BODY = 1_000_000  # bytes of one request
MAX_SEED = 2**32 - 1
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class PlayError(Exception):
    """Something the person at the terminal or on the page can fix; the message says what, in sentences."""


# ----------------------------------------------------------------------------------------------------
# the model: loading, reloading, generating


class _Loaded:
    """One readable state of the checkpoint: its parameters, model and compiled next-token function."""

    def __init__(self, params, config, tokenizer, meta, model, next_token, description: str):
        self.params, self.config, self.tokenizer, self.meta = params, config, tokenizer, meta
        self.model, self.next_token, self.description = model, next_token, description

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    @property
    def unit(self) -> str:
        """What one token is, for the page's words."""
        return "characters" if hasattr(self.tokenizer, "stoi") else "tokens"


def next_token_function(model):
    """A jitted `next_token(params, context, last, key, temperature, top_k) -> (token id, next key)`.

    context: int32 (block_size,), the last block_size tokens padded on the right with zeros (a causal model's
    logits at `last` do not see the padding); last: the position of the newest real token; top_k: 1 to
    vocab_size (vocab_size samples among all). The key is split as sampling.sample splits it, one split per
    token, so the same seed gives the same tokens. One compilation serves every temperature and top-k.
    """
    import jax
    import jax.numpy as jnp

    from jaxgpt import sampling

    def next_token(params, context, last, key, temperature, top_k):
        key, sample_key = jax.random.split(key)
        logits = model.apply(params, context[None, :], deterministic=True)  # (1, block_size, vocab_size)
        logits = logits[0, last].astype(jnp.float32)  # (vocab_size,): the prediction after the last token
        # top-k with a traced k: the k-th largest logit is the one lax.top_k would give (sampling's filter)
        kth_largest = jnp.sort(logits)[::-1][top_k - 1]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
        return sampling.pick(logits, sample_key, temperature, None), key

    return jax.jit(next_token)


class _TextStream:
    """Token ids in, whole characters out: a byte model's half-written UTF-8 character waits for its end."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._bytes = not hasattr(tokenizer, "stoi") and int(tokenizer.vocab_size) == 256
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace") if self._bytes else None

    def feed(self, token: int) -> str:
        if self._bytes:
            return self._decoder.decode(bytes([token]))
        return self._tokenizer.decode([token])

    @property
    def inside_character(self) -> bool:
        """Whether the bytes fed so far end inside a UTF-8 character (its first bytes wait for the rest)."""
        return self._bytes and bool(self._decoder.getstate()[0])

    def finish(self) -> str:
        return self._decoder.decode(b"", final=True) if self._bytes else ""


class Session:
    """The checkpoint being served: loaded at start, read again whenever its files change."""

    def __init__(self, directory: str | Path, impl: str | None = None):
        self.directory = Path(directory)
        self.impl_flag = impl
        self.lock = threading.Lock()  # one generation at a time: they share the CPU (or the GPU)
        self.loaded: _Loaded | None = None
        self._stamp: Any = None
        self._model_cls: dict[tuple[str, int], Any] = {}

    def start(self) -> _Loaded:
        """Loads and compiles; raises PlayError with the sentence for the terminal."""
        self._stamp = self._files_stamp()
        self.loaded = self._load(previous=None)
        return self.loaded

    def current(self) -> _Loaded:
        """The checkpoint as it is now on disk (reloaded if its files changed); PlayError if unreadable."""
        stamp = self._files_stamp()
        if stamp != self._stamp or self.loaded is None:
            previous, self.loaded, self._stamp = self.loaded, None, stamp
            try:
                self.loaded = self._load(previous)
            except PlayError as err:
                raise PlayError(f"The checkpoint cannot be read any more. {err} The page reads it again at "
                                f"the next Generate.") from None
        return self.loaded

    def _files_stamp(self):
        stamp = []
        for name in (checkpoint.META_FILE, checkpoint.PARAMS_FILE):
            try:
                info = (self.directory / name).stat()
                stamp.append((info.st_mtime_ns, info.st_size, info.st_ino))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def _load(self, previous: _Loaded | None) -> _Loaded:
        import jax
        import jax.numpy as jnp

        from jaxgpt.training import loop, recurrent

        try:
            params, config, tokenizer, meta = checkpoint.load(self.directory)
        except checkpoint.CheckpointError as err:
            raise PlayError(str(err)) from None
        source = meta.get("source") or {}
        impl = self.impl_flag or source.get("impl") or "reference"
        task = int(source.get("task", 1))
        choose = "" if self.impl_flag else " Choose the code with --impl (for example --impl reference)."
        if previous is not None and previous.config.model == config.model and \
                (previous.meta.get("source") or {}) == source:
            model, next_token = previous.model, previous.next_token  # the same model: no new compilation
        else:
            # task 15's CharLSTM (jaxgpt train --model lstm) or a MiniGPT; both are called as a GPT is, the
            # CharLSTM reading the window from its zero state
            lstm = task == recurrent.LSTM_TASK
            try:
                if (impl, task) not in self._model_cls:
                    self._model_cls[(impl, task)] = (recurrent.model_class(impl) if lstm else
                                                     loop.model_class(impl, task))
                model = (recurrent.build_model if lstm else loop.build_model)(self._model_cls[(impl, task)], config)
            except Exception as err:  # TrainingError, ConfigError: a sentence already
                raise PlayError(f"The checkpoint's model cannot be rebuilt: {err}{choose}") from None
            next_token = next_token_function(model)
        variables = {"params": jax.tree_util.tree_map(jnp.asarray, params)}
        try:  # compiles now (a second or two), so that the first Generate answers at once
            block = config.model.block_size
            token, _ = next_token(variables, jnp.zeros((block,), jnp.int32), jnp.int32(0),
                                  jax.random.PRNGKey(0), jnp.float32(1.0), jnp.int32(tokenizer.vocab_size))
            int(token)
        except Exception as err:  # the learner's model
            raise PlayError("The model cannot generate: " + loop.explain_model_error(err, task) + choose) from None
        return _Loaded(variables, config, tokenizer, meta, model, next_token, checkpoint.describe(self.directory))


MAX_CHARACTER_TAIL = 3  # a UTF-8 character is at most 4 bytes: at most 3 more finish one the length cut


def generate(loaded: _Loaded, prompt_ids: Sequence[int], length: int, *, temperature: float,
             top_k: int | None, seed: int, counts: dict[str, int] | None = None) -> Iterator[str]:
    """The completion of `prompt_ids`, `length` tokens, as pieces of text (whole characters), one per token
    (none for a byte that only starts a character). A byte model whose `length` bytes end inside a character
    writes up to MAX_CHARACTER_TAIL more to finish it; counts["tokens"] (if given) is the tokens written."""
    import jax
    import numpy as np

    block = loaded.config.model.block_size
    ids = [int(i) for i in prompt_ids]
    key = jax.random.PRNGKey(seed)
    temperature = np.float32(temperature)
    k = np.int32(top_k if top_k is not None else loaded.vocab_size)
    stream = _TextStream(loaded.tokenizer)
    written = 0
    while written < length or (stream.inside_character and written < length + MAX_CHARACTER_TAIL):
        written += 1
        if counts is not None:
            counts["tokens"] = written
        window = ids[-block:]
        context = np.zeros((block,), np.int32)
        context[: len(window)] = window
        token, key = loaded.next_token(loaded.params, context, np.int32(len(window) - 1), key, temperature, k)
        ids.append(int(token))
        text = stream.feed(ids[-1])
        if text:
            yield text
    tail = stream.finish()
    if tail:
        yield tail


# ----------------------------------------------------------------------------------------------------
# the page's fields


class Request:
    def __init__(self, prompt: str, prompt_ids: list[int], temperature: float, top_k: int | None, length: int,
                 seed: int):
        self.prompt, self.prompt_ids, self.temperature = prompt, prompt_ids, temperature
        self.top_k, self.length, self.seed = top_k, length, seed


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value: Any, whole: bool) -> float | int:
    """The number in a field (text from the page, or a JSON number); ValueError if it is not one."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        number = value
    else:
        number = float(str(value).strip())
    if not math.isfinite(number):
        raise ValueError(value)
    if whole:
        if number != int(number):
            raise ValueError(value)
        return int(number)
    return float(number)


def _shown(value: Any) -> str:
    """A field's value in a message: text quoted, numbers as written (-1, not -1.0)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def parse_request(fields: Any, loaded: _Loaded) -> tuple[Request | None, str | None]:
    """(the request, None), or (None, the message the page shows: one sentence per field that is wrong)."""
    if not isinstance(fields, dict):
        return None, "The request must be a JSON object with prompt, temperature, top_k, length and seed."
    problems = []
    tokenizer, vocab, unit = loaded.tokenizer, loaded.vocab_size, loaded.unit
    one = "character" if unit == "characters" else "token"

    prompt = fields.get("prompt")
    prompt_ids: list[int] = []
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        problems.append("The prompt must be text.")
    else:
        if prompt == "":  # as `jaxgpt sample`: a newline, or the first character of a text without any
            prompt = "\n" if "\n" in getattr(tokenizer, "stoi", {"\n": 0}) else tokenizer.decode([0])
        if len(prompt) > MAX_PROMPT:
            problems.append(f"The prompt has {len(prompt):,} characters; the page takes at most {MAX_PROMPT:,} "
                            f"(the model sees only its last {loaded.config.model.block_size} {unit}).")
        else:
            try:
                prompt_ids = tokenizer.encode(prompt)
            except ValueError:
                unknown = sorted({ch for ch in prompt if ch not in getattr(tokenizer, "stoi", {})})
                shown = ", ".join(repr(ch) for ch in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
                problems.append(f"The prompt has characters that the model never saw in training: {shown}. Its "
                                f"vocabulary is the {vocab} characters of its training text.")

    temperature = fields.get("temperature")
    if _blank(temperature):
        problems.append(f"Temperature is empty: give a number, 0 or more (0 always picks the likeliest {one}).")
    else:
        try:
            temperature = _number(temperature, whole=False)
            if temperature < 0:
                raise ValueError(temperature)
        except (ValueError, TypeError, OverflowError):
            problems.append(f"Temperature must be 0 or more (0 always picks the likeliest {one}; below 1 safer, "
                            f"above 1 wilder), got {_shown(temperature)}.")

    top_k = fields.get("top_k")
    if _blank(top_k):
        top_k = None
    else:
        try:
            top_k = _number(top_k, whole=True)
            if not 1 <= top_k <= vocab:
                raise ValueError(top_k)
        except (ValueError, TypeError, OverflowError):
            problems.append(f"Top-k must be a whole number from 1 to {vocab} (the vocabulary), or empty to sample "
                            f"among all {vocab} {unit}; got {_shown(top_k)}.")

    length = fields.get("length")
    if _blank(length):
        problems.append(f"Length is empty: give the number of {unit} to generate, from 1 to {MAX_LENGTH:,}.")
    else:
        try:
            length = _number(length, whole=True)
            if not 1 <= length <= MAX_LENGTH:
                raise ValueError(length)
        except (ValueError, TypeError, OverflowError):
            problems.append(f"Length must be a whole number of {unit} from 1 to {MAX_LENGTH:,}, got "
                            f"{_shown(length)}.")

    seed = fields.get("seed")
    if _blank(seed):
        seed = random.randrange(2**31)  # a new one each time; the page shows it, to write the same text again
    else:
        try:
            seed = _number(seed, whole=True)
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(seed)
        except (ValueError, TypeError, OverflowError):
            problems.append(f"Seed must be a whole number from 0 to {MAX_SEED:,}, or empty for a new one each "
                            f"time; got {_shown(seed)}.")

    if problems:
        return None, " ".join(problems)
    return Request(prompt, prompt_ids, temperature, top_k, length, seed), None


# ----------------------------------------------------------------------------------------------------
# the server


class _Handler(BaseHTTPRequestHandler):
    server_version = "jaxgpt-play"
    session: Session  # set on the subclass that serve() makes

    def log_message(self, format, *args):  # noqa: A002 - quiet: the terminal shows only what matters
        pass

    def _host_ok(self) -> bool:
        # Only this page may use the model: not a site whose name was pointed at 127.0.0.1 (its Host), nor a
        # script of another site open in the same browser (its Origin).
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        origin = self.headers.get("Origin")
        origin_host = origin.split("://", 1)[-1].rsplit(":", 1)[0] if origin else HOST
        if host in (HOST, "localhost") and origin_host in (HOST, "localhost"):
            return True
        self._send(HTTPStatus.FORBIDDEN, "text/plain; charset=utf-8",
                   f"This page answers only at http://{HOST}:{self.server.server_address[1]}/.\n".encode())
        return False

    def _send(self, status, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            loaded, problem = self.session.loaded, None
            if self.session.lock.acquire(timeout=0.5):  # not behind a long completion in another tab
                try:
                    loaded = self.session.current()
                except PlayError as err:
                    loaded, problem = self.session.loaded, str(err)
                finally:
                    self.session.lock.release()
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page(loaded, problem).encode("utf-8"))
        elif path == "/favicon.ico":
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"Nothing here: the page is at /.\n")

    def do_POST(self):
        if not self._host_ok():
            return
        if self.path.split("?", 1)[0] != "/generate":
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"Nothing here: POST /generate.\n")
            return
        try:
            size = int(self.headers.get("Content-Length") or 0)
            if not 0 <= size <= MAX_BODY:
                raise ValueError(size)
            fields = json.loads(self.rfile.read(size).decode("utf-8") or "null")
        except (ValueError, UnicodeDecodeError):
            self._error(HTTPStatus.BAD_REQUEST, "The request is not a JSON object of at most 1 MB.")
            return
        with self.session.lock:
            try:
                loaded = self.session.current()
            except PlayError as err:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
                return
            request, problem = parse_request(fields, loaded)
            if problem:
                self._error(HTTPStatus.BAD_REQUEST, problem)
                return
            self._stream(loaded, request)

    def _error(self, status, message: str) -> None:
        self._send(status, "application/x-ndjson; charset=utf-8", _line({"error": message}))

    def _stream(self, loaded: _Loaded, request: Request) -> None:
        # HTTP/1.0 without a Content-Length: the body is what is written until the connection closes, and
        # each line goes out as soon as it is written (the server's socket writer does not buffer).
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        started, tokens, counts = time.perf_counter(), 0, {"tokens": request.length}
        try:
            self.wfile.write(_line({"prompt": request.prompt, "seed": request.seed,
                                    "checkpoint": loaded.description}))
            try:
                for text in generate(loaded, request.prompt_ids, request.length, temperature=request.temperature,
                                     top_k=request.top_k, seed=request.seed, counts=counts):
                    self.wfile.write(_line({"text": text}))
                    tokens += 1
            except (ConnectionError, TimeoutError):
                raise
            except Exception as err:  # the learner's model failing on something the warm-up did not meet
                from jaxgpt.training import loop

                task = int((loaded.meta.get("source") or {}).get("task", 1))
                self.wfile.write(_line({"error": "The model failed while generating: "
                                                 + loop.explain_model_error(err, task)}))
                return
            self.wfile.write(_line({"done": True, "tokens": counts["tokens"], "pieces": tokens,
                                    "seconds": round(time.perf_counter() - started, 3), "seed": request.seed}))
        except (ConnectionError, TimeoutError):
            pass  # the page stopped reading (Stop, or the tab was closed): generating further is wasted


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")


def make_server(session: Session, port: int) -> ThreadingHTTPServer:
    """A server for `session` on 127.0.0.1:port (0: any free port), not yet serving."""
    handler = type("Handler", (_Handler,), {"session": session})
    server = ThreadingHTTPServer((HOST, port), handler)
    server.daemon_threads = True  # a completion in progress does not keep Ctrl-C waiting
    return server


# ----------------------------------------------------------------------------------------------------
# the page


def page(loaded: _Loaded | None, problem: str | None = None) -> str:
    """The whole page: HTML with its CSS and JavaScript inline, nothing fetched from anywhere else."""
    vocab = loaded.vocab_size if loaded else 0
    unit = loaded.unit if loaded else "tokens"
    values = {
        "checkpoint": html.escape(loaded.description if loaded else "(unreadable)"),
        "vocab": str(vocab),
        "unit": unit,
        "max_length": str(MAX_LENGTH),
        "max_length_words": f"{MAX_LENGTH:,}",
        "block": str(loaded.config.model.block_size if loaded else 0),
        "message": html.escape(problem or ""),
        "message_hidden": "" if problem else " hidden",
    }
    text = _PAGE
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    return text


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Play with your model</title>
<style>
  :root { color-scheme: light dark; --muted: #777; --accent: #2a6fdb; --bad: #b3261e; }
  body { font: 16px/1.45 system-ui, sans-serif; margin: 0; }
  main { max-width: 60rem; margin: 0 auto; padding: 1.5rem; }
  h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
  #checkpoint { color: var(--muted); margin: 0 0 1rem; font-size: .9rem; }
  label { display: block; font-size: .9rem; }
  textarea, input { font: 15px/1.4 ui-monospace, monospace; box-sizing: border-box; }
  textarea { width: 100%; padding: .5rem; }
  .row { display: flex; flex-wrap: wrap; gap: .75rem; align-items: end; margin: .75rem 0; }
  .row input { width: 8rem; padding: .3rem; display: block; }
  button { font: inherit; padding: .4rem 1.4rem; border: 0; border-radius: .3rem; background: var(--accent);
           color: white; cursor: pointer; }
  #message { color: var(--bad); border-left: 3px solid var(--bad); padding: .3rem .7rem; }
  #output { white-space: pre-wrap; word-wrap: break-word; font: 15px/1.45 ui-monospace, monospace;
            border: 1px solid #8884; border-radius: .3rem; padding: .75rem; min-height: 8rem; }
  #prompt-echo { color: var(--muted); }
  #status { color: var(--muted); font-size: .9rem; }
  .hint { color: var(--muted); font-size: .8rem; }
</style>
</head>
<body>
<main>
<h1>Play with your model</h1>
<p id="checkpoint">{{checkpoint}}</p>
<form id="form" novalidate>
  <label for="prompt">Prompt <span class="hint">(empty: start from a newline; the model sees its last
    {{block}} {{unit}}; Ctrl+Enter generates)</span></label>
  <textarea id="prompt" rows="4" spellcheck="false"></textarea>
  <div class="row">
    <label>Temperature <input id="temperature" type="number" value="1.0" step="0.1" min="0"></label>
    <label>Top-k <input id="top_k" type="number" min="1" max="{{vocab}}" step="1" placeholder="all {{vocab}}"></label>
    <label>Length <input id="length" type="number" value="300" min="1" max="{{max_length}}" step="1"></label>
    <label>Seed <input id="seed" type="number" min="0" step="1" placeholder="new each time"></label>
    <button id="generate" type="submit">Generate</button>
  </div>
  <p class="hint">Temperature 0 always picks the likeliest of the {{vocab}} {{unit}}, below 1 is safer,
    above 1 wilder; top-k samples only among the k likeliest; length is 1 to {{max_length_words}} {{unit}};
    the same seed writes the same text.</p>
</form>
<p id="message" role="alert"{{message_hidden}}>{{message}}</p>
<pre id="output" data-state="idle" data-chunks="0"><span id="prompt-echo"></span><span id="completion"></span></pre>
<p id="status"></p>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let controller = null;

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function handle(event, completion) {
  if (event.checkpoint !== undefined) $("checkpoint").textContent = event.checkpoint;
  if (event.prompt !== undefined) $("prompt-echo").textContent = event.prompt;
  if (event.text !== undefined) completion.appendData(event.text);
  if (event.error !== undefined) showMessage(event.error);
  if (event.done) {
    const rate = event.seconds > 0 ? Math.round(event.tokens / event.seconds) : event.tokens;
    $("status").textContent = `${event.tokens} {{unit}} in ${event.seconds.toFixed(1)} s ` +
      `(${rate} per second), seed ${event.seed}.`;
  }
}

async function generate() {
  const output = $("output");
  const fields = {prompt: $("prompt").value, temperature: $("temperature").value, top_k: $("top_k").value,
                  length: $("length").value, seed: $("seed").value};
  showMessage("");
  $("status").textContent = "";
  $("prompt-echo").textContent = "";
  const completion = document.createTextNode("");
  $("completion").replaceChildren(completion);
  output.dataset.state = "running";
  output.dataset.chunks = "0";
  controller = new AbortController();
  $("generate").textContent = "Stop";
  try {
    const response = await fetch("/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify(fields), signal: controller.signal});
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      output.dataset.chunks = String(Number(output.dataset.chunks) + 1);
      pending += decoder.decode(value, {stream: true});
      let end;
      while ((end = pending.indexOf("\\n")) >= 0) {
        handle(JSON.parse(pending.slice(0, end)), completion);
        pending = pending.slice(end + 1);
      }
    }
  } catch (err) {
    if (err.name === "AbortError") $("status").textContent = "Stopped.";
    else showMessage(`The page lost touch with jaxgpt play (${err.message}): is it still running?`);
  } finally {
    controller = null;
    $("generate").textContent = "Generate";
    output.dataset.state = "done";
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (controller) controller.abort(); else generate();
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("form").requestSubmit();
  }
});
</script>
</body>
</html>
"""


# ----------------------------------------------------------------------------------------------------
# the command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgpt play", description="Serve a page on this computer where a "
                                     "prompt, a temperature, a top-k and a length give a completion from a "
                                     "checkpoint, written token by token. Ctrl-C stops it.")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `jaxgpt play` (cli.py adds them to its subcommand)."""
    parser.add_argument("--checkpoint", required=True, help="a directory written by `jaxgpt train`")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the port on {HOST} (default: %(default)s; 0 takes any free port)")
    parser.add_argument("--impl", default=None, help="the code whose model to use, its MiniGPT or its task 15 "
                        "CharLSTM (default: the one that trained the checkpoint)")


def run(args: argparse.Namespace) -> int:
    """`jaxgpt play` with parsed arguments: serves until Ctrl-C; the exit code."""
    if not 0 <= args.port <= 65535:
        print(f"--port must be from 0 to 65535 (0: any free port), got {args.port}.", file=sys.stderr)
        return EXIT_USAGE
    session = Session(args.checkpoint, args.impl)
    try:  # the port first: a port in use is said at once, not after loading and compiling
        server = make_server(session, args.port)
    except OSError as err:
        busy = "is in use" if err.errno == errno.EADDRINUSE else f"cannot be used ({err.strerror or err})"
        print(f"Port {args.port} on {HOST} {busy}; choose another with --port N, or --port 0 for any free one.",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            print(f"Loading {args.checkpoint} and compiling its model ...", flush=True)
            loaded = session.start()
        except PlayError as err:
            print(str(err), file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("\nStopped before the page was served.", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"Serving {loaded.description}\nat http://{HOST}:{server.server_address[1]}/ (on this computer "
              f"only). Open it in a browser; Ctrl-C stops it.", flush=True)
        restore = _sigterm_as_interrupt()
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            print("\nStopped serving the page.", flush=True)
        finally:
            restore()
    finally:
        server.server_close()
    return EXIT_OK


def _sigterm_as_interrupt():
    """SIGTERM (`kill`) stops the server as Ctrl-C does, and so does SIGINT where the shell that started it
    in the background had it ignored; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, interrupt),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}

    def restore():
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its own message (or --help)
        return int(exit_.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
