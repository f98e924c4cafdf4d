"""Trained ANN model zoo for FS conversion (Fashion-MNIST, weights as plain npz)."""

from fs_hw.zoo.models import ALLOWED_LEAF_TYPES, ZOO, build, check_architecture, load, metadata, save

__all__ = ["ALLOWED_LEAF_TYPES", "ZOO", "build", "check_architecture", "load", "metadata", "save"]
