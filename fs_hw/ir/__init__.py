"""The hardware-neutral intermediate representation of an FS network."""

from fs_hw.ir.code import FSCode, Provenance
from fs_hw.ir.io import FORMAT_VERSION, load_network, save_network
from fs_hw.ir.network import Network
from fs_hw.ir.nodes import (
    NODE_TYPES,
    Add,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    FSActivation,
    Input,
    Node,
    Readout,
)

__all__ = [
    "FORMAT_VERSION", "NODE_TYPES", "Add", "AvgPool2d", "Conv2d", "Dense", "Flatten", "FSActivation",
    "FSCode", "Input", "Network", "Node", "Provenance", "Readout", "load_network", "save_network",
]
