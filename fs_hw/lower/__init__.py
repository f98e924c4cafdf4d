"""What every spiking chip needs, written once and hardware-neutral (no SDK imports).

* :mod:`fs_hw.lower.maps`: each receiver's input as exact integer linear maps of the
  spiking nodes it listens to (convolutions kept as kernels, a pooling before a conv
  folded into one strided kernel, per-step weights as one map per source step);
* :mod:`fs_hw.lower.ranges`: the range analysis of every partial sum of a time-unrolled
  receiver, over every spike pattern or measured on data and widened;
* :mod:`fs_hw.lower.partition`: splitting a layer over cores along channels and pixels
  against a target's per-core limits, with the reason for the split;
* :mod:`fs_hw.lower.schedule`: the stage schedule and the relays that align skips;
* :mod:`fs_hw.lower.limits`: a target's limits as data and the one checker that turns a
  violation into a "layer, limit, numbers" refusal;
* :mod:`fs_hw.lower.config`: a target's settings as a dataclass, parsed and validated in
  one place.
"""
