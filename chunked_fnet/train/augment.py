"""Training-patch augmentation by the symmetries of the lateral (y, x) plane.

A bright-field or phase-contrast microscope with symmetric illumination images a sample flipped or turned
by 90 degrees about the optical axis as the same picture flipped or turned, so such a patch pair is as good a
training example as the one drawn. Paired data are scarce (a plate's few fields, one stack of a few nuclei),
and these symmetries multiply the distinct examples by up to 8 at no cost. z is never flipped: defocus above
and below the focal plane has opposite contrast in bright-field, so a z-flipped input is not a real image.
DIC has a shear direction and is not symmetric: train it with ``augment: none``.

The paper trains without augmentation, so ``none`` is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

#: ``none``: the patch as drawn (the paper's); ``flips``: y and x each flipped with probability 1/2 (4 symmetries);
#: ``dihedral``: also y and x swapped with probability 1/2, all 8 symmetries of the square (needs a patch and a
#: model voxel that are square in y, x).
Augmentation = Literal["none", "flips", "dihedral"]
#: Its values, for command lines' choices.
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)


@dataclass(frozen=True)
class PlaneSymmetry:
    """One symmetry of the (y, x) plane: y and x swapped if ``swap``, then y and/or x reversed."""

    swap: bool = False
    flip_y: bool = False
    flip_x: bool = False

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The array (..., z, y, x) transformed over its last two axes (a fresh contiguous array; the identity
        hands the array back as it is)."""
        if not (self.swap or self.flip_y or self.flip_x):
            return array
        if self.swap:
            array = np.swapaxes(array, -1, -2)
        if self.flip_y:
            array = array[..., ::-1, :]
        if self.flip_x:
            array = array[..., ::-1]
        return np.ascontiguousarray(array)


IDENTITY = PlaneSymmetry()


def draw_symmetry(rng: np.random.Generator, augmentation: Augmentation) -> PlaneSymmetry:
    """A uniformly drawn symmetry of the kind ``augmentation`` allows; ``none`` draws nothing from ``rng``, so
    the patches of a run without augmentation are those it drew before augmentation existed."""
    if augmentation == "none":
        return IDENTITY
    flip_y, flip_x = (bool(b) for b in rng.integers(0, 2, size=2))
    swap = augmentation == "dihedral" and bool(rng.integers(0, 2))
    return PlaneSymmetry(swap, flip_y, flip_x)


def check_augmentation(augmentation: Augmentation, patch_shape: tuple[int, int, int], voxel_size: tuple[float, float, float]) -> None:
    """Refuse ``dihedral`` where swapping y and x would change the patch's shape or its physical scale."""
    if augmentation != "dihedral":
        return
    if patch_shape[1] != patch_shape[2]:
        raise ValueError(f"augment: dihedral swaps y and x, so the patch must be square in y, x; got patch_shape {tuple(patch_shape)} (z, y, x): use flips")
    if voxel_size[1] != voxel_size[2]:
        raise ValueError(f"augment: dihedral swaps y and x, so the model voxel must be square in y, x; got voxel_size {tuple(voxel_size)} µm (z, y, x): use flips")
