"""The U-Net (:mod:`.unet`), model checkpoints with their model cards (:mod:`.checkpoint`), and the
importer for pytorch_fnet models (:mod:`.pytorch_fnet`)."""

from chunked_fnet.model.checkpoint import (
    CheckpointError,
    InputSpec,
    ModelCard,
    Normalization,
    Provenance,
    checkpoint_hash,
    current_versions,
    load_card,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
    utc_now,
)
from chunked_fnet.model.pytorch_fnet import (
    MissingMetadataError,
    PytorchFnetFile,
    import_pytorch_fnet,
    read_pytorch_fnet,
)
from chunked_fnet.model.unet import FnetUNet, UNetConfig, count_flops_per_voxel, count_parameters

__all__ = [
    "CheckpointError",
    "FnetUNet",
    "InputSpec",
    "MissingMetadataError",
    "ModelCard",
    "Normalization",
    "Provenance",
    "PytorchFnetFile",
    "UNetConfig",
    "checkpoint_hash",
    "count_flops_per_voxel",
    "count_parameters",
    "current_versions",
    "import_pytorch_fnet",
    "load_card",
    "load_checkpoint",
    "load_tensors",
    "read_pytorch_fnet",
    "save_checkpoint",
    "save_tensors",
    "utc_now",
]
