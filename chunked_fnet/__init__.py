"""chunked_fnet: label-free prediction of 3D fluorescence from transmitted light, at scale.

The package is laid out by job, one subpackage each:

* :mod:`chunked_fnet.io`: OME-Zarr (NGFF 0.4/0.5) reading and writing, TIFF conversion, units.
* :mod:`chunked_fnet.synth`: a synthetic, physically motivated paired dataset (bright-field + fluorescence).
* :mod:`chunked_fnet.preprocess`: whole-frame z-scoring and resampling onto the model grid, shared by training and prediction.
* :mod:`chunked_fnet.model`: the fnet U-Net, safetensors checkpoints with model cards, the pytorch_fnet importer.
* :mod:`chunked_fnet.train`: manifests, patch datasets and the resumable trainer.
* :mod:`chunked_fnet.sliding_window`: the sliding-window grid, blending and the model runner.
* :mod:`chunked_fnet.predict`: chunked ensemble prediction on a dask cluster (options, job, schedule, run, ledger).
* :mod:`chunked_fnet.evaluate`: normalised error, Pearson r, SSIM/PSNR/NRMSE, FSC resolution, evaluation reports, seam checks.
* :mod:`chunked_fnet.viz`: the paper's figures, a local store server and neuroglancer views.

Beside them: the command line (:mod:`chunked_fnet.cli`), configs (:mod:`chunked_fnet.config`), the
cluster specs (:mod:`chunked_fnet.cluster`), the device and autocast choice (:mod:`chunked_fnet.device`)
and float64 moments (:mod:`chunked_fnet.moments`).
"""

from chunked_fnet.io.reader import open_image, select_channels
from chunked_fnet.io.writer import build_pyramid, create_image, write_region

__all__ = ["open_image", "select_channels", "create_image", "write_region", "build_pyramid", "PredictOptions", "Predictor"]
__version__ = "0.1.0"

#: Names of the prediction API at the top level, imported on first use: importing the package must stay
#: light (a dask scheduler imports ``chunked_fnet.run_watch``, and with it this module, but never torch).
#: ``predict`` itself is not among them: that name is the subpackage's.
_LAZY = {"Predictor": "chunked_fnet.predict", "PredictOptions": "chunked_fnet.predict"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chunked_fnet' has no attribute {name!r}")
