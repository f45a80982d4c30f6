"""The JAX GPT challenge's harness. At the top, the learner's library (data, tokenizer, bigram, sampling,
plots, the model contract, settings, the notebook's milestone helpers) and the command line; below it the
training tool (jaxgpt.training), the grader (jaxgpt.grader) and the notebook builder (jaxgpt.notebook).
In the notebook, `check(n)` grades task n and `hint(n)` shows its next hint."""

from jaxgpt.grader.check_cell import check
from jaxgpt.grader.hints import hint

__all__ = ["check", "hint"]
