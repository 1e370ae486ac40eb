"""Pallas kernels, each with a pure-jnp reference elsewhere and a custom VJP."""
