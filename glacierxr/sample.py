"""Embedded synthetic sample: Landsat C2 L2-like glacier scenes (COGs + STAC catalog) with truth.

:func:`write_catalog` renders a glacierised mountain valley, seen by Landsat-8 (and Landsat-9 from
late 2021) every 16 days, into real Cloud-Optimized GeoTIFFs described by a self-contained static
STAC catalog whose items look like Planetary Computer ``landsat-c2-l2`` items (asset keys
``green``, ``swir16`` and ``qa_pixel``, ``raster:bands`` scale/offset, ``proj:*`` fields,
``classification:bitfields``). :func:`open_truth` opens the ground truth written beside it.

Everything is analytic, so the truth is exact:

* **Terrain.** A straight valley whose axis runs through the image centre at a seed-dependent
  angle. ``s`` is the along-flow coordinate (pixels, increasing downstream, 0 at the image
  centre) and ``n`` the across-flow one (truth ``along_flow`` / ``across_flow``, in metres). The
  valley floor descends along ``s``; the walls rise with ``|n|`` and carry spurs and gullies
  (a band-limited random field favouring ridges across the valley); the ground is lit by the
  sun of the acquisition (hill shading with sky light, from the elevation model).
* **Static ground, exactly shifted.** Rock albedo, terrain roughness, snow texture and the
  irregular snow-line edge are random fields on a torus, i.e. trigonometric polynomials; a
  misregistered scene samples them at ``(col - shift_x, row - shift_y)`` exactly, through a
  phase ramp in the Fourier domain.
* **Ice flow.** Inside the glacier (``|n| < half_width``) ice moves along the valley axis with
  speed ``V(n) = V_max (0.5 + 0.5 (1 - (n / half_width)**2))``: basal sliding plus a parabolic
  cross-valley profile, 700–1000 m/yr on the centre line (about 1–1.5 px per 16 days at 30 m),
  zero off the ice. Speed depends only on ``n``, which is constant along the straight flow
  lines, so a texture evaluated at ``p - velocity * (t - t_k)`` moves by exactly
  ``velocity * dt`` between any two dates. The ice texture (transverse crevasses and debris /
  ogives: sums of plane waves with wavelengths of 5–20 px, visible in green, SWIR and NDSI) is
  a cross-fade of such advected textures born every half year (``t_k``), so the pattern renews
  itself slowly and the shear of the flow never folds it below the pixel size. Lateral and
  medial moraines (darker stripes along the flow) darken both bands alike.
  ``flow="fast"`` makes it a tidewater-like tongue: 90 % basal sliding, 12 px per 16 days on the
  centre line (the texture renews itself faster so that the shear never folds it).
  ``glacier_fraction`` widens the glacier to cover a given share of the scene.
* **Retreat.** The terminus (a rounded tongue) retreats up-valley at a rate drawn per year
  (constant with ``dynamics="cycle"``), and with ``calving=True`` steps back 300 m at random
  calving events; a small proglacial lake lies in front of it (flagged water in QA_PIXEL
  unless snow-covered).
* **Seasonal snow.** Ground above a snow line elevation is snow-covered; the snow line follows a
  smooth annual cycle (highest in early August) plus monthly anomalies that persist for months
  (:class:`SnowProcess`; none with ``dynamics="cycle"``) plus per-scene noise, and a static
  spatial noise field makes its edge irregular. :func:`oracle_forecast` gives the best forecast
  of the snow cover possible from the true state of that process.
* **Steep rock.** Faces steeper than about 50 degrees shed their snow (sloughs, avalanches, wind
  scour) and stay bare rock all year, as in real mountains, where these faces and ridges are what
  registers winter scenes. The threshold varies by a static random field (std 6 degrees), so
  the bare faces are irregular patches. The slope is the central difference of the analytic
  elevation at the scene's own, misregistered coordinates, so the patches move exactly with
  the misregistration (truth ``slope`` and ``steep_rock``). The walls are the same height
  (1400 m) at every image size, so small samples are steeper: about half of a 96 x 96 sample is
  steep rock, a tenth of the default 256 x 256 one.
* **Clouds.** Smooth random blobs whose area is drawn per scene (about 60 % of scenes under 20 %
  cover, the rest up to 95 %), thin cloud in a 2-pixel dilated ring, cloud shadows offset away
  from the sun, occasional cirrus. QA_PIXEL uses the Collection-2 bit layout; snow/ice is flagged
  only where no cloud, dilated-cloud, cirrus or shadow bit is set.
* **Nodata.** Some scenes lose a corner (a diagonal scene edge), a few carry diagonal stripes;
  there DN is 0 in the reflectance bands and QA_PIXEL is 1 (fill).
* **Misregistration.** Each scene is rendered at coordinates ``(col - shift_x, row - shift_y)``
  with ``shift_x``, ``shift_y`` uniform in ±1.5 px: the scene content is displaced by
  ``+shift_x`` columns (east) and ``+shift_y`` rows (down), as in ``docs/conventions.md``. Clouds,
  nodata and noise are drawn in the scene's own frame.
* **Sensor.** Gaussian noise (0.004 reflectance), then DN = (reflectance + 0.2) / 2.75e-05 rounded
  and clipped to [1, 65535] (uint16, DN 0 is nodata).

Reflectances: snow 0.85 green / 0.05 SWIR (NDSI ~0.9), bare ice about 0.3–0.6 / 0.03–0.09
(NDSI about 0.5–0.9 with the texture), rock ~0.13 green with SWIR ~1.75 times higher
(NDSI < 0), lake water 0.06 / 0.012, cloud ~0.75 / 0.5 (NDSI ~0.2); hill shading scales both
bands alike.

Note that ``truth.glacier`` is the ``.glacier`` accessor of the Dataset; use ``truth["glacier"]``.

Location: the grid's upper-left corner defaults to a point in the Karakoram for EPSG:32643
(and to the centre of the CRS's area of use otherwise), moved by ``seed`` on a 16 x 16 lattice of
tiles spaced one image size plus 3 km apart, so two seeds (two "glaciers") have different bounding
boxes as well as different terrain (seeds 256 apart share a location). Pixel corners sit on
multiples of ``resolution``.

Files written under ``directory``::

    catalog.json                          root catalog; link rel="describedby" -> truth.nc
    truth.nc                              ground truth (NetCDF, see open_truth)
    landsat-c2-l2/collection.json         the collection
    landsat-c2-l2/<id>/<id>.json          one item per scene
    landsat-c2-l2/<id>/<id>_SR_B3.TIF     green  (COG, uint16, DEFLATE)
    landsat-c2-l2/<id>/<id>_SR_B6.TIF     swir16 (COG, uint16, DEFLATE)
    landsat-c2-l2/<id>/<id>_QA_PIXEL.TIF  qa_pixel (COG, uint16, DEFLATE)

Scenes are drawn from random generators keyed on ``seed`` and the acquisition date, so the same
seed always gives the same files, and changing ``end`` does not change earlier scenes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glacierxr._safety import locks_output
from glacierxr.errors import CatalogError, ConfigError
from glacierxr._synthetic import SAMPLE_QA, asset_fields, to_dn, write_band_asset

__all__ = ["write_catalog", "open_truth", "oracle_forecast", "snow_cover", "SnowProcess",
           "SAMPLE_BANDS", "SURFACE_CLASSES", "TRUTH_FILENAME"]

#: Asset keys written for every item (Planetary Computer ``landsat-c2-l2`` keys).
SAMPLE_BANDS = ("green", "swir16", "qa_pixel")

#: Classes of the truth's ``surface`` variable (what the ground shows in each scene).
SURFACE_CLASSES = {"rock": 0, "ice": 1, "snow": 2, "water": 3}

#: Hidden file written after everything else; a sample folder without it is incomplete
#: (an interrupted run) and :func:`write_catalog` writes it anew instead of refusing.
COMPLETE_MARKER = ".glacierxr-sample-complete"
#: File name of the ground truth, next to ``catalog.json``.
TRUTH_FILENAME = "truth.nc"

_COLLECTION_ID = "landsat-c2-l2"
_TRUTH_REL = "describedby"
_TRUTH_MEDIA_TYPE = "application/x-netcdf"
_LANDSAT9_FIRST = dt.date(2021, 11, 1)  # first Landsat-9 acquisitions in the sample
_KARAKORAM_ORIGIN = (600_000.0, 3_960_000.0)  # EPSG:32643, ~76.1 E 35.8 N
_MAX_SHIFT_PX = 1.5
_NOISE_SIGMA = 0.004
_DILATION_PX = 2
_TEXTURE_EPOCH_YEARS = 0.5
_TEXTURE_SHEAR = 500.0  # m/yr of centre-line minus margin speed a texture epoch is made for
_FAST_PX_PER_16_DAYS = 12.0  # centre-line displacement of the "fast" flow option
_FLOWS = ("valley", "fast")
_DYNAMICS = ("cycle", "memory")
_SNOW_HOLD_SLOPE_DEG = 50.0  # mean slope above which the ground cannot hold snow
_SNOW_HOLD_NOISE_DEG = 6.0  # std of its static spatial variation

_ITEM_EXTENSIONS = [
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://landsat.usgs.gov/stac/landsat-extension/v1.1.1/schema.json",
    "https://stac-extensions.github.io/classification/v1.0.0/schema.json",
    "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
]
_COLLECTION_EXTENSIONS = [
    "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
]
_DOI = "10.5066/P9OGBGM6"


# --------------------------------------------------------------------------------------------
# analytic fields
# --------------------------------------------------------------------------------------------
class _Waves:
    """A sum of random plane waves ``sum_k a_k cos(2 pi (kx_k c + ky_k r) + phi_k)``, unit std.

    Evaluated exactly at any (non-integer) position; used for the advected ice texture, which
    is displaced by a different amount in every pixel.
    """

    def __init__(self, rng: np.random.Generator, count: int, wl_min: float, wl_max: float,
                 spectral_slope: float = 1.0, direction: float | None = None,
                 spread: float = np.pi) -> None:
        wavelength = np.exp(rng.uniform(np.log(wl_min), np.log(wl_max), count))
        centre = 0.0 if direction is None else direction
        angle = centre + rng.uniform(-spread, spread, count)
        self.kx = np.cos(angle) / wavelength
        self.ky = np.sin(angle) / wavelength
        self.phase = rng.uniform(0.0, 2.0 * np.pi, count)
        amp = wavelength**spectral_slope
        self.amp = amp / np.sqrt(0.5 * np.sum(amp**2))  # unit standard deviation

    def __call__(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        shape = np.broadcast_shapes(np.shape(col), np.shape(row))
        col = np.broadcast_to(col, shape).ravel()
        row = np.broadcast_to(row, shape).ravel()
        out = np.empty(col.size)
        step = 32_768  # pixels per block: (waves x block) temporaries stay small
        for start in range(0, col.size, step):
            c, r = col[start:start + step], row[start:start + step]
            phase = np.multiply.outer(self.kx, c)
            phase += np.multiply.outer(self.ky, r)
            phase *= 2.0 * np.pi
            phase += self.phase[:, None]
            np.remainder(phase, 2.0 * np.pi, out=phase)  # float32 cosine stays accurate
            out[start:start + step] = self.amp @ np.cos(phase.astype(np.float32))
        return out.reshape(shape)


@functools.lru_cache(maxsize=32)
def _band_amplitude(shape, wl_min, wl_max, slope, along=None, anisotropy=0.0) -> np.ndarray:
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    kr = np.hypot(kx, ky)
    band = (kr >= 1.0 / wl_max) & (kr <= 1.0 / wl_min)
    amp = np.where(band, np.where(band, kr, 1.0) ** (-slope), 0.0)
    if along is not None:  # favour wave vectors along the angle ``along`` (rows point down)
        cos_k = (kx * math.cos(along) + ky * math.sin(along)) / np.where(band, kr, 1.0)
        amp = amp * (1.0 + anisotropy * cos_k**2)
    return amp


def _band_spectrum(rng, shape, wl_min, wl_max, slope, along=None, anisotropy=0.0) -> np.ndarray:
    """Spectrum of a real random field (unit std) with power in wavelengths [wl_min, wl_max] px."""
    amp = _band_amplitude(tuple(shape), wl_min, wl_max, slope, along, anisotropy)
    spectrum = np.fft.fft2(rng.standard_normal(shape)) * amp  # Hermitian: the field is real
    std = np.sqrt(np.sum(np.abs(spectrum) ** 2)) / (shape[0] * shape[1])
    return spectrum / std


class _PeriodicFields:
    """Static random fields on a torus, sampled exactly at a sub-pixel shift through the FFT.

    A field is the real trigonometric polynomial ``f(c, r) = sum_k F_k exp(2 pi i k.(c, r))``;
    ``f(c - shift_x, r - shift_y)`` on the integer grid is the inverse FFT of
    ``F_k exp(-2 pi i k.shift)``, so misregistered scenes see exactly the same ground.
    """

    def __init__(self, rng, shape, specs) -> None:
        self.shape = shape
        self.spectra = np.stack([_band_spectrum(rng, shape, *spec) for spec in specs])
        self.ky = np.fft.fftfreq(shape[0])[:, None]
        self.kx = np.fft.fftfreq(shape[1])[None, :]

    def sample(self, shift_x: float, shift_y: float, rows: np.ndarray, cols: np.ndarray):
        from scipy import fft

        ramp = np.exp(-2j * np.pi * (self.kx * shift_x + self.ky * shift_y))
        fields = fft.ifft2((self.spectra * ramp).astype(np.complex64), workers=1).real
        return fields[:, (rows % self.shape[0])[:, None], (cols % self.shape[1])[None, :]]


def _lowpass_noise(rng, shape, wl_min, wl_max, slope=1.0) -> np.ndarray:
    """A fresh random field of unit std in the scene frame (clouds)."""
    return np.fft.ifft2(_band_spectrum(rng, shape, wl_min, wl_max, slope)).real


@dataclass
class _Scene:
    index: int
    date: dt.datetime
    platform: str
    shift_x: float
    shift_y: float
    snow_line: float
    cloud_target: float
    cirrus: bool
    nodata: str  # "none" | "corner" | "stripes"
    sun_elevation: float
    sun_azimuth: float


# indices of the static fields in _Valley.fields
_ROUGH, _ROCK, _ROCK2, _SNOW, _SNOW_EDGE, _SNOW_HOLD = range(6)


class _Valley:
    """Static, seed-dependent terrain, glacier and texture parameters (pixel units)."""

    def __init__(self, seed: int, width: int, height: int, resolution: float,
                 t0: dt.datetime, *, flow: str = "valley", max_speed: float | None = None,
                 glacier_fraction: float | None = None, dynamics: str = "cycle",
                 calving: bool = False) -> None:
        from scipy import fft

        rng = np.random.default_rng([seed, 0])
        self.width, self.height, self.resolution, self.t0 = width, height, resolution, t0
        self.cx, self.cy = (width - 1) / 2.0, (height - 1) / 2.0
        quadrant = rng.integers(4)
        self.theta = np.pi / 4 + quadrant * np.pi / 2 + np.deg2rad(rng.uniform(-20.0, 20.0))
        self.cos, self.sin = math.cos(self.theta), math.sin(self.theta)
        # half-length of the valley axis inside the image
        self.half_length = abs(width / 2 * self.cos) + abs(height / 2 * self.sin)
        size = min(width, height)
        self.half_width = rng.uniform(0.09, 0.11) * size  # glacier half-width, px
        self.floor_half_width = 1.45 * self.half_width
        self.floor_wobble = (0.25 * self.half_width, rng.uniform(0.25, 0.4) * self.half_length,
                             rng.uniform(0, 2 * np.pi))
        self.max_speed = rng.uniform(700.0, 1000.0)  # m/yr
        self.terminus0 = rng.uniform(0.38, 0.48) * self.half_length  # s of the terminus at t0
        self.retreat_rate = rng.uniform(15.0, 35.0)  # m/yr
        self.lake_s = self.terminus0 + 0.2 * self.half_length
        self.lake_a = 0.09 * self.half_length
        self.lake_b = 0.8 * self.half_width
        self.medial_rel = rng.uniform(-0.3, 0.3)
        self.medial_moraine = self.medial_rel * self.half_width
        self.centre_elevation = rng.uniform(4300.0, 4700.0)
        self.valley_drop = 600.0  # m from s=0 to s=half_length
        self.wall_height = 1400.0
        self.spur_height = 300.0
        self.spur_wavelength = rng.uniform(0.4, 0.6) * self.half_length
        self.spur_phase = rng.uniform(0, 2 * np.pi)
        # static fields (ground), sampled exactly at each scene's misregistration
        period = (fft.next_fast_len(height + 2 + 16), fft.next_fast_len(width + 2 + 16))
        self.fields = _PeriodicFields(rng, period, [
            (6.0, 60.0, 1.2, self.theta, 3.0),  # _ROUGH: spurs and gullies across the valley
            (4.0, 30.0, 0.6),   # _ROCK: rock albedo
            (4.0, 30.0, 0.6),   # _ROCK2: rock spectral variation
            (4.0, 40.0, 1.0),   # _SNOW: snow surface
            (6.0, 60.0, 1.0),   # _SNOW_EDGE: irregular snow-line edge
            (6.0, 30.0, 0.8),   # _SNOW_HOLD: where a slope sheds its snow (last: the fields
        ])                      # above stay those of earlier versions for the same seed
        self.sliding = 0.5  # fraction of the centre-line speed that is basal sliding
        self.seed = seed
        self._textures: dict[int, _Waves] = {}
        # snow line: highest (summer) well up-valley, lowest (winter) near the terminus
        self.snow_line_summer = self.floor_elevation(-0.6 * self.half_length)
        self.snow_line_winter = self.floor_elevation(0.5 * self.half_length)
        self.snow_edge_noise = 60.0  # m, static spatial field
        # steep faces shed their snow (sloughs, avalanches, wind): a pixel steeper than
        # snow_hold_slope + snow_hold_noise * field stays bare rock all year round
        self.snow_hold_slope = _SNOW_HOLD_SLOPE_DEG
        self.snow_hold_noise = _SNOW_HOLD_NOISE_DEG
        self.flow = flow
        self.weather = _Weather(seed, t0, dynamics, calving=calving)
        self.snow_line_noise = self.weather.process.std_scene
        self._set_flow(flow, max_speed)
        if glacier_fraction is not None:
            self._set_glacier_fraction(glacier_fraction)

    def _set_flow(self, flow: str, max_speed: float | None) -> None:
        """Flow regime: ``"valley"`` (seed-drawn speed, half sliding) or ``"fast"``.

        ``"fast"`` is a tidewater-like tongue: 90 % basal sliding (plug flow) and, unless
        ``max_speed`` says otherwise, 12 px per 16 days at the sample resolution. The ice
        texture renews itself faster when the shear across the flow is larger, so that over
        one texture epoch the shear displaces it no more than at the default speeds.
        """
        if flow == "fast":
            self.sliding = 0.9
            self.max_speed = _FAST_PX_PER_16_DAYS * self.resolution * 365.25 / 16.0
        if max_speed is not None:
            self.max_speed = float(max_speed)
        shear = self.max_speed * (1.0 - self.sliding)  # m/yr, centre line minus margin
        self.texture_epoch_years = _TEXTURE_EPOCH_YEARS * min(1.0, _TEXTURE_SHEAR / shear)

    def _set_half_width(self, half_width: float) -> None:
        ratio = half_width / self.half_width
        self.half_width = half_width
        self.floor_half_width = 1.45 * half_width
        self.floor_wobble = (self.floor_wobble[0] * ratio, *self.floor_wobble[1:])
        self.lake_b = 0.8 * half_width
        self.medial_moraine = self.medial_rel * half_width

    def glacier_fraction(self) -> float:
        """Fraction of the scene covered by glacier ice at the reference time."""
        h, w = self.height, self.width
        s, n = self.along_across(np.arange(w)[None, :], np.arange(h)[:, None])
        return float(self.glacier(s, n, 0.0).mean())

    def _set_glacier_fraction(self, target: float) -> None:
        """Widen or narrow the glacier (bisection on its half-width) to cover ``target``."""
        size = min(self.width, self.height)
        low, high = 0.02 * size, 0.6 * size
        self._set_half_width(high)
        if self.glacier_fraction() < target:
            raise ConfigError(
                f"glacier_fraction={target!r} cannot be reached: the widest glacier covers "
                f"{self.glacier_fraction():.2f} of the scene. Pass a smaller fraction."
            )
        for _ in range(40):
            mid = 0.5 * (low + high)
            self._set_half_width(mid)
            low, high = (mid, high) if self.glacier_fraction() < target else (low, mid)
        self._set_half_width(high)

    # geometry ---------------------------------------------------------------------------
    def along_across(self, col, row):
        dc, dr = col - self.cx, row - self.cy
        return dc * self.cos + dr * self.sin, -dc * self.sin + dr * self.cos

    def floor_elevation(self, s):
        return self.centre_elevation - self.valley_drop * s / self.half_length

    def elevation(self, col, row, roughness):
        s, n = self.along_across(col, row)
        amp, wavelength, phase = self.floor_wobble
        floor = self.floor_half_width + amp * np.sin(2 * np.pi * s / wavelength + phase)
        outside = np.clip(np.abs(n) - floor, 0.0, None)
        wall = self.wall_height * np.tanh(outside / (0.45 * self.half_length))
        spur = self.spur_height * np.sin(2 * np.pi * s / self.spur_wavelength + self.spur_phase
                                         + 0.05 * np.abs(n))
        spur *= np.clip(outside / (0.3 * self.half_length), 0.0, 1.0)
        ice = np.abs(n) < self.half_width
        bulge = np.where(ice, 30.0 * (1.0 - (n / self.half_width) ** 2), 0.0)
        # no static roughness on the ice: its shading would not move with the flow
        rough = np.where(ice, 0.0, np.clip(8.0 + 1.5 * outside, 8.0, 45.0)) * roughness
        return self.floor_elevation(s) + wall + spur + bulge + rough

    def speed(self, n):
        """Ice speed (m/yr): basal sliding plus a parabolic cross-valley profile, 0 off the ice.

        It depends only on the across-flow coordinate, so flow lines are straight and a
        texture advected with it moves by exactly ``velocity * dt`` between any two dates.
        """
        rel = n / self.half_width
        profile = self.sliding + (1.0 - self.sliding) * (1.0 - rel**2)
        return np.where(np.abs(rel) < 1.0, self.max_speed * profile, 0.0)

    def texture_epoch(self, epoch: int) -> _Waves:
        """Ice texture born at ``epoch * TEXTURE_EPOCH_YEARS``: crevasses and debris/ogives."""
        if epoch not in self._textures:
            rng = np.random.default_rng([self.seed, 3, epoch + 10_000])
            # transverse crevasses (wave vectors along the flow) + isotropic debris and ogives
            crevasses = _Waves(rng, 20, 5.0, 10.0, 0.3, direction=self.theta, spread=0.5)
            debris = _Waves(rng, 24, 5.0, 20.0, 0.6)
            waves = crevasses
            for name in ("kx", "ky", "phase"):
                setattr(waves, name, np.concatenate([getattr(crevasses, name),
                                                     getattr(debris, name)]))
            waves.amp = np.concatenate([0.25 * crevasses.amp, 0.35 * debris.amp])
            self._textures[epoch] = waves
        return self._textures[epoch]

    def ice_texture(self, col, row, n, years):
        """Ice surface texture at (col, row) (ice-frame coordinates) and time ``years``.

        A cross-fade of independent textures, each advected with the flow from its own epoch:
        every component moves by exactly ``velocity * dt`` between two dates, and the pattern
        renews itself over ~``TEXTURE_EPOCH_YEARS`` (so shear never piles up into aliasing).
        """
        position = years / self.texture_epoch_years
        first = math.floor(position)
        weights = {first: 1.0 - (position - first), first + 1: position - first}
        total = np.zeros(np.shape(n))
        for epoch, weight in weights.items():
            if weight == 0.0:
                continue
            travel = self.speed(n) * (years - epoch * self.texture_epoch_years) / self.resolution
            qc, qr = col - travel * self.cos, row - travel * self.sin
            total += weight * self.texture_epoch(epoch)(qc, qr)
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return np.clip(total / norm, -1.0, 1.0)

    def terminus(self, years):
        calved = self.weather.calved(years) / self.resolution
        if self.weather.dynamics != "memory":
            return self.terminus0 - self.retreat_rate * years / self.resolution - calved
        return (self.terminus0 - self.weather.retreat(self.retreat_rate, years) / self.resolution
                - calved)

    def glacier(self, s, n, years):
        rel = n / self.half_width
        return (np.abs(rel) < 1.0) & (s < self.terminus(years) - 0.6 * self.half_width * rel**2)

    def lake(self, s, n):
        return ((s - self.lake_s) / self.lake_a) ** 2 + (n / self.lake_b) ** 2 < 1.0

    def moraines(self, n):
        """Debris stripes along the flow (functions of n only, so they move with the ice)."""
        # at least ~1.5 px wide: narrower stripes would alias at the pixel grid
        lateral = np.exp(-(((np.abs(n) - 0.85 * self.half_width) / 1.5) ** 2))
        medial = np.exp(-(((n - self.medial_moraine) / 1.5) ** 2))
        return np.clip(lateral + 0.8 * medial, 0.0, 1.0)

    def snow_line(self, date: dt.datetime) -> float:
        """Snow line (m) before the per-scene noise: seasonal cycle plus the anomaly processes."""
        return float(self.snow_line_climatology(date)) + self.weather.anomaly(date)

    def snow_line_climatology(self, date):
        """The smooth annual cycle of the snow line (m), highest in early August."""
        doy = (date.timetuple().tm_yday if isinstance(date, (dt.date, dt.datetime))
               else _dayofyear(date))
        phase = 2 * np.pi * (np.asarray(doy) - 218) / 365.25
        mean = 0.5 * (self.snow_line_summer + self.snow_line_winter)
        amp = 0.5 * (self.snow_line_summer - self.snow_line_winter)
        return mean + amp * np.cos(phase)

    def snow_threshold(self) -> np.ndarray:
        """Per pixel (unshifted frame): snow lies where this exceeds the snow line; NaN: never."""
        fields, col, row, elevation, dz_east, dz_north = self.terrain(0.0, 0.0)
        threshold = elevation + self.snow_edge_noise * fields[_SNOW_EDGE]
        return np.where(self.sheds_snow(dz_east, dz_north, fields[_SNOW_HOLD]), np.nan, threshold)

    def years(self, date: dt.datetime) -> float:
        return (date - self.t0).total_seconds() / (365.25 * 86400.0)

    # rendering --------------------------------------------------------------------------
    def terrain(self, shift_x: float, shift_y: float):
        """Static fields, positions, elevation and its gradient at ``(col - shift_x, row - shift_y)``.

        The gradient (m/m; ``dz_north`` positive uphill to the north) is a central difference
        of the analytic elevation on a 1-px padded grid that is itself shifted, so it, the
        slope and everything derived from it move exactly with the misregistration.
        """
        h, w = self.height, self.width
        rows_i, cols_i = np.arange(-1, h + 1), np.arange(-1, w + 1)
        fields = self.fields.sample(shift_x, shift_y, rows_i, cols_i)
        rows = rows_i[:, None] - shift_y
        cols = cols_i[None, :] - shift_x
        elev_pad = self.elevation(cols, rows, fields[_ROUGH])
        res = self.resolution
        # rows point south, so d/dnorth = -d/drow
        dz_east = (elev_pad[1:-1, 2:] - elev_pad[1:-1, :-2]) / (2 * res)
        dz_north = -(elev_pad[2:, 1:-1] - elev_pad[:-2, 1:-1]) / (2 * res)
        col = np.broadcast_to(cols[:, 1:-1], (h, w))
        row = np.broadcast_to(rows[1:-1, :], (h, w))
        return fields[:, 1:-1, 1:-1], col, row, elev_pad[1:-1, 1:-1], dz_east, dz_north

    def sheds_snow(self, dz_east, dz_north, hold_field):
        """Ground too steep to hold snow: slope above a threshold that varies in space.

        Faces steeper than about ``snow_hold_slope`` (45 degrees) shed their snow in sloughs
        and avalanches and are scoured by the wind, so they stay bare rock all winter; the
        threshold varies by ``snow_hold_noise`` (std, degrees) with a static random field
        (rock structure, gullies that trap snow), which makes the bare patches irregular.
        """
        slope = np.degrees(np.arctan(np.hypot(dz_east, dz_north)))
        return slope > self.snow_hold_slope + self.snow_hold_noise * hold_field

    def surface(self, scene: _Scene):
        """Surface reflectance (green, swir16), snow/ice, water and glacier masks of a scene.

        Everything is evaluated at ``(col - shift_x, row - shift_y)``.
        """
        h, w = self.height, self.width
        fields, col, row, elevation, dz_east, dz_north = self.terrain(scene.shift_x, scene.shift_y)
        s, n = self.along_across(col, row)
        years = self.years(scene.date)

        # hill shading
        norm = np.sqrt(1.0 + dz_east**2 + dz_north**2)
        el, az = np.deg2rad(scene.sun_elevation), np.deg2rad(scene.sun_azimuth)
        cos_i = (-dz_east * math.sin(az) * math.cos(el) - dz_north * math.cos(az) * math.cos(el)
                 + math.sin(el)) / norm
        # direct light (relative to flat ground) plus diffuse sky light, less on steep slopes
        shade = np.clip(0.2 + 0.2 / norm**2 + 0.6 * np.clip(cos_i, 0.0, None) / math.sin(el),
                        0.25, 1.25)

        glacier = self.glacier(s, n, years)
        lake = self.lake(s, n) & ~glacier
        snow = ((elevation + self.snow_edge_noise * fields[_SNOW_EDGE]) > scene.snow_line)
        snow &= ~self.sheds_snow(dz_east, dz_north, fields[_SNOW_HOLD])

        # rock: albedo texture; swir above green so NDSI < 0
        rock = 0.13 * np.exp(0.3 * np.clip(fields[_ROCK], -3, 3))
        green = rock
        swir = rock * (1.75 + 0.2 * np.clip(fields[_ROCK2], -3, 3))

        # ice: texture advected with the flow, i.e. evaluated at p - velocity * (t - t_epoch)
        ice = np.nonzero(glacier)
        if ice[0].size:
            ns = n[ice]
            t_ice = self.ice_texture(col[ice], row[ice], ns, years)
            debris = 1.0 - 0.45 * self.moraines(ns)
            green[ice] = (0.46 + 0.12 * t_ice) * debris
            swir[ice] = (0.06 - 0.03 * t_ice) * debris
        green = np.where(lake, 0.06, green)
        swir = np.where(lake, 0.012, swir)
        t_snow = np.clip(0.3 * fields[_SNOW], -1, 1)
        green = np.where(snow, 0.85 + 0.04 * t_snow, green)
        swir = np.where(snow, 0.05 + 0.01 * t_snow, swir)
        green, swir = green * shade, swir * shade
        water = lake & ~snow
        surface = np.full((h, w), SURFACE_CLASSES["rock"], np.int8)
        surface[glacier] = SURFACE_CLASSES["ice"]
        surface[water] = SURFACE_CLASSES["water"]
        surface[snow] = SURFACE_CLASSES["snow"]
        return green, swir, surface, glacier, elevation

    def truth_static(self, years0: float = 0.0):
        fields, col, row, elevation, dz_east, dz_north = self.terrain(0.0, 0.0)
        s, n = self.along_across(col, row)
        speed = self.speed(n)
        glacier = self.glacier(s, n, years0)
        speed = np.where(glacier, speed, 0.0)
        u = speed * self.cos
        v = -speed * self.sin  # rows point south; v is positive north
        lake = self.lake(s, n)
        # stable: off the glacier (with a 1-px margin) and off the lake
        near_ice = (np.abs(n) < self.half_width + 1.0) & (s < self.terminus0 + 1.0)
        stable = ~near_ice & ~lake
        slope = np.degrees(np.arctan(np.hypot(dz_east, dz_north)))
        steep = self.sheds_snow(dz_east, dz_north, fields[_SNOW_HOLD]) & ~glacier & ~lake
        return (u, v, elevation, glacier, stable, lake, s * self.resolution, n * self.resolution,
                slope, steep)


# --------------------------------------------------------------------------------------------
# weather: snow-line anomalies with memory, varying retreat (dynamics="memory")
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SnowProcess:
    """Parameters of the snow-line anomaly process of ``dynamics="memory"`` (metres, months).

    The snow line of a scene is ``climatology(day of year) + fast + weight * melt + noise``:

    * ``fast``: a monthly AR(1) anomaly, lag-1 autocorrelation ``phi_fast``, stationary std
      ``std_fast``; piecewise constant over each calendar month. A late spring or a snowy
      autumn lasts one to a few months (e-folding ``-1 / ln(phi_fast)`` = 3.5 months at
      0.75), the month-scale persistence of observed snow-cover anomalies (lag-1 monthly
      autocorrelations of 0.6-0.8); 140 m is a few hundred metres of snow-line swing (2 std)
      against the ~600-1000 m seasonal range of the sample.
    * ``melt``: a slower monthly AR(1) (``phi_melt``, ``std_melt``) scaled by the summer weight
      ``(1 + cos(2 pi (doy - 218) / 365.25)) / 2`` (1 in early August, 0 in early February):
      melt seasons that are warmer or colder than usual, with correlation ``phi_melt**12`` =
      0.37 from one summer to the next; 120 m is within the year-to-year spread of
      glacier equilibrium-line altitudes (std of roughly 100-200 m in mid-latitude ranges).
    * ``noise``: white, ``std_scene`` per scene (the day-to-day weather within a month).

    The retreat rate of the terminus is drawn per year since the start (lognormal, mean the
    seed's rate, log-std ``retreat_log_std``): some years retreat three times more than others.
    """

    phi_fast: float = 0.75
    std_fast: float = 140.0
    phi_melt: float = 0.92
    std_melt: float = 120.0
    std_scene: float = 40.0
    retreat_log_std: float = 0.5


_CALVING_EVERY_YEARS = 3.0  # mean time between calving events (calving=True)
_CALVING_STEP_M = 300.0  # terminus retreat at each event
_MAX_MONTHS = 2400  # months of the process drawn (200 years): later months never change earlier


class _Weather:
    """The snow-line anomaly and retreat processes of a sample (``dynamics``)."""

    def __init__(self, seed: int, t0: dt.datetime, dynamics: str,
                 process: SnowProcess = SnowProcess(), calving: bool = False) -> None:
        self.dynamics, self.process, self.t0 = dynamics, process, t0
        # calving events: a Poisson process (one every CALVING_EVERY years on average)
        gaps = np.random.default_rng([seed, 6]).exponential(_CALVING_EVERY_YEARS, 100)
        self.calving_years = np.cumsum(gaps) if calving else np.empty(0)
        p = process
        shocks = np.random.default_rng([seed, 4]).standard_normal((_MAX_MONTHS, 2))
        self.fast = _ar1(shocks[:, 0], p.phi_fast, p.std_fast)
        self.melt = _ar1(shocks[:, 1], p.phi_melt, p.std_melt)
        self.year_factor = np.exp(p.retreat_log_std * np.random.default_rng([seed, 5])
                                  .standard_normal(200) - 0.5 * p.retreat_log_std**2)
        if dynamics != "memory":
            self.fast[:] = 0.0
            self.melt[:] = 0.0
            self.year_factor[:] = 1.0

    def month(self, date) -> int:
        """Index of the calendar month of ``date`` (0 = the month of the start)."""
        return (date.year - self.t0.year) * 12 + date.month - self.t0.month

    def anomaly(self, date) -> float:
        m = self.month(date)
        return float(self.fast[m] + _summer_weight(date) * self.melt[m])

    def calved(self, years) -> float:
        """Metres lost to calving events up to ``years``."""
        return _CALVING_STEP_M * float(np.searchsorted(self.calving_years, years, side="right"))

    def retreat(self, rate: float, years):
        """Distance (m) the terminus has retreated after ``years`` at a mean ``rate`` (m/yr)."""
        whole = np.floor(np.clip(years, 0.0, None)).astype(int)
        done = np.concatenate([[0.0], np.cumsum(self.year_factor)])
        return rate * (done[whole] + (years - whole) * self.year_factor[whole])


def _ar1(shocks: np.ndarray, phi: float, std: float) -> np.ndarray:
    """Stationary AR(1) series: ``x_0 = std e_0``, ``x_m = phi x_(m-1) + std sqrt(1 - phi^2) e_m``."""
    out = np.empty(shocks.size)
    out[0] = std * shocks[0]
    scale = std * math.sqrt(1.0 - phi * phi)
    for m in range(1, shocks.size):
        out[m] = phi * out[m - 1] + scale * shocks[m]
    return out


def _summer_weight(date) -> float | np.ndarray:
    """Weight of the melt-season anomaly: 1 in early August (day 218), 0 in early February."""
    if isinstance(date, (dt.date, dt.datetime)):
        doy = date.timetuple().tm_yday
    else:
        doy = np.asarray(_dayofyear(date))
    return 0.5 * (1.0 + np.cos(2 * np.pi * (doy - 218) / 365.25))


def _dayofyear(times) -> np.ndarray:
    import pandas as pd

    return pd.DatetimeIndex(times).dayofyear.to_numpy()


# --------------------------------------------------------------------------------------------
# scenes: dates, clouds, nodata
# --------------------------------------------------------------------------------------------
def _sun_position(date: dt.datetime, lat: float, lon: float) -> tuple[float, float]:
    """Approximate solar elevation and azimuth (degrees) at ``date`` (UTC)."""
    doy = date.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (doy - 81) / 365.0)
    solar_time = date.hour + date.minute / 60 + lon / 15.0
    hour_angle = math.radians(15.0 * (solar_time - 12.0))
    phi = math.radians(lat)
    sin_el = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    el = math.asin(sin_el)
    cos_az = (math.sin(decl) - sin_el * math.sin(phi)) / (math.cos(el) * math.cos(phi))
    az = math.degrees(math.acos(max(-1.0, min(1.0, cos_az))))
    if hour_angle > 0:
        az = 360.0 - az
    return math.degrees(el), az


def _schedule(seed: int, start: dt.date, end: dt.date, revisit_days: int, valley: _Valley,
              lat: float, lon: float) -> list[_Scene]:
    candidates: list[tuple[dt.date, str]] = []
    day = start
    while day <= end:
        candidates.append((day, "landsat-8"))
        day9 = day + dt.timedelta(days=revisit_days // 2)
        if day9 >= _LANDSAT9_FIRST and day9 <= end:
            candidates.append((day9, "landsat-9"))
        day += dt.timedelta(days=revisit_days)
    scenes = []
    for day, platform in candidates:
        rng = np.random.default_rng([seed, 1, day.toordinal()])
        if rng.random() < 0.12:  # acquisition gap
            continue
        when = dt.datetime(day.year, day.month, day.day, 5, 30, tzinfo=dt.timezone.utc)
        when += dt.timedelta(seconds=int(rng.integers(0, 120)))
        shift_x, shift_y = rng.uniform(-_MAX_SHIFT_PX, _MAX_SHIFT_PX, 2)
        kind = rng.random()
        if kind < 0.3:
            cloud_target = 0.0
        elif kind < 0.6:
            cloud_target = rng.uniform(0.01, 0.16)
        else:
            cloud_target = rng.uniform(0.22, 0.95)
        nodata_draw = rng.random()
        nodata = "corner" if nodata_draw < 0.18 else "stripes" if nodata_draw < 0.24 else "none"
        snow_line = valley.snow_line(when) + valley.snow_line_noise * rng.standard_normal()
        el, az = _sun_position(when, lat, lon)
        scenes.append(_Scene(len(scenes), when, platform, float(shift_x), float(shift_y),
                             float(snow_line), float(cloud_target), bool(rng.random() < 0.15),
                             nodata, el, az))
    return scenes


def _shift_mask(mask: np.ndarray, dc: int, dr: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(0, -dr):h - max(0, dr), max(0, -dc):w - max(0, dc)]
    out[max(0, dr):max(0, dr) + src.shape[0], max(0, dc):max(0, dc) + src.shape[1]] = src
    return out


def _render(valley: _Valley, scene: _Scene, seed: int):
    """Render one scene: DN arrays for green and swir16, QA_PIXEL, and per-scene diagnostics."""
    from scipy import ndimage

    h, w = valley.height, valley.width
    rng = np.random.default_rng([seed, 2, scene.date.toordinal()])
    green, swir, surface, glacier, _ = valley.surface(scene)
    snow_ice = (surface == SURFACE_CLASSES["snow"]) | (surface == SURFACE_CLASSES["ice"])
    water = surface == SURFACE_CLASSES["water"]
    row, col = np.mgrid[0:h, 0:w].astype(np.float64)

    # clouds: smooth blobs thresholded to the drawn cover fraction (scene frame)
    cloud = np.zeros((h, w), bool)
    if scene.cloud_target > 0:
        size = max(h, w)
        field = _lowpass_noise(rng, (h, w), 0.25 * size, 2.0 * size, 1.5)
        field += 0.15 * _lowpass_noise(rng, (h, w), 4.0, 25.0, 1.0)
        cloud = field > np.quantile(field, 1.0 - scene.cloud_target)
    ring1 = ndimage.binary_dilation(cloud, iterations=1) & ~cloud
    dilated = ndimage.binary_dilation(cloud, iterations=_DILATION_PX) & ~cloud
    ring2 = dilated & ~ring1
    # shadow cast away from the sun
    reach = int(np.clip(round(0.08 * min(h, w)), 3, 20))
    az = math.radians(scene.sun_azimuth)
    shadow = _shift_mask(cloud, -round(reach * math.sin(az)), round(reach * math.cos(az))) & ~cloud
    cirrus = np.zeros((h, w), bool)
    if scene.cirrus:
        cfield = _lowpass_noise(rng, (h, w), 0.3 * max(h, w), 2.0 * max(h, w), 1.5)
        cirrus = (cfield > np.quantile(cfield, 1.0 - rng.uniform(0.1, 0.4))) & ~cloud & ~dilated

    green = np.where(shadow, 0.3 * green, green)
    swir = np.where(shadow, 0.3 * swir, swir)
    cloud_texture = 0.4 * _lowpass_noise(rng, (h, w), 4.0, 40.0, 1.0)
    cloud_green, cloud_swir = 0.75 + 0.05 * cloud_texture, 0.5 + 0.04 * cloud_texture
    alpha = np.where(cloud, 1.0, np.where(ring1, 0.3, np.where(ring2, 0.12, 0.0)))
    green = (1 - alpha) * green + alpha * cloud_green
    swir = (1 - alpha) * swir + alpha * cloud_swir
    green = np.where(cirrus, green + 0.04, green)
    swir = np.where(cirrus, swir + 0.02, swir)
    green = green + _NOISE_SIGMA * rng.standard_normal((h, w))
    swir = swir + _NOISE_SIGMA * rng.standard_normal((h, w))

    # nodata (scene frame)
    fill = np.zeros((h, w), bool)
    if scene.nodata == "corner":
        corner = rng.integers(4)
        u = col / (w - 1) if corner in (0, 3) else 1 - col / (w - 1)
        v = row / (h - 1) if corner in (0, 1) else 1 - row / (h - 1)
        fill = u + v > rng.uniform(1.35, 1.8)
    elif scene.nodata == "stripes":
        period, width_px = rng.uniform(14, 26), rng.uniform(1.5, 2.5)
        fill = np.mod(col + 0.2 * row + rng.uniform(0, period), period) < width_px

    qa = SAMPLE_QA.encode((h, w), water=water, snow=snow_ice, cloud_shadow=shadow, cirrus=cirrus,
                          dilated_cloud=dilated, cloud=cloud, fill=fill)

    valid = ~fill
    n_valid = int(valid.sum())
    cloud_fraction = float((cloud & valid).sum() / n_valid) if n_valid else 0.0
    info = {
        "cloud_fraction": cloud_fraction,
        "nodata_fraction": float(fill.mean()),
        "surface": surface,
        "glacier_area": float(glacier.sum()) * valley.resolution**2 / 1e6,
    }
    return to_dn(green, fill), to_dn(swir, fill), qa, info


# --------------------------------------------------------------------------------------------
# STAC
# --------------------------------------------------------------------------------------------
def _wrs(seed: int) -> tuple[str, str]:
    return f"{147 + seed % 5:03d}", f"{35 + (seed // 5) % 3:03d}"


def _item_id(scene: _Scene, seed: int = 0) -> str:
    sat = "08" if scene.platform == "landsat-8" else "09"
    path, row = _wrs(seed)
    return f"LC{sat}_L2SP_{path}{row}_{scene.date:%Y%m%d}_02_T1"


def _default_origin(epsg: int, seed: int, width: int, height: int,
                    resolution: float) -> tuple[float, float]:
    if epsg == 32643:
        x, y = _KARAKORAM_ORIGIN
    else:
        from pyproj import CRS, Transformer

        area = CRS.from_epsg(epsg).area_of_use
        lon, lat = (area.west + area.east) / 2, (area.south + area.north) / 2
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    step = max(width, height) * resolution + 3000.0
    x += (seed % 16) * step
    y -= ((seed // 16) % 16) * step
    return x, y


def _parse_date(value, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not a date. Pass an ISO date such as '2018-01-01'."
        ) from None


@locks_output("directory", create_parent=True)  # one writer per sample folder (OutputLockedError for a second)
def write_catalog(
    directory,
    *,
    seed: int = 0,
    width: int = 256,
    height: int = 256,
    start: str = "2013-04-01",
    end: str = "2021-04-01",
    revisit_days: int = 16,
    resolution: float = 30.0,
    epsg: int = 32643,
    origin: tuple[float, float] | None = None,
    flow: str = "valley",
    max_speed: float | None = None,
    glacier_fraction: float | None = None,
    dynamics: str = "memory",
    calving: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the synthetic glacier sample: COGs, a static STAC catalog and the ground truth.

    Parameters
    ----------
    directory
        Folder to write into (created if needed).
    seed
        Seed of the terrain, glacier, weather and noise; another seed is another glacier at
        another place.
    width, height
        Size of every scene in pixels (at least 32).
    start, end
        First and last possible acquisition date (ISO dates, both inclusive).
    revisit_days
        Landsat-8 revisit; Landsat-9 scenes (from November 2021) fall half-way in between.
        About 12 % of the acquisitions are dropped at random.
    resolution
        Pixel size in CRS units (metres).
    epsg
        EPSG code of a projected CRS in metres (default UTM 43N).
    origin
        ``(x, y)`` of the grid's upper-left corner; by default a place chosen from ``seed``.
    flow
        ``"valley"`` (default): a valley glacier flowing 700-1000 m/yr on the centre line
        (drawn from ``seed``), half of it basal sliding. ``"fast"``: a tidewater-like tongue,
        90 % sliding, 12 px per 16 days on the centre line at ``resolution`` (8219 m/yr at
        30 m); the truth's ``u``, ``v`` and ``speed`` stay exact.
    max_speed
        Centre-line surface speed in m/yr, replacing the one ``flow`` gives.
    glacier_fraction
        Fraction of the scene covered by glacier ice at ``start`` (e.g. 0.5); the glacier is
        widened or narrowed to match (within a pixel row). Default: the seed's width, about a
        tenth of the scene. Read the value reached from the truth's ``glacier`` mean.
    dynamics
        ``"memory"`` (default): snow-line anomalies that persist for months, melt seasons
        that differ from year to year and a retreat rate that varies by year (see
        :class:`SnowProcess`); the truth keeps the monthly process states and
        :func:`oracle_forecast` gives the best forecast possible from them. ``"cycle"``
        (the default before issue 12): the snow line is a fixed annual cycle plus white
        noise per scene and the terminus retreats at a constant rate, so beyond the seasons
        there is little to forecast.
    calving
        Add calving events (a tidewater-like front): the terminus steps back 300 m at random
        times, one every 3 years on average; their times are in the truth's attrs
        (``calving_years``, years after ``start``) and show in ``terminus_distance``.
    overwrite
        Replace a sample already written in ``directory``.
    progress
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        Path of ``catalog.json``.

    Raises
    ------
    ConfigError
        A parameter is out of range.
    CatalogError
        ``directory`` already holds a complete sample and ``overwrite`` is False (a sample
        whose writing was interrupted has no completion marker and is written anew).
    OutputLockedError
        Another process is writing a sample into ``directory`` right now.

    Examples
    --------
    >>> import tempfile, pystac
    >>> path = write_catalog(tempfile.mkdtemp(), width=48, height=48,
    ...                      start="2020-06-01", end="2020-07-31")
    >>> items = list(pystac.read_file(path).get_items(recursive=True))
    >>> sorted(items[0].assets)
    ['green', 'qa_pixel', 'swir16']
    >>> open_truth(path).sizes["time"] == len(items)
    True
    """
    _check_args(width, height, revisit_days, resolution)
    _check_options(flow, max_speed, glacier_fraction, dynamics)
    first, last = _parse_date(start, "start"), _parse_date(end, "end")
    if last <= first:
        raise ConfigError(f"end={end!r} is not after start={start!r}. Pass an end after the start.")
    crs = _projected_crs(epsg)
    directory = Path(directory)
    _clear_directory(directory, overwrite)
    grid = _Grid.make(crs, origin, seed, width, height, resolution)

    t0 = dt.datetime(first.year, first.month, first.day, tzinfo=dt.timezone.utc)
    valley = _Valley(seed, width, height, resolution, t0, flow=flow, max_speed=max_speed,
                     glacier_fraction=glacier_fraction, dynamics=dynamics, calving=bool(calving))
    scenes = _schedule(seed, first, last, revisit_days, valley, grid.lat, grid.lon)
    if not scenes:
        raise ConfigError(
            f"No acquisition falls between start={start!r} and end={end!r}. "
            f"Widen the period (revisit is {revisit_days} days)."
        )

    import pystac

    catalog = pystac.Catalog(
        id=f"glacierxr-sample-seed{seed}",
        description=("Synthetic Landsat Collection-2 Level-2 scenes of a glacier valley written by "
                     "glacierxr.sample.write_catalog, with ground truth in truth.nc."),
        title=f"glacierxr embedded sample (seed {seed})",
    )
    collection = _collection(grid, scenes)
    catalog.add_child(collection)
    ids, records, surface = _render_items(collection, directory / _COLLECTION_ID, valley,
                                          scenes, grid, seed, progress)
    _write_truth(directory / TRUTH_FILENAME, valley, scenes, ids, records, surface, grid.transform,
                 grid.crs, seed=seed, width=width, height=height, start=first.isoformat(),
                 end=last.isoformat(), revisit_days=revisit_days, epsg=int(epsg),
                 origin=(grid.transform.c, grid.transform.f))

    catalog.normalize_hrefs(str(directory.resolve()))
    catalog.make_all_asset_hrefs_relative()
    catalog.add_link(pystac.Link(
        _TRUTH_REL, f"./{TRUTH_FILENAME}", media_type=_TRUTH_MEDIA_TYPE,
        title="glacierxr sample ground truth",
    ))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    # written last: a sample without it was interrupted and is redone by the next call
    (directory / COMPLETE_MARKER).write_text(f"glacierxr sample, seed {seed}, complete\n")
    return directory / "catalog.json"


def _projected_crs(epsg):
    from pyproj import CRS

    try:
        crs = CRS.from_epsg(int(epsg))
    except Exception:
        raise ConfigError(
            f"epsg={epsg!r} is not a known EPSG code. Pass e.g. epsg=32643."
        ) from None
    unit = crs.axis_info[0].unit_name if crs.axis_info else ""
    if not crs.is_projected or unit not in ("metre", "meter"):
        raise ConfigError(
            f"epsg={epsg} is not a projected CRS in metres (found {crs.name!r}). "
            "Pass a UTM zone such as epsg=32643."
        )
    return crs


def _clear_directory(directory: Path, overwrite: bool) -> None:
    """Create ``directory``; refuse (or, with ``overwrite``, remove) a sample already there."""
    catalog_path = directory / "catalog.json"
    collection_dir = directory / _COLLECTION_ID
    truth_path = directory / TRUTH_FILENAME
    marker = directory / COMPLETE_MARKER
    if catalog_path.exists() or collection_dir.exists() or truth_path.exists() or marker.exists():
        if not overwrite and marker.exists():
            raise CatalogError(
                f"A sample is already written in {directory} (found catalog.json, "
                f"{_COLLECTION_ID}/ or {TRUTH_FILENAME}). Pass overwrite=True to replace it, or "
                "choose an empty directory."
            )
        # complete and overwrite=True, or an interrupted sample (no marker): written anew
        marker.unlink(missing_ok=True)
        catalog_path.unlink(missing_ok=True)
        truth_path.unlink(missing_ok=True)
        shutil.rmtree(collection_dir, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


@dataclass
class _Grid:
    """The sample's pixel grid: CRS, transform, projected and lon/lat footprints."""

    crs: object
    transform: object
    width: int
    height: int
    resolution: float
    proj_bbox: list
    geometry: dict
    bbox: list
    lon: float
    lat: float

    @classmethod
    def make(cls, crs, origin, seed: int, width: int, height: int, resolution: float) -> "_Grid":
        from affine import Affine
        from pyproj import Transformer
        from rasterio.warp import transform_bounds

        epsg = crs.to_epsg()
        if origin is None:
            origin = _default_origin(int(epsg), seed, width, height, resolution)
        elif len(origin) != 2:
            raise ConfigError(
                f"origin={origin!r} is not an (x, y) pair. Pass the upper-left corner in CRS "
                "units, e.g. origin=(600000.0, 3960000.0), or None for the default place."
            )
        x0 = math.floor(float(origin[0]) / resolution) * resolution
        y0 = math.ceil(float(origin[1]) / resolution) * resolution
        transform = Affine(resolution, 0.0, x0, 0.0, -resolution, y0)
        proj_bbox = [x0, y0 - height * resolution, x0 + width * resolution, y0]
        to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
        corners = [(proj_bbox[0], proj_bbox[3]), (proj_bbox[0], proj_bbox[1]),
                   (proj_bbox[2], proj_bbox[1]), (proj_bbox[2], proj_bbox[3])]
        ring = [list(to_lonlat.transform(x, y)) for x, y in corners]
        geometry = {"type": "Polygon", "coordinates": [ring + [ring[0]]]}
        bbox = list(transform_bounds(crs, "EPSG:4326", *proj_bbox, densify_pts=21))
        lon, lat = to_lonlat.transform(x0 + width * resolution / 2,
                                       y0 - height * resolution / 2)
        return cls(crs, transform, width, height, resolution, proj_bbox, geometry, bbox, lon, lat)


def _collection(grid: _Grid, scenes: list[_Scene]):
    import pystac

    return pystac.Collection(
        id=_COLLECTION_ID,
        title="Landsat Collection 2 Level-2",
        description=("Synthetic stand-in for Landsat Collection 2 Level-2 surface reflectance "
                     "(green, swir16 and QA_PIXEL only), rendered by glacierxr.sample."),
        extent=pystac.Extent(
            pystac.SpatialExtent([grid.bbox]),
            pystac.TemporalExtent([[scenes[0].date, scenes[-1].date]]),
        ),
        license="proprietary",
        keywords=["Landsat", "USGS", "NASA", "Satellite", "Reflectance", "Synthetic"],
        providers=[pystac.Provider(name="glacierxr", roles=["producer", "processor"])],
        stac_extensions=list(_COLLECTION_EXTENSIONS),
        extra_fields={"item_assets": {k: asset_fields(k, grid.resolution)
                                      for k in SAMPLE_BANDS}},
        summaries=pystac.Summaries({
            "gsd": [grid.resolution],
            "sci:doi": [_DOI],
            "platform": sorted({s.platform for s in scenes}),
            "instruments": ["oli", "tirs"],
            "view:off_nadir": [0],
        }),
    )


def _render_items(collection, collection_dir: Path, valley: _Valley, scenes, grid: _Grid,
                  seed: int, progress: bool):
    """Render every scene to COGs, add its item; return ids, per-scene records, surfaces."""
    import rasterio

    n = len(scenes)
    records = {k: np.empty(n) for k in ("cloud_fraction", "nodata_fraction", "glacier_area",
                                        "terminus")}
    surface = np.empty((n, grid.height, grid.width), np.int8)
    ids = []
    iterator = scenes
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(scenes, desc="glacierxr sample", unit="scene")
    with rasterio.Env(GDAL_NUM_THREADS="1"):
        for scene in iterator:
            green, swir, qa, info = _render(valley, scene, seed)
            item_id = _item_id(scene, seed)
            ids.append(item_id)
            i = scene.index
            for key in ("cloud_fraction", "nodata_fraction", "glacier_area"):
                records[key][i] = info[key]
            records["terminus"][i] = valley.terminus(valley.years(scene.date)) * grid.resolution
            surface[i] = info["surface"]
            item_dir = collection_dir / item_id
            item_dir.mkdir(parents=True, exist_ok=True)
            item = _item(item_id, scene, seed, grid, info["cloud_fraction"])
            for key, data in (("green", green), ("swir16", swir), ("qa_pixel", qa)):
                write_band_asset(item, key, data, item_dir, grid.transform, grid.crs,
                                 grid.resolution)
            collection.add_item(item)
    return ids, records, surface


def _item(item_id: str, scene: _Scene, seed: int, grid: _Grid, cloud_fraction: float):
    """The STAC item of a scene (assets are added by the caller)."""
    import pystac

    path, row = _wrs(seed)
    epsg = int(grid.crs.to_epsg())
    cover = round(100.0 * cloud_fraction, 2)
    sat = "8" if scene.platform == "landsat-8" else "9"
    properties = {
        "gsd": grid.resolution,
        "created": (scene.date + dt.timedelta(days=8)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "sci:doi": _DOI,
        "platform": scene.platform,
        "proj:epsg": epsg,
        "proj:code": f"EPSG:{epsg}",
        "proj:shape": [grid.height, grid.width],
        "proj:bbox": grid.proj_bbox,
        "description": "Landsat Collection 2 Level-2",
        "instruments": ["oli", "tirs"],
        "eo:cloud_cover": cover,
        "proj:transform": list(grid.transform)[:6],
        "view:off_nadir": 0,
        "landsat:wrs_row": row,
        "landsat:scene_id": (f"LC{sat}{path}{row}{scene.date:%Y}"
                             f"{scene.date.timetuple().tm_yday:03d}LGN00"),
        "landsat:wrs_path": path,
        "landsat:wrs_type": "2",
        "view:sun_azimuth": round(scene.sun_azimuth, 8),
        "landsat:correction": "L2SP",
        "view:sun_elevation": round(scene.sun_elevation, 8),
        "landsat:cloud_cover_land": cover,
        "landsat:collection_number": "02",
        "landsat:collection_category": "T1",
    }
    item = pystac.Item(
        id=item_id, geometry=grid.geometry, bbox=grid.bbox, datetime=scene.date,
        properties=properties, stac_extensions=list(_ITEM_EXTENSIONS),
        collection=_COLLECTION_ID,
    )
    item.add_link(pystac.Link("cite-as", f"https://doi.org/{_DOI}",
                              title="Landsat 8-9 OLI/TIRS Collection 2 Level-2"))
    return item


def _check_args(width, height, revisit_days, resolution) -> None:
    for name, value in (("width", width), ("height", height)):
        if int(value) != value or value < 32:
            raise ConfigError(f"{name}={value!r} is too small. Pass an integer of at least 32.")
    if int(revisit_days) != revisit_days or revisit_days < 2:
        raise ConfigError(f"revisit_days={revisit_days!r} is invalid. Pass an integer >= 2.")
    if not resolution > 0:
        raise ConfigError(f"resolution={resolution!r} is not positive. Pass e.g. 30.0.")


def _check_options(flow, max_speed, glacier_fraction, dynamics) -> None:
    if dynamics not in _DYNAMICS:
        raise ConfigError(f"dynamics={dynamics!r} is unknown. Pass one of {_DYNAMICS}.")
    if flow not in _FLOWS:
        raise ConfigError(f"flow={flow!r} is unknown. Pass one of {_FLOWS}.")
    if max_speed is not None and not (isinstance(max_speed, (int, float)) and max_speed > 0):
        raise ConfigError(f"max_speed={max_speed!r} is not a positive speed. Pass m/yr, e.g. "
                          "800.0, or None for the speed of the flow option.")
    if glacier_fraction is not None and not (
            isinstance(glacier_fraction, (int, float)) and 0.02 <= glacier_fraction <= 0.7):
        raise ConfigError(f"glacier_fraction={glacier_fraction!r} is out of range. Pass a "
                          "fraction of the scene between 0.02 and 0.7, or None.")


def _truth_time_vars(scenes, records) -> dict:
    t = ("time",)
    return {
        "shift_x": _var(t, [s.shift_x for s in scenes], "pixel",
                        "misregistration: content displacement towards +x (east, columns)"),
        "shift_y": _var(t, [s.shift_y for s in scenes], "pixel",
                        "misregistration: content displacement towards +y rows (down, south)"),
        "snow_line": _var(t, [s.snow_line for s in scenes], "m", "snow line elevation"),
        "cloud_fraction": _var(t, records["cloud_fraction"], "1",
                               "fraction of non-fill pixels flagged cloud in QA_PIXEL"),
        "nodata_fraction": _var(t, records["nodata_fraction"], "1", "fraction of fill pixels"),
        "terminus_distance": _var(t, records["terminus"], "m",
                                  "along-flow distance of the terminus (centreline) "
                                  "downstream of the image centre"),
        "glacier_area": _var(t, records["glacier_area"], "km2", "glacier area in the scene"),
        "sun_elevation": _var(t, [s.sun_elevation for s in scenes], "degree", "sun elevation"),
    }


def _truth_weather_vars(valley: _Valley, scenes) -> dict:
    """Snow-line climatology and anomaly per scene, monthly process states, snow threshold."""
    import pandas as pd

    weather, t = valley.weather, ("time",)
    first, last = weather.month(scenes[0].date), weather.month(scenes[-1].date)
    months = pd.date_range(f"{valley.t0:%Y-%m}-01", periods=last + 1, freq="MS")[first:]
    m = ("month",)
    month = _var(m, months.values, "", "first day of the month")
    del month.attrs["units"]
    return {
        "snow_line_climatology": _var(t, [float(valley.snow_line_climatology(s.date))
                                          for s in scenes], "m",
                                      "snow line of the annual cycle (no anomaly, no noise)"),
        "snow_line_anomaly": _var(t, [weather.anomaly(s.date) for s in scenes], "m",
                                  "snow line anomaly of the scene's month: fast + summer "
                                  "weight * melt (without the per-scene noise)"),
        "fast_anomaly": _var(m, weather.fast[first:last + 1], "m",
                             "monthly AR(1) snow-line anomaly (state of the month)"),
        "melt_anomaly": _var(m, weather.melt[first:last + 1], "m",
                             "monthly AR(1) melt-season anomaly, before the summer weight"),
        "month": month,
        "snow_threshold": _var(("y", "x"), valley.snow_threshold().astype(np.float32), "m",
                               "snow lies where snow_threshold > snow_line (elevation plus the "
                               "static edge field); NaN: too steep to hold snow"),
    }


def _var(dims, data, units, long_name, **attrs):
    import xarray as xr

    return xr.Variable(dims, data, {"units": units, "long_name": long_name, **attrs})


def _truth_static_vars(valley: _Valley, surface) -> dict:
    (u, v, elevation, glacier, stable, lake, along, across, slope,
     steep) = valley.truth_static()
    yx = ("y", "x")
    f32 = np.float32
    return {
        "u": _var(yx, u.astype(f32), "m/yr",
                  "true surface velocity, east component (glacier extent at start)"),
        "v": _var(yx, v.astype(f32), "m/yr",
                  "true surface velocity, north component (glacier extent at start)"),
        "speed": _var(yx, np.hypot(u, v).astype(f32), "m/yr", "true surface speed"),
        "elevation": _var(yx, elevation.astype(f32), "m", "surface elevation"),
        "slope": _var(yx, slope.astype(f32), "degree",
                      "terrain slope (central differences of the elevation)"),
        "steep_rock": _var(yx, steep, "1", "ground too steep to hold snow: bare rock in every scene"),
        "glacier": _var(yx, glacier, "1", "glacier ice extent at start"),
        "stable": _var(yx, stable, "1", "stable ground (off the glacier and lake, never moves)"),
        "lake": _var(yx, lake, "1", "proglacial lake"),
        "along_flow": _var(yx, along.astype(f32), "m",
                           "distance along the flow direction from the image centre "
                           "(downstream positive)"),
        "across_flow": _var(yx, across.astype(f32), "m",
                            "distance across the flow from the valley axis"),
        "surface": _var(("time", "y", "x"), surface, "1",
                        "ground cover as rendered in the scene (scene frame, i.e. "
                        "misregistered; clouds ignored)",
                        flag_values=np.array(list(SURFACE_CLASSES.values()), np.int8),
                        flag_meanings=" ".join(SURFACE_CLASSES)),
    }


def _truth_attrs(valley: _Valley, params: dict) -> dict:
    flow_azimuth = (90.0 - math.degrees(math.atan2(-valley.sin, valley.cos))) % 360.0
    return dict(
        title="glacierxr embedded sample: ground truth",
        source="glacierxr.sample.write_catalog",
        **{k: params[k] for k in ("seed", "width", "height", "start", "end", "revisit_days")},
        resolution=valley.resolution,
        epsg=params["epsg"],
        origin=list(params["origin"]),
        reference_time=valley.t0.strftime("%Y-%m-%dT%H:%M:%SZ"),
        flow_azimuth_deg=flow_azimuth,
        flow=valley.flow,
        max_speed=valley.max_speed,
        sliding_fraction=valley.sliding,
        texture_epoch_years=valley.texture_epoch_years,
        glacier_half_width_m=valley.half_width * valley.resolution,
        glacier_fraction=valley.glacier_fraction(),
        retreat_rate=valley.retreat_rate,
        dynamics=valley.weather.dynamics,
        calving_years=[float(y) for y in valley.weather.calving_years if y < 200.0],
        calving_step_m=_CALVING_STEP_M,
        **{f"process_{k}": v for k, v in dataclasses.asdict(valley.weather.process).items()},
        snow_line_summer=valley.snow_line_summer,
        snow_line_winter=valley.snow_line_winter,
        snow_hold_slope_deg=valley.snow_hold_slope,
        snow_hold_noise_deg=valley.snow_hold_noise,
        max_shift_px=_MAX_SHIFT_PX,
        sensor_noise=_NOISE_SIGMA,
        shift_convention=("scene content displaced by +shift_x columns (east) and +shift_y rows "
                          "(down); rendered at (col - shift_x, row - shift_y)"),
        velocity_convention="u positive east, v positive north",
    )


def _write_truth(path: Path, valley: _Valley, scenes, ids, records, surface, transform, crs,
                 **params) -> None:
    import pandas as pd
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    h, w = valley.height, valley.width
    res = valley.resolution
    x = transform.c + res * (np.arange(w) + 0.5)
    y = transform.f - res * (np.arange(h) + 0.5)
    times = pd.DatetimeIndex([s.date.replace(tzinfo=None) for s in scenes])
    ds = xr.Dataset(
        {**_truth_time_vars(scenes, records), **_truth_static_vars(valley, surface),
         **_truth_weather_vars(valley, scenes)},
        coords={
            "time": times,
            "y": ("y", y, {"units": "m", "long_name": "y coordinate of pixel centre"}),
            "x": ("x", x, {"units": "m", "long_name": "x coordinate of pixel centre"}),
            "id": ("time", np.array(ids)),
            "platform": ("time", np.array([s.platform for s in scenes])),
        },
        attrs=_truth_attrs(valley, params),
    )
    ds = ds.rio.write_crs(crs)
    ds["time"].encoding.update(units="seconds since 2000-01-01T00:00:00", dtype="int32")
    tmp = path.with_name(path.name + ".part")
    ds.to_netcdf(tmp)
    tmp.replace(path)


def open_truth(catalog_path) -> "xr.Dataset":
    """Open the ground truth of a sample written by :func:`write_catalog` (loaded in memory).

    Parameters
    ----------
    catalog_path
        Path of the sample's ``catalog.json`` (or of its directory).

    Returns
    -------
    xarray.Dataset
        Per time: ``shift_x``, ``shift_y`` (pixels; the scene content is displaced by
        ``+shift_x`` columns, east, and ``+shift_y`` rows, down), ``snow_line`` (m),
        ``cloud_fraction`` (of non-fill pixels, = ``eo:cloud_cover`` / 100),
        ``nodata_fraction``, ``terminus_distance`` (m along the flow from the image centre),
        ``glacier_area`` (km2), ``sun_elevation``; coords ``id``, ``platform``.
        Per pixel ``(y, x)``: ``u``, ``v`` (m/yr, u positive east, v positive north, on the ice
        extent at start), ``speed``, ``elevation`` (m), ``slope`` (degrees), ``steep_rock``
        (bool: too steep to hold snow, bare in every scene), ``glacier`` (ice extent at start),
        ``stable`` (stable ground, never moves), ``lake`` (bool), ``along_flow``,
        ``across_flow`` (m; the glacier at time t is ``|across_flow| < glacier_half_width_m``
        and ``along_flow < terminus_distance - 0.6 * glacier_half_width_m * (across_flow /
        glacier_half_width_m)**2``). Per scene and pixel: ``surface`` (int8, see
        :data:`SURFACE_CLASSES`: rock, ice, snow, water as rendered in the scene's own,
        misregistered frame, clouds ignored). ``x`` / ``y`` are pixel centres (the grid
        :func:`glacierxr.load` gives at the native resolution); the CRS is in ``spatial_ref``;
        attrs hold the parameters. Use ``truth["glacier"]``: ``truth.glacier`` is the accessor.

    Raises
    ------
    CatalogError
        No catalog at ``catalog_path``, or it has no ground-truth link.
    """
    import rioxarray  # noqa: F401
    import xarray as xr

    path = Path(catalog_path)
    if path.is_dir():
        path = path / "catalog.json"
    if not path.is_file():
        raise CatalogError(
            f"No sample catalog at {path}. Pass the path returned by "
            "glacierxr.sample.write_catalog()."
        )
    doc = json.loads(path.read_text())
    hrefs = [link["href"] for link in doc.get("links", [])
             if link.get("rel") == _TRUTH_REL and link.get("type") == _TRUTH_MEDIA_TYPE]
    if not hrefs:
        raise CatalogError(
            f"{path} has no ground-truth link (rel={_TRUTH_REL!r}, type={_TRUTH_MEDIA_TYPE!r}); "
            f"found rels {[link.get('rel') for link in doc.get('links', [])]}. Only catalogs "
            "written by glacierxr.sample.write_catalog carry a truth."
        )
    truth_file = (path.parent / hrefs[0]).resolve()
    with xr.open_dataset(truth_file, decode_coords="all") as ds:
        ds = ds.load()
    if "spatial_ref" in ds.data_vars:
        ds = ds.set_coords("spatial_ref")
    for name in ("glacier", "stable", "lake", "steep_rock"):
        if name in ds:  # samples written by older versions have no steep_rock
            ds[name] = ds[name].astype(bool)
    return ds


# --------------------------------------------------------------------------------------------
# oracle: the best forecast possible from the true state
# --------------------------------------------------------------------------------------------
def snow_cover(truth, periods, *, months: int = 1) -> "xr.DataArray":
    """The true snow cover of each period: the share of its scenes with snow at each pixel.

    Snow lies at a pixel in a scene where ``snow_threshold > snow_line`` (the truth's
    variables; unshifted frame, clouds ignored). This is the quantity
    :func:`oracle_forecast` forecasts.

    Parameters
    ----------
    truth : xarray.Dataset
        From :func:`open_truth`.
    periods : sequence of dates
        Start of each period (e.g. the ``time`` of ``.glacier.monthly(months)``).
    months : int
        Length of a period in months.

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)`` in [0, 1]; NaN for a period without a scene.
    """
    scenes = _scenes_by_period(truth, periods, months)
    threshold = truth["snow_threshold"].values
    out = np.full((len(scenes), *threshold.shape), np.nan)
    for i, index in enumerate(scenes):
        if index.size:
            lines = truth["snow_line"].values[index]
            out[i] = np.mean(threshold[None] > lines[:, None, None], axis=0)
    return _cover_array(truth, periods, out, "true snow cover (share of the period's scenes)")


def oracle_forecast(truth, issue_time, periods, *, months: int = 1) -> "xr.DataArray":
    """The best forecast of each future period's snow cover, from the true state at issue time.

    The conditional expectation of :func:`snow_cover` given the monthly process states
    (``fast_anomaly``, ``melt_anomaly``) of the month holding ``issue_time``, under the
    sample's own process (:class:`SnowProcess`): for a scene ``k`` months later the snow line
    is Gaussian with mean ``climatology + phi_fast**k * fast + w * phi_melt**k * melt`` and
    variance ``std_fast**2 (1 - phi_fast**(2k)) + w**2 std_melt**2 (1 - phi_melt**(2k)) +
    std_scene**2`` (``w`` the summer weight of the scene's date), so a pixel is snow-covered
    with probability ``Phi((snow_threshold - mean) / std)``; the forecast is the mean of that
    probability over the period's scenes (their dates are the sample's schedule). With
    ``dynamics="cycle"`` the states are 0 and this is the climatological probability.

    Parameters
    ----------
    truth : xarray.Dataset
        From :func:`open_truth`.
    issue_time : date
        When the forecast is made: the state of the whole month holding it is known (pass a
        date in the last month of the last input period).
    periods : sequence of dates
        Start of each period to forecast; every scene in them must fall after that month.
    months : int
        Length of a period in months.

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)``: the probability of snow at each pixel, averaged over the period's
        scenes, in [0, 1]; NaN for a period without a scene.

    Raises
    ------
    ConfigError
        A period starts before the month after ``issue_time``, or the truth has no process
        states (a sample written by an older version).
    """
    from scipy.special import ndtr

    if "fast_anomaly" not in truth:
        raise ConfigError("This truth has no snow-line process states; rewrite the sample with "
                          "this version of glacierxr.sample.write_catalog.")
    p = SnowProcess(**{f.name: float(truth.attrs[f"process_{f.name}"])
                       for f in dataclasses.fields(SnowProcess)})
    month_index = _month_numbers(truth["month"].values)
    issue = _month_numbers([np.datetime64(issue_time, "M")])[0]
    where = np.flatnonzero(month_index == issue)
    if not where.size:
        raise ConfigError(f"issue_time={issue_time!r} is outside the sample's months.")
    fast, melt = float(truth["fast_anomaly"][where[0]]), float(truth["melt_anomaly"][where[0]])
    threshold = truth["snow_threshold"].values
    scenes = _scenes_by_period(truth, periods, months)
    out = np.full((len(scenes), *threshold.shape), np.nan)
    for i, index in enumerate(scenes):
        if not index.size:
            continue
        ahead = _month_numbers(truth["time"].values[index]) - issue
        if ahead.min() < 1:
            raise ConfigError(f"Period {periods[i]} is not after issue_time={issue_time!r}; "
                              "forecast periods that start after the issue month.")
        weight = _summer_weight(truth["time"].values[index])
        mean = (truth["snow_line_climatology"].values[index] + p.phi_fast**ahead * fast
                + weight * p.phi_melt**ahead * melt)
        var = (p.std_fast**2 * (1 - p.phi_fast ** (2 * ahead))
               + weight**2 * p.std_melt**2 * (1 - p.phi_melt ** (2 * ahead)) + p.std_scene**2)
        z = (threshold[None] - mean[:, None, None]) / np.sqrt(var)[:, None, None]
        out[i] = np.nanmean(np.where(np.isnan(z), 0.0, ndtr(z)), axis=0)
    return _cover_array(truth, periods, out, "oracle forecast of the snow cover")


def _month_numbers(times) -> np.ndarray:
    return np.asarray(times, dtype="datetime64[M]").astype(np.int64)


def _scenes_by_period(truth, periods, months: int) -> list[np.ndarray]:
    if int(months) != months or months < 1:
        raise ConfigError(f"months={months!r} is not a positive whole number of months.")
    scene_month = _month_numbers(truth["time"].values)
    starts = _month_numbers(list(periods))
    return [np.flatnonzero((scene_month >= s) & (scene_month < s + months)) for s in starts]


def _cover_array(truth, periods, values, long_name: str) -> "xr.DataArray":
    import pandas as pd
    import xarray as xr

    out = xr.DataArray(values, dims=("time", "y", "x"),
                       coords={"time": pd.DatetimeIndex(list(periods)), "y": truth["y"],
                               "x": truth["x"]},
                       attrs={"units": "1", "long_name": long_name})
    if "spatial_ref" in truth.coords:
        out = out.assign_coords(spatial_ref=truth["spatial_ref"])
    return out
