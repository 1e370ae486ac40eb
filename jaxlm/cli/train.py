"""Command line of training (`python -m jaxlm.main`): train a registered experiment.

  python -m jaxlm.main --experiment=shakespeare [--workdir=DIR] [--set key=value]...
      [--resume | --overwrite]
  python -m jaxlm.main --list

Rerunning a command with the same --workdir resumes it from its latest complete
checkpoint; SIGTERM or SIGINT saves one and exits 0.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import jax
from absl import app, flags

from jaxlm import cli, distributed, exit_status, registry
from jaxlm import config_io
from jaxlm.cli import fail
from jaxlm.run import checkpoint, files
from jaxlm.train import loop, plan

flags.DEFINE_string("experiment", None, "Name of a registered experiment (see --list).")
flags.DEFINE_multi_string("set", [], "Config override key=value, e.g. model.d_model=256.")
flags.DEFINE_string("workdir", None, "Run directory; default runs/<experiment>/<timestamp>. "
                    "An existing run directory is resumed.")
flags.DEFINE_bool("resume", False, "Continue the run in --workdir although the config differs "
                  "(not in model.*), e.g. a lower optim.lr after a non-finite loss.")
flags.DEFINE_bool("overwrite", False, "Start over in --workdir, moving a run there to "
                  "WORKDIR.old-<time>.")
flags.DEFINE_bool("list", False, "List registered experiments and exit.")
flags.DEFINE_bool("dry_run", False, "Print the plan (params, memory, FLOPs, communication, "
                  "step time) and exit.")
flags.DEFINE_string("topology", "", "With --dry_run: compile the step for this TPU slice "
                    "(v5p-256, v5e-64, v6e-256, v4-128, or v5p:4x4x8) on this machine, without "
                    "it (needs libtpu: pip install 'jaxlm[topology]').")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 in a multi-process "
                    "run (automatic under SLURM and on TPU VMs).")
flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run.")
flags.DEFINE_integer("process_id", -1, "This process's index in a multi-process run.")
flags.DEFINE_string("restart_record", "", "A launcher's records (a JSON list of objects) of "
                    "the faults this run restarts after, for a workdir only the run can write "
                    "(launch/tpu_vm.py): process 0 adds those not there yet to "
                    "WORKDIR/restarts.jsonl.")
FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv, "use --set key=value for config overrides", verbosity="warning")
  if FLAGS.list:
    for name, line in registry.names().items():
      print(f"{name:24s} {line}")
    return
  if not FLAGS.experiment:
    fail("--experiment is required (--list shows the registered ones)")
  if FLAGS.topology:
    if not FLAGS.dry_run:
      fail(f"--topology={FLAGS.topology} only plans a run; add --dry_run")
    # The slice's devices are compile-only; this process computes nothing, and an installed
    # libtpu must not try to open a TPU here.
    jax.config.update("jax_platforms", "cpu")
  with cli.failing(ValueError, KeyError, FileNotFoundError):
    if distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                              FLAGS.process_id) and not FLAGS.workdir:
      fail("a multi-process run needs an explicit --workdir shared by all processes")
    config = config_io.apply_overrides(registry.experiment(FLAGS.experiment), FLAGS.set)
    if FLAGS.dry_run:
      print(plan.describe(config, FLAGS.topology or None))
      return
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = FLAGS.workdir or os.path.join("runs", FLAGS.experiment, stamp)
    if FLAGS.resume and FLAGS.overwrite:
      fail("--resume and --overwrite exclude each other; expected at most one")
    mode = "resume" if FLAGS.resume else "overwrite" if FLAGS.overwrite else "auto"
    records = _restart_records(FLAGS.restart_record)
    run = loop.setup(config, workdir, mode)
  if jax.process_index() == 0:  # an attempt that died before this point left its record out
    files.add_restarts(workdir, records)
  try:
    loop.run(run)
  except (loop.NonFiniteError, checkpoint.StorageError) as e:  # not bad input: one readable
    print(f"error: {e}", file=sys.stderr, flush=True)  # line, and a status of its own
    sys.exit(exit_status.NONFINITE if isinstance(e, loop.NonFiniteError) else exit_status.STORAGE)


def _restart_records(text: str) -> list[dict]:
  """--restart_record's objects ([] if empty); ValueError naming the flag if not a list of
  them."""
  if not text:
    return []
  try:
    records = json.loads(text)
  except ValueError:
    records = None
  if not (isinstance(records, list) and all(isinstance(r, dict) for r in records)):
    raise ValueError(f"--restart_record={text!r} is invalid: expected a JSON list of objects, "
                     'e.g. \'[{"ended": "exit status 1"}]\'')
  return records


def entry():
  app.run(main)

