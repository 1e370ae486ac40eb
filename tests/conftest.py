"""Test setup: 8 fake CPU devices, so sharded meshes run on any machine.

Must run before jax is imported anywhere in the test process.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
