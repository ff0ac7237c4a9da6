"""Image formation: a Gaussian fluorescence PSF, and bright-field by multislice beam propagation.

Bright-field of unstained cells is mostly *phase* contrast made visible by defocus: a plane wave
(several, tilted within the condenser aperture, for partial coherence) is propagated slice by slice
through the refractive-index volume (split-step angular spectrum), and the exit field is refocused
to each focal plane of the stack through the objective pupil. In focus, a phase object nearly
vanishes; above and below it shows as bright/dark halos that change with z, as in real stacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft


@dataclass(frozen=True)
class Optics:
    """Microscope parameters (defaults: a 100x/1.25 water objective, as for the Allen hiPSC data)."""

    objective_na: float = 1.25
    condenser_na: float = 0.35
    immersion_index: float = 1.337
    brightfield_wavelength: float = 0.55  # µm
    emission_wavelength: float = 0.52  # µm
    psf_broadening: float = 1.5  # spinning-disk images are blurrier than the ideal widefield Gaussian

    def psf_sigma(self) -> tuple[float, float, float]:
        """Gaussian PSF standard deviations (z, y, x) in µm (Zhang et al. 2007 widefield fit)."""
        lat = 0.21 * self.emission_wavelength / self.objective_na * self.psf_broadening
        ax = 0.66 * self.emission_wavelength * self.immersion_index / self.objective_na**2 * self.psf_broadening
        return ax, lat, lat


def _fft_size(n: int) -> int:
    return scipy.fft.next_fast_len(n, real=False)


@dataclass
class BrightfieldSimulator:
    """Propagate through a sample given slab by slab and image any focal plane.

    ``render_slab(z_positions, y0, x0, ny, nx)`` returns (delta_n, absorption) on the padded grid.
    """

    optics: Optics
    voxel_yx: tuple[float, float]
    shape_yx: tuple[int, int]
    pad_um: float = 8.0
    n_angles: int = 7

    def __post_init__(self) -> None:
        dy, dx = self.voxel_yx
        self.pad = (int(np.ceil(self.pad_um / dy)), int(np.ceil(self.pad_um / dx)))
        self.grid = (_fft_size(self.shape_yx[0] + 2 * self.pad[0]), _fft_size(self.shape_yx[1] + 2 * self.pad[1]))
        ky = 2 * np.pi * scipy.fft.fftfreq(self.grid[0], d=dy)
        kx = 2 * np.pi * scipy.fft.fftfreq(self.grid[1], d=dx)
        self.k0 = 2 * np.pi / self.optics.brightfield_wavelength
        kmed = self.k0 * self.optics.immersion_index
        k2 = ky[:, None] ** 2 + kx[None, :] ** 2
        self.kz = np.sqrt((kmed**2 - k2).astype(np.complex128)).astype(np.complex64)  # imaginary where evanescent: decays
        self.pupil = k2 <= (self.k0 * self.optics.objective_na) ** 2
        self.taper = np.outer(_taper(self.grid[0], self.pad[0]), _taper(self.grid[1], self.pad[1])).astype(np.float32)
        self.illumination = self._angles(ky, kx)

    def _angles(self, ky: np.ndarray, kx: np.ndarray) -> list[tuple[float, float]]:
        """On-axis plus a ring of tilts inside the condenser NA, snapped to the FFT grid."""
        angles = [(0.0, 0.0)]
        kc = 0.7 * self.k0 * self.optics.condenser_na
        for j in range(self.n_angles - 1):
            phi = 2 * np.pi * j / (self.n_angles - 1)
            sy = ky[np.argmin(np.abs(ky - kc * np.sin(phi)))]
            sx = kx[np.argmin(np.abs(kx - kc * np.cos(phi)))]
            angles.append((float(sy), float(sx)))
        return angles

    def exit_fields(
        self,
        render_slab: Callable[[np.ndarray, float, float, int, int], tuple[np.ndarray, np.ndarray]],
        origin_yx: tuple[float, float],
        z_range: tuple[float, float],
        dz: float,
        slab: int = 4,
    ) -> tuple[np.ndarray, float]:
        """Fields (angles, Y, X) leaving the top of the sample, and the z (µm) where they leave it."""
        dy, dx = self.voxel_yx
        y0 = origin_yx[0] - self.pad[0] * dy
        x0 = origin_yx[1] - self.pad[1] * dx
        yy = np.arange(self.grid[0])[:, None] * dy
        xx = np.arange(self.grid[1])[None, :] * dx
        fields = np.empty((len(self.illumination), *self.grid), dtype=np.complex64)
        for a, (sy, sx) in enumerate(self.illumination):
            fields[a] = np.exp(1j * (sy * yy + sx * xx))
        step = np.exp(1j * self.kz * dz).astype(np.complex64)
        zs = np.arange(z_range[0], z_range[1], dz)
        for start in range(0, len(zs), slab):
            zslab = zs[start : start + slab]
            delta, absorption = render_slab(zslab, y0, x0, *self.grid)
            for plane in range(len(zslab)):
                phase = np.exp((1j * self.k0 * dz) * delta[plane] - (self.k0 * dz) * absorption[plane]).astype(np.complex64)
                phase *= self.taper
                for a in range(len(fields)):  # one angle at a time keeps temporaries to one plane
                    spectrum = scipy.fft.fft2(fields[a] * phase, workers=-1)
                    spectrum *= step
                    fields[a] = scipy.fft.ifft2(spectrum, workers=-1)
        return fields, float(zs[-1] + dz) if len(zs) else float(z_range[0])

    def focal_planes(self, fields: np.ndarray, exit_z: float, focus_z: Sequence[float]) -> Iterator[np.ndarray]:
        """Bright-field intensity (Y, X), 1.0 = empty field, for each focal plane, cropped to the image.

        ``fields`` is consumed: it is overwritten in place by its pupil-filtered spectrum (saves a copy
        of the largest array here).
        """
        for a in range(len(fields)):
            fields[a] = scipy.fft.fft2(fields[a], workers=-1) * self.pupil
        crop = (slice(self.pad[0], self.pad[0] + self.shape_yx[0]), slice(self.pad[1], self.pad[1] + self.shape_yx[1]))
        for z in focus_z:
            # Only propagating waves pass the pupil; masking avoids exp() overflow of evanescent terms.
            defocus = (np.exp(1j * self.kz.real * (z - exit_z)) * self.pupil).astype(np.complex64)
            intensity = np.zeros(self.shape_yx, dtype=np.float32)
            for a in range(len(fields)):
                image = scipy.fft.ifft2(fields[a] * defocus, workers=-1)[crop]
                intensity += image.real**2 + image.imag**2
            yield intensity / len(fields)


def _taper(n: int, pad: int) -> np.ndarray:
    """Absorbing boundary: 1 in the middle, falling smoothly to 0 over the outer half of the padding."""
    w = np.ones(n)
    ramp = max(pad // 2, 1)
    edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    w[:ramp] = edge
    w[n - ramp :] = edge[::-1]
    return w ** (1 / 8)
