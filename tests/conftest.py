"""Test setup: 8 fake CPU devices, so sharded meshes run on any machine.

Must run before jax is imported anywhere in the test process. Compiled programs
go to a persistent compilation cache in a temporary directory, shared by the
tests and the processes they start (same env), deleted at exit: many tests
compile the same small programs (a resumed run, the same tiny model in
another test), and reusing them took 22-30% off test files measured on 2 cores.
XLA's backend optimizes at level 0 here: compiling dominates these tiny tests
(7 s for a tiny model's train step at the default level, 3.8 s at 0), so the
whole suite took 541 s instead of 639 s on the 2-core dev VM. XLA's CPU fusion
emitters (its newer code generator) and parallel code generation are off too:
a tiny model's step compiled in 0.8-1.0 s instead of 1.9-2.4 s. Tests that start
processes give them `xla_flags(devices)`, so those compile fast too.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile

FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                "--xla_cpu_parallel_codegen_split_count=1")


def xla_flags(devices: int | None = None) -> str:
  """XLA_FLAGS for a process a test starts: fast compiles, and `devices` fake CPU devices."""
  return FAST_COMPILE + (f" --xla_force_host_platform_device_count={devices}" if devices else "")


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
# libtpu (the topology extra) is here only to compile for TPU slices this machine lacks
# (tests/test_topology.py); no test runs on a TPU, and JAX must not try to open one.
if importlib.util.find_spec("libtpu") is not None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jaxlm_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
