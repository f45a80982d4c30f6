"""Harness for the JAX GPT challenge."""
