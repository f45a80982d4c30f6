"""The PyTorch peer: jaxgpt's MiniGPT and training recipe written in PyTorch, for the race in time_to_loss.py and
the tokens-per-second table in throughput.py. Our own code, in the shape of nanoGPT's model.py.

The same model as the reference (reference/task01_minigpt.py): pre-LayerNorm blocks (epsilon 1e-6, Flax's),
causal multi-head attention with biases on the query, key, value and output projections, a ReLU MLP 4x wide,
learned token and position embeddings, a final LayerNorm and a linear head; the same parameter count. It is
initialised from the same distributions as Flax's defaults (truncated-normal LeCun kernels, normal(1/sqrt(C))
embeddings, zero biases), not from the same numbers. The same recipe: AdamW (betas 0.9 and beta2, epsilon
1e-8, decoupled weight decay on the kernels and embeddings only), global-norm clipping, the schedule of
recipe.learning_rate, batches of random windows from the first 90% of the text, and recipe's fixed evaluation.

Run by the benchmarks as a child process (so that its wall time counts its own `import torch`):

    python bench/torch_peer.py throughput --config JSON --mode eager|compile [--calls N]
    python bench/torch_peer.py race --config JSON --mode eager|compile --data input.txt --target 1.89

Each prints JSON lines; the last one is the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import recipe  # noqa: E402  (bench/recipe.py)

LN_EPS = 1e-6  # Flax's nn.LayerNorm default; PyTorch's is 1e-5


def _lecun_truncated_(weight: torch.Tensor, fan_in: int) -> None:
    # Flax's lecun_normal: a normal truncated at two standard deviations, rescaled so that the variance is 1/fan_in.
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    _lecun_truncated_(layer.weight, n_in)
    nn.init.zeros_(layer.bias)
    return layer


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.ln1 = nn.LayerNorm(n_embd, eps=LN_EPS)
        self.qkv = _linear(n_embd, 3 * n_embd)  # Flax's three projections, side by side in one matrix
        self.out = _linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd, eps=LN_EPS)
        self.fc = _linear(n_embd, 4 * n_embd)
        self.proj = _linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, H, T, D)
        x = x + F.dropout(self.out(y.transpose(1, 2).reshape(B, T, C)), p, self.training)
        return x + F.dropout(self.proj(F.relu(self.fc(self.ln2(x)))), p, self.training)


class MiniGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_embd: int, n_head: int, n_layer: int,
                 dropout_rate: float = 0.0):
        super().__init__()
        self.dropout = dropout_rate
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        for table in (self.token_embedding, self.position_embedding):
            nn.init.normal_(table.weight, std=1.0 / math.sqrt(n_embd))
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, dropout_rate) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, eps=LN_EPS)
        self.lm_head = _linear(n_embd, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(T, device=idx.device))
        x = F.dropout(x, self.dropout, self.training)
        return self.lm_head(self.ln_f(self.blocks(x)))  # (B, T, vocab_size)


def from_flax(model: MiniGPT, params) -> MiniGPT:
    """Copies a jaxgpt MiniGPT's parameter tree (the lessons' contract) into `model`: the proof that the peer is
    the same function (tests/test_bench.py compares the logits)."""
    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32))

    C = model.token_embedding.weight.shape[1]
    with torch.no_grad():
        model.token_embedding.weight.copy_(t(params["token_embedding"]["embedding"]))
        model.position_embedding.weight.copy_(t(params["position_embedding"]["embedding"]))
        for i, block in enumerate(model.blocks):
            p = params[f"blocks_{i}"]
            attn = p["attn"]
            block.qkv.weight.copy_(torch.cat([t(attn[n]["kernel"]).reshape(C, C).T for n in ("query", "key", "value")]))
            block.qkv.bias.copy_(torch.cat([t(attn[n]["bias"]).reshape(C) for n in ("query", "key", "value")]))
            block.out.weight.copy_(t(attn["out"]["kernel"]).reshape(C, C).T)
            block.out.bias.copy_(t(attn["out"]["bias"]))
            for ours, theirs in ((block.ln1, p["ln1"]), (block.ln2, p["ln2"])):
                ours.weight.copy_(t(theirs["scale"]))
                ours.bias.copy_(t(theirs["bias"]))
            for ours, theirs in ((block.fc, p["ffwd"]["fc"]), (block.proj, p["ffwd"]["proj"])):
                ours.weight.copy_(t(theirs["kernel"]).T)
                ours.bias.copy_(t(theirs["bias"]))
        model.ln_f.weight.copy_(t(params["ln_f"]["scale"]))
        model.ln_f.bias.copy_(t(params["ln_f"]["bias"]))
        model.lm_head.weight.copy_(t(params["lm_head"]["kernel"]).T)
        model.lm_head.bias.copy_(t(params["lm_head"]["bias"]))
    return model


def loss_of(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def make_optimizer(model: MiniGPT, train: dict) -> torch.optim.AdamW:
    # Decay by kind, as jaxgpt's mask does by name: the kernels and embeddings, not the biases or LayerNorm.
    decayed = [p for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding)) for p in [m.weight]]
    ids = {id(p) for p in decayed}
    spared = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decayed, "weight_decay": train["weight_decay"]}, {"params": spared, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train["learning_rate"], betas=(0.9, train["beta2"]), eps=1e-8,
                             foreach=True)


def build(config: dict, mode: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MiniGPT(**config["model"])
    step_loss = torch.compile(loss_of) if mode == "compile" else loss_of
    return model, make_optimizer(model, config["train"]), step_loss


def train_step(model, optimizer, step_loss, x, y, step: int, train: dict) -> torch.Tensor:
    for group in optimizer.param_groups:
        group["lr"] = recipe.learning_rate(step, train)
    loss = step_loss(model, x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if train["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
    optimizer.step()
    return loss


def batches(train_ids: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator):
    data = torch.from_numpy(train_ids.astype(np.int64))
    offsets = torch.arange(block_size + 1)
    while True:
        starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        windows = data[starts[:, None] + offsets]  # (B, T + 1), one gather
        yield windows[:, :-1], windows[:, 1:]


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def throughput(config: dict, mode: str, calls: int, steps_per_call: int) -> dict:
    """Tokens per second of training on random tokens: the first step (compiling, for torch.compile), then
    `calls` timed groups of steps; the median group."""
    B, T = config["train"]["batch_size"], config["model"]["block_size"]
    model, optimizer, step_loss = build(config, mode)
    model.train()
    fake = np.random.default_rng(0).integers(0, config["model"]["vocab_size"], 200_000).astype(np.int32)
    stream = batches(fake, B, T, torch.Generator().manual_seed(0))
    started = time.perf_counter()
    train_step(model, optimizer, step_loss, *next(stream), 0, config["train"])
    first = time.perf_counter() - started
    times = []
    for c in range(calls):
        started = time.perf_counter()
        for s in range(steps_per_call):
            loss = train_step(model, optimizer, step_loss, *next(stream), 1 + c * steps_per_call + s, config["train"])
        float(loss.detach())
        times.append((time.perf_counter() - started) / steps_per_call)
    median = sorted(times)[len(times) // 2]
    import resource

    return {"impl": f"torch-{mode}", "first_step_s": round(first, 2), "step_s": round(median, 5),
            "step_s_all": [round(t, 5) for t in times], "tokens_per_second": round(B * T / median),
            "n_params": count_params(model), "peak_rss_mib": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def race(config: dict, mode: str, data: str, target: float, eval_every: int) -> dict:
    """Train until the fixed evaluation reaches `target` or max_iters ends; every evaluation is a JSON line
    stamped with time.time(), which the parent compares with the moment it started this process."""
    train = config["train"]
    B, T = train["batch_size"], config["model"]["block_size"]
    train_ids, eval_ids, vocab = recipe.load_corpus(data)
    assert vocab == config["model"]["vocab_size"], (vocab, config["model"]["vocab_size"])
    ex, ey = (torch.from_numpy(a.astype(np.int64)) for a in recipe.eval_windows(eval_ids, T))
    model, optimizer, step_loss = build(config, mode, seed=train["seed"])
    stream = batches(train_ids, B, T, torch.Generator().manual_seed(train["seed"]))
    started = time.perf_counter()
    model.train()
    train_step(model, optimizer, step_loss, *next(stream), 0, train)  # torch.compile compiles here
    first_step_seconds = time.perf_counter() - started
    reached, step, eval_loss = False, 1, float("nan")
    train_seconds = 0.0
    while step < train["max_iters"]:
        model.train()
        started = time.perf_counter()
        for _ in range(min(eval_every - step % eval_every, train["max_iters"] - step)):
            train_step(model, optimizer, step_loss, *next(stream), step, train)
            step += 1
        train_seconds += time.perf_counter() - started
        model.eval()
        with torch.no_grad():
            eval_loss = float(loss_of(model, ex, ey))
        _emit({"step": step, "eval_loss": round(eval_loss, 4), "time": time.time(),
               "train_seconds": round(train_seconds, 2)})
        if eval_loss <= target:
            reached = True
            break
    return {"impl": f"torch-{mode}", "reached": reached, "step": step, "eval_loss": round(eval_loss, 4),
            "time": time.time(), "first_step_seconds": round(first_step_seconds, 2),
            "tokens_per_second": round((step - 1) * B * T / train_seconds),
            "n_params": count_params(model), "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["throughput", "race"])
    parser.add_argument("--config", required=True, help="the jaxgpt Config as JSON (or @file)")
    parser.add_argument("--mode", choices=["eager", "compile"], default="eager")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--steps-per-call", type=int, default=10)
    parser.add_argument("--data", default=str(recipe.DEFAULT_CORPUS))
    parser.add_argument("--target", type=float, default=1.89)
    parser.add_argument("--eval-every", type=int, default=100)
    args = parser.parse_args(argv)
    config = recipe.read_json_arg(args.config)
    if args.what == "throughput":
        _emit(throughput(config, args.mode, args.calls, args.steps_per_call))
    else:
        _emit(race(config, args.mode, args.data, args.target, args.eval_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
