"""Harness for the JAX GPT challenge: data, tokenizer, training utilities, grading, command line and
notebook build. In the notebook, `check(n)` grades task n and `hint(n)` shows its next hint."""

from jaxgpt.grading import check
from jaxgpt.hints import hint

__all__ = ["check", "hint"]
