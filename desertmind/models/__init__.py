"""Segmentation networks behind one contract, built by name (see :mod:`.registry`)."""

from desertmind.models.network import SegmentationNetwork
from desertmind.models.registry import ARCHITECTURES, build_network

__all__ = ["ARCHITECTURES", "SegmentationNetwork", "build_network"]
