"""jaxlm: a JAX research framework for training language models."""
