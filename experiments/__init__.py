"""Registered experiments and sweeps, one module per family (see jaxlm.registry)."""
