"""Training: the step and its jitted builder, the optimizer, the plan, the workdir, the loop."""
