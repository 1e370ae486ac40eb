import platform
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from jaxlm import malloc
    np._core.multiarray._set_madvise_hugepage(False)  # 4 kB pages, as XLA's buffers get
    applied = malloc.reuse_freed_memory() if sys.argv[1] == "reuse" else False
    np.ones(64 << 20, np.float32)  # first use of a 256 MB block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
      np.ones(64 << 20, np.float32)  # freed at once, like a step's temporaries
    small = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    big = -1
    if applied:  # 2.2 GB, past the largest int trim threshold (glibc's default maps it afresh)
      np.ones(560 << 20, np.float32)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      np.ones(560 << 20, np.float32)
      big = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(applied, small, big)
""")


def _faults(mode):
  out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True,
                       check=True, env={"PYTHONPATH": "."}).stdout.split()
  return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_blocks_are_reused_without_page_faults():
  applied, reused, reused_big = _faults("reuse")
  _, default, _ = _faults("default")
  assert applied
  assert default > 3 * 60_000  # glibc's default: every 256 MB block is mapped afresh
  assert reused < 1_000 and 0 <= reused_big < 1_000
