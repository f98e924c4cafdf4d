"""What every spiking chip needs, written once and hardware-neutral (no SDK imports).

* :mod:`fs_hw.lower.maps`: each receiver's input as exact integer linear maps of the
  spiking nodes it listens to (convolutions kept as kernels where they read a spiking
  node directly; other chains multiplied out);
* :mod:`fs_hw.lower.limits`: a target's limits as data and the one checker that turns a
  violation into a "layer, limit, numbers" refusal;
* :mod:`fs_hw.lower.config`: a target's settings as a dataclass, parsed and validated in
  one place.
"""
