"""fs-hw: few-spike (FS) networks on neuromorphic hardware."""

__version__ = "0.1.0"
