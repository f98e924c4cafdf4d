"""fs-hw BrainScaleS-2 target: a timed-event export in the chip's units, proven by a replayer reading only it."""
