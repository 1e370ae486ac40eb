"""Joining a multi-process run with jax.distributed.

Explicit flags (coordinator address, process count and id) work anywhere,
CPU processes on one machine included; without them, SLURM jobs with several
tasks and multi-host TPU VM slices are detected and initialized automatically.
"""

from __future__ import annotations

import os

import jax


def _cluster_detected() -> bool:
  """Whether jax.distributed can read the run's processes by itself: a SLURM job of several
  tasks, or a multi-host TPU VM slice."""
  return ((int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ)
          or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> bool:
  """Calls jax.distributed.initialize when the run spans processes; returns whether it did.
  Must run before anything touches a JAX backend."""
  explicit = bool(coordinator_address)
  if explicit and (num_processes < 1 or not 0 <= process_id < num_processes):
    raise ValueError(f"--coordinator_address needs --num_processes >= 1 and "
                     f"0 <= --process_id < num_processes; got {num_processes}, {process_id}")
  if not explicit and not _cluster_detected():
    return False
  # CPU processes exchange collectives over gloo; accelerators use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()
  return True
