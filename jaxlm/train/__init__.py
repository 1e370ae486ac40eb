"""Training: the step and its jitted, sharded builder, the optimizer, the plan, the loop.

step.py (TrainState, train_step, Trainer), optim.py (AdamW and schedules),
plan.py (--dry_run, compiling ahead, memory), workdir.py (start, resume or
move a run), warm_start.py (params from another run), preemption.py
(SIGTERM), loop.py (setup and run).
"""
