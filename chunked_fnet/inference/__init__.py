"""Seam-free sliding-window inference: a global patch grid, smooth blending, and predictors for a
whole volume in memory or one chunk at a time (the two give the same voxels)."""

from chunked_fnet.inference.sliding_window import (
    fit_patch,
    make_grid,
    padded_reader,
    predict_chunk,
    predict_owned,
    predict_volume,
    tta_flip_sets,
)
from chunked_fnet.inference.tiling import (
    PatchGrid,
    blend_region,
    blend_weights,
    chunk_regions,
    finish_region,
    normalize_region,
    patch_starts,
    unbatched,
    weight_sum,
)

__all__ = [
    "PatchGrid",
    "blend_region",
    "blend_weights",
    "chunk_regions",
    "finish_region",
    "fit_patch",
    "make_grid",
    "normalize_region",
    "padded_reader",
    "patch_starts",
    "predict_chunk",
    "predict_owned",
    "predict_volume",
    "tta_flip_sets",
    "unbatched",
    "weight_sum",
]
