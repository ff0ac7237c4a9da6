"""chunked_fnet: label-free prediction of 3D fluorescence from transmitted light, at scale.

The package is laid out by job: :mod:`chunked_fnet.io` (OME-Zarr and TIFF), :mod:`chunked_fnet.synth`
(a synthetic, physically motivated paired dataset), and the command line in :mod:`chunked_fnet.cli`.
"""

from chunked_fnet.io.reader import open_image, select_channels
from chunked_fnet.io.writer import build_pyramid, create_image, write_region

__all__ = ["open_image", "select_channels", "create_image", "write_region", "build_pyramid"]
__version__ = "0.1.0"
