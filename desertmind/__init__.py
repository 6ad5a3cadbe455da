"""desertmind: semantic segmentation of off-road desert scenes with PyTorch Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("desertmind")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
