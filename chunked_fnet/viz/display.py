"""Display ranges from the data itself, shared by the figures and the neuroglancer view.

A display range stored in a file (omero ``window``) is often the dtype's whole range (a converted TIFF) or a
fixed guess (predictions: -1..4 in z-score units), and a weakly predicted structure then paints the
whole field; percentiles of what is shown give a first view in which every structure is visible.
"""

from __future__ import annotations

import numpy as np

#: Predicted structures: from the median (the background of a z-scored prediction) to near the top,
#: so that merged colours add up only where a structure is predicted.
STRUCTURE_PERCENTILES = (50.0, 99.8)
#: Transmitted light and single panels: almost the full range, a few outliers clipped.
FULL_PERCENTILES = (0.5, 99.8)


def percentile_range(values: np.ndarray, percentiles: tuple[float, float] = FULL_PERCENTILES) -> tuple[float, float]:
    """(low, high) display limits at two percentiles of the finite values; never an empty range."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)
