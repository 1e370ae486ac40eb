"""glibc malloc settings under which XLA's CPU runtime reuses its step buffers.

XLA's CPU client mallocs the temporaries of every execution (one block: 443 MB
for the benchmark's 6 x 256 train step) and frees them when it ends. glibc
serves a block that large with a fresh mmap (the runtime's threads each have an
arena of their own, and a thread arena cannot hold it) and unmaps it on free, so
every step faults in and zeroes every page again: 158k page faults and 0.27 s of
kernel time in a 1.4 s step, measured on the 2-core dev VM (docs/benchmarks.md,
CPU section). With one arena, no mmap and no trimming, the freed block stays in
the heap and the next step reuses it. The price: the process keeps its peak
heap instead of returning freed memory to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from jaxlm import hardware

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8


def reuse_freed_memory() -> bool:
  """Makes malloc keep and reuse freed memory when JAX runs on CPU; returns whether it did.

  Call it before the first JAX computation: a thread that already has its own
  arena keeps it. It does nothing outside glibc, where accelerator plugins are
  installed (the step's buffers then live on the device), or where
  GLIBC_TUNABLES already sets malloc parameters.
  """
  if (platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
      or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or not hardware.cpu_only()):
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  # Trim threshold -1: glibc takes it as a size_t, SIZE_MAX, so the heap is never
  # trimmed. The largest int, 2**31 - 1, still trimmed (and the next step faulted
  # in again) the >2 GB of temporaries that the 8 x 512 benchmark step frees.
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1),
              (_M_TOP_PAD, 64 << 20))  # grow the heap 64 MB at a time
  return all(libc.mallopt(k, v) == 1 for k, v in settings)
