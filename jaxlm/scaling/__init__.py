"""Scaling laws: FLOP accounting, sweep specs, collecting runs, Chinchilla fits, plots."""
