"""The training tool behind `jaxgpt train` and `jaxgpt sample`: the named configurations, the training loop
(prepare, fit, save) and checkpoints."""
