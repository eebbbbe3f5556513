"""Procedural breast-ultrasound-like phantom: the built-in default dataset.

The phantom lets the quickstart and the fast tests run without downloading
anything. It is *not* a substitute for real data: results on it say nothing
about medical images, only that the pipeline works end to end.

Each image is an echogenicity map (wavy tissue layers, bright fascia lines, a
few flattened ellipses of other echogenicity, depth-dependent attenuation)
multiplied by spatially correlated Rayleigh speckle and log-compressed to
uint8. The class is a property of the lesion *shape*:

* ``0 "none"``: no lesion, empty mask;
* ``1 "smooth"``: hypoechoic ellipse(oid) with a smooth outline, 40 % of them
  slightly lobulated;
* ``2 "irregular"``: hypoechoic blob whose radius is modulated by random low-
  and high-frequency waves on the circle (sphere) and, for 60 %, star-like
  spikes, all scaled by an irregularity strength of 0.3-1 (so the mildest
  ones are hard to tell from lobulated smooth lesions at 64 px).

Lesion contrast (-20 to -4 dB of the surrounding echogenicity) overlaps with
the background ellipses (-12 to +6 dB), sizes vary about 2.5x and posterior
enhancement/shadowing is drawn independently of the class, so neither image
brightness nor "is there a dark blob" alone solves the task. Speckle grain
scales with ``size`` (about one pixel at 64 px).

Variant ``birads`` (the demo's task, ``variant="birads"``): every image has one
lesion, of radius 0.24-0.32 of the width, and the class is benign / malignant
from two BI-RADS descriptors at once: orientation (parallel, wider than tall,
vs taller than wide) and margin (circumscribed vs irregular / spiculated). Size,
contrast (-22 to -10 dB) and posterior features are drawn alike for both
classes, so mean brightness, the darkest pixels or the spread of an image do not
give the class away (tested), while a network that sees the lesion's shape
can. It has 0-2 background ellipses instead of 1-4, so that the lesion is the
dominant structure, and it is rendered at twice the resolution and averaged
2 x 2, the speckle a downsampled 64 px scan would have: at 32 px the shape
stays visible. The default variant ``shape`` keeps version 1's images exactly.

Patients: ``images_per_patient`` consecutive images share one patient id, one
class and one scene (anatomy and lesion), seen with a different shift, lesion
pose, gain and speckle, so a split that ignored patients would leak. Classes
are dealt to patients in shuffled blocks of 20 patients with
``class_balance`` (default 25 % / 40 % / 35 %, roughly like breast ultrasound
collections with few normal images), so the balance is exact for multiples
of 20 patients. Every random draw comes from a :class:`numpy.random.SeedSequence`
keyed by ``(seed, patient, view)``: sample ``i`` is identical whatever ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from benchmark.core.errors import SSLBenchError
from benchmark.data.h5format import DatasetMeta, H5Writer
from benchmark.data.splits import make_split

CLASS_NAMES = ("none", "smooth", "irregular")
MASK_CLASS_NAMES = ("background", "lesion")
DEFAULT_CLASS_BALANCE = (0.25, 0.40, 0.35)
#: variant -> (class names, default class balance)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "shape": (CLASS_NAMES, DEFAULT_CLASS_BALANCE),
    "birads": (("benign", "malignant"), (0.5, 0.5)),
}
#: variant -> render at this multiple of the resolution and average (speckle of a
#: downsampled scan; the shape variant keeps version 1's images exactly)
_SUPERSAMPLE = {"shape": 1, "birads": 2}
GENERATOR_VERSION = "1"
_BLOCK = 20  # patients per class-balance block
_KEY_SCENE, _KEY_CLASS = 0x5CE7E, 0xC1A55


class PhantomError(SSLBenchError, ValueError):
    """Invalid phantom generator arguments."""


@dataclass(frozen=True)
class _Lesion:
    centre: np.ndarray  # (d,) in units of the image width
    axes: np.ndarray  # (d,) semi-axes
    rot: np.ndarray  # (d, d) orthonormal, columns = lesion frame axes
    contrast: float  # echogenicity factor inside the lesion
    posterior: float  # >0 enhancement, <0 shadowing below the lesion
    waves: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # dirs, freqs, amps, phases
    spikes: tuple[np.ndarray, np.ndarray, np.ndarray]  # dirs, amps, angular widths


@dataclass(frozen=True)
class _Scene:
    dims: int
    gain: float
    atten: float
    layer_base: np.ndarray  # (L-1,) boundary depths
    layer_wave: np.ndarray  # (L-1, d-1, 2, 3) amplitude, frequency, phase per lateral axis
    layer_level: np.ndarray  # (L,) echogenicity per layer
    layer_line: np.ndarray  # (L-1,) fascia brightness at each boundary
    blobs: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, float], ...]
    lesion: _Lesion | None
    shift: np.ndarray  # (d,) per-view shift of the whole scene


def _depth_axis(dims: int) -> int:
    """Spatial axis along which sound travels: rows in 2D, H of (D, H, W) in 3D."""
    return 0 if dims == 2 else 1


def _rotation(rng: np.random.Generator, d: int, jitter: float | None = None) -> np.ndarray:
    """Random orthonormal matrix; near the identity when ``jitter`` is given."""
    m = rng.normal(size=(d, d))
    if jitter is not None:
        m = np.eye(d) + jitter * m
    q, r = np.linalg.qr(m)
    return q * np.sign(np.diag(r))


def _unit(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    v = rng.normal(size=(k, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


_Outline = tuple[int, np.ndarray, np.ndarray, int, float]


def _smooth_outline(rng: np.random.Generator, max_lobes: int, max_amp: float) -> _Outline:
    """Outline parameters of a smooth lesion, 40 % slightly lobulated:
    ``(waves k, frequencies, amplitudes, spikes 0, strength 1)``."""
    k = int(rng.integers(1, max_lobes + 1)) if rng.random() < 0.4 else 0
    return k, rng.uniform(1.0, 3.0, k), rng.uniform(0.02, max_amp, k), 0, 1.0


def _irregular_outline(
    rng: np.random.Generator, spike_p: float, strength: tuple[float, float]
) -> _Outline:
    """Outline parameters of an irregular lesion: low- and high-frequency waves, spikes
    with probability ``spike_p``, all scaled by a strength drawn from ``strength``."""
    k_lo, k_hi = int(rng.integers(2, 5)), int(rng.integers(3, 9))
    freqs = np.concatenate([rng.uniform(1.5, 4.0, k_lo), rng.uniform(5.0, 12.0, k_hi)])
    amps = np.concatenate([rng.uniform(0.05, 0.15, k_lo), rng.uniform(0.02, 0.06, k_hi)])
    n_spikes = int(rng.integers(6, 15)) if rng.random() < spike_p else 0
    return k_lo + k_hi, freqs, amps, n_spikes, float(rng.uniform(*strength))


def _draw_lesion(rng: np.random.Generator, cls: int, dims: int) -> _Lesion:
    da = _depth_axis(dims)
    centre = rng.uniform(0.28, 0.72, dims)
    centre[da] = rng.uniform(0.3, 0.65)
    radius = rng.uniform(0.07, 0.18)
    axes = radius * np.exp(rng.normal(0.0, 0.22, dims))
    if cls == 1:  # smooth; some slightly lobulated
        k, freqs, amps, n_spikes, irregularity = _smooth_outline(rng, max_lobes=3, max_amp=0.1)
    else:  # irregular: low + high frequency waves, often spikes, of varying strength
        k, freqs, amps, n_spikes, irregularity = _irregular_outline(rng, 0.6, (0.3, 1.0))
    waves = (_unit(rng, k, dims), freqs, amps * irregularity, rng.uniform(0, 2 * np.pi, k))
    spikes = (
        _unit(rng, n_spikes, dims),
        rng.uniform(0.2, 0.6, n_spikes) * irregularity,
        rng.uniform(0.05, 0.12, n_spikes),
    )
    return _Lesion(
        centre,
        axes,
        _rotation(rng, dims),
        float(10 ** (rng.uniform(-20, -4) / 20)),
        float(rng.uniform(-0.4, 0.4)),
        waves,
        spikes,
    )


def _draw_birads_lesion(rng: np.random.Generator, cls: int, dims: int) -> _Lesion:
    """A lesion of the ``birads`` variant: every image has one; the class sets two
    BI-RADS descriptors at once, orientation and margin.

    * ``0 "benign"``: parallel (wider than tall, depth / lateral axis 0.45-0.7),
      circumscribed (smooth, 40 % slightly lobulated);
    * ``1 "malignant"``: not parallel (taller than wide, 1.15-1.6), not
      circumscribed (low- and high-frequency waves, 70 % with spikes).

    Size (the axes keep the area of a circle of radius 0.24-0.32), contrast (-22 to
    -10 dB, overlapping the background ellipses' -12 to +6 dB) and posterior
    features are drawn the same way for both classes.
    """
    da = _depth_axis(dims)
    centre = rng.uniform(0.3, 0.7, dims)
    centre[da] = rng.uniform(0.35, 0.6)
    radius = rng.uniform(0.24, 0.32)
    ratio = rng.uniform(0.45, 0.7) if cls == 0 else rng.uniform(1.15, 1.6)
    axes = np.full(dims, radius * ratio ** (-1.0 / dims))
    axes[da] = radius * ratio ** ((dims - 1.0) / dims)
    if cls == 0:
        k, freqs, amps, n_spikes, strength = _smooth_outline(rng, max_lobes=2, max_amp=0.08)
    else:
        k, freqs, amps, n_spikes, strength = _irregular_outline(rng, 0.7, (0.5, 1.0))
    return _Lesion(
        centre,
        axes,
        _rotation(rng, dims, 0.12),
        float(10 ** (rng.uniform(-22, -10) / 20)),
        float(rng.uniform(-0.4, 0.4)),
        (_unit(rng, k, dims), freqs, amps * strength, rng.uniform(0, 2 * np.pi, k)),
        (
            _unit(rng, n_spikes, dims),
            rng.uniform(0.2, 0.6, n_spikes) * strength,
            rng.uniform(0.05, 0.12, n_spikes),
        ),
    )


def _draw_scene(rng: np.random.Generator, cls: int, dims: int, variant: str = "shape") -> _Scene:
    """Anatomy and lesion of one patient (shared by all of its views)."""
    da = _depth_axis(dims)
    n_layers = int(rng.integers(3, 6))
    base = np.sort(rng.uniform(0.06, 0.95, n_layers - 1))
    wave = np.stack(
        [
            rng.uniform(0.005, 0.05, (n_layers - 1, dims - 1, 2)),
            rng.uniform(0.5, 3.5, (n_layers - 1, dims - 1, 2)),
            rng.uniform(0, 2 * np.pi, (n_layers - 1, dims - 1, 2)),
        ],
        axis=-1,
    )
    blobs = []
    for _ in range(int(rng.integers(0, 3) if variant == "birads" else rng.integers(1, 5))):
        axes = rng.uniform(0.06, 0.2, dims)
        axes[da] = rng.uniform(0.025, 0.08)
        blobs.append(
            (
                rng.uniform(0.0, 1.0, dims),
                axes,
                _rotation(rng, dims, 0.25),
                float(10 ** (rng.uniform(-12, 6) / 20)),
            )
        )
    return _Scene(
        dims=dims,
        gain=float(rng.uniform(0.75, 1.25)),
        atten=float(rng.uniform(0.3, 1.6)),
        layer_base=base,
        layer_wave=wave,
        layer_level=10 ** (rng.uniform(-18, 0, n_layers) / 20),
        layer_line=rng.uniform(0.0, 0.8, n_layers - 1) * (rng.random(n_layers - 1) < 0.6),
        blobs=tuple(blobs),
        lesion=(
            _draw_birads_lesion(rng, cls, dims)
            if variant == "birads"
            else (_draw_lesion(rng, cls, dims) if cls > 0 else None)
        ),
        shift=np.zeros(dims),
    )


def _view(scene: _Scene, rng: np.random.Generator) -> _Scene:
    """Another acquisition of the same patient: shift, lesion pose, gain."""
    lesion = scene.lesion
    if lesion is not None:
        lesion = replace(
            lesion,
            rot=_rotation(rng, scene.dims, 0.15) @ lesion.rot,
            axes=lesion.axes * rng.uniform(0.92, 1.08),
        )
    return replace(
        scene,
        gain=scene.gain * float(rng.uniform(0.9, 1.1)),
        atten=scene.atten * float(rng.uniform(0.9, 1.1)),
        shift=rng.uniform(-0.04, 0.04, scene.dims),
        lesion=lesion,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _ellipsoid(
    grid: list[np.ndarray], centre: np.ndarray, axes: np.ndarray, rot: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Normalised ellipsoidal radius and lesion-frame coordinates of every pixel."""
    diff = [g - c for g, c in zip(grid, _f32(centre), strict=True)]
    r = _f32(rot)
    local = [sum(r[i, j] * diff[i] for i in range(len(grid))) for j in range(len(grid))]
    rho = np.sqrt(sum((p / a) ** 2 for p, a in zip(local, _f32(axes), strict=True)))
    return np.broadcast_to(rho, np.broadcast_shapes(*(g.shape for g in grid))), local


def _modulation(les: _Lesion, local: list[np.ndarray]) -> np.ndarray:
    """Radial factor of the lesion outline in the direction of each given point."""
    norm = np.sqrt(sum(p**2 for p in local)) + 1e-12
    u = [p / norm for p in local]
    mod = np.ones_like(norm)
    dirs, freqs, amps, phases = les.waves
    for v, f, a, ph in zip(_f32(dirs), freqs, amps, phases, strict=True):
        cos = sum(vj * uj for vj, uj in zip(v, u, strict=True))
        mod += float(a) * np.cos(float(np.pi * f) * cos + float(ph))
    for v, a, width in zip(_f32(les.spikes[0]), *les.spikes[1:], strict=True):
        cos = sum(vj * uj for vj, uj in zip(v, u, strict=True))
        mod += float(a) * np.exp((cos - 1.0) / float(width**2))
    return np.maximum(mod, 0.35)


def _render(
    scene: _Scene,
    rng: np.random.Generator,
    shape: tuple[int, ...],
    size: int,
    supersample: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw speckle and render one view to (uint8 image (1, *shape), uint8 mask).

    With ``supersample`` k > 1 the view is rendered at k times the resolution and
    averaged over k x k (x k) blocks, the mask by majority, as a lower-resolution
    scan of the same tissue would average its speckle.
    """
    if supersample == 1:
        img, mask = _render_float(scene, rng, shape, size)
    else:
        k = int(supersample)
        img, mask = _render_float(scene, rng, tuple(n * k for n in shape), size * k)
        blocks = [x for n in shape for x in (n, k)]
        axes = tuple(range(1, 2 * len(shape), 2))
        img = img.reshape(blocks).mean(axes)
        frac = mask.reshape(blocks).mean(axes, dtype=np.float32)
        mask = (frac >= 0.5).astype(np.uint8)
        if frac.any() and not mask.any():  # a lesion smaller than half a pixel
            mask[np.unravel_index(np.argmax(frac), frac.shape)] = 1
    return np.round(img).astype(np.uint8)[None], mask


def _render_float(
    scene: _Scene, rng: np.random.Generator, shape: tuple[int, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The view as a float image in display units [0, 255] and a uint8 mask."""
    d, da = scene.dims, _depth_axis(scene.dims)
    grid = [
        ((np.arange(n, dtype=np.float32) + 0.5) / size + float(s)).reshape(
            [-1 if k == a else 1 for k in range(d)]
        )
        for a, (n, s) in enumerate(zip(shape, scene.shift, strict=True))
    ]
    depth, lateral = grid[da], [g for a, g in enumerate(grid) if a != da]
    # tissue layers with wavy boundaries and bright fascia lines
    level = scene.layer_level.tolist()
    echo = np.full(shape, level[0], dtype=np.float32)
    for k, b0 in enumerate(scene.layer_base.tolist()):
        w = scene.layer_wave[k].tolist()
        bound = b0 + sum(
            w[j][h][0] * np.sin(2 * np.pi * w[j][h][1] * lateral[j] + w[j][h][2])
            for j in range(d - 1)
            for h in range(2)
        )
        rel = (depth - bound) * size
        echo += (level[k + 1] - level[k]) * _sigmoid(rel / 1.5)
        if scene.layer_line[k] > 0:
            echo += float(scene.layer_line[k]) * np.exp(-((rel / 1.2) ** 2))
    for centre, axes, rot, factor in scene.blobs:
        rho, _ = _ellipsoid(grid, centre, axes, rot)
        echo *= 1.0 + (factor - 1.0) * _sigmoid((1.0 - rho) * float(axes.mean() * size / 1.5))
    mask = np.zeros(shape, dtype=np.uint8)
    les = scene.lesion
    if les is not None:
        rho, local = _ellipsoid(grid, les.centre, les.axes, les.rot)
        scale = float(les.axes.mean() * size)  # normalised radius -> ~pixels
        # the outline only matters near the lesion: evaluate it there
        mod_max = 1.0 + float(np.abs(les.waves[2]).sum() + les.spikes[1].sum())
        near = rho < mod_max + 8.0 / float(les.axes.min() * size)
        mod = np.full(shape, mod_max, dtype=np.float32)
        mod[near] = _modulation(les, [np.broadcast_to(p, shape)[near] for p in local])
        inside = (mod - rho) * scale  # ~ signed distance to the outline in pixels
        mask = (inside > 0).astype(np.uint8)
        if not mask.any():  # tiny lesion between pixel centres: keep the nearest pixel
            idx = tuple(
                int(np.clip(np.argmin(np.abs(g.ravel() - c)), 0, n - 1))
                for g, c, n in zip(grid, les.centre, shape, strict=True)
            )
            mask[idx] = 1
        echo *= 1.0 - (1.0 - les.contrast) * _sigmoid(inside / 0.8)
        centre = les.centre.tolist()
        lat = np.sqrt(sum((g - centre[a]) ** 2 for a, g in enumerate(grid) if a != da))
        below = _sigmoid((depth - centre[da] - 0.5 * float(les.axes.mean())) * (size / 2))
        echo *= 1.0 + les.posterior * below * np.exp(-((lat / float(les.axes.mean())) ** 4))
    echo = np.maximum(echo * np.exp(-scene.atten * depth) * scene.gain, 1e-3)
    # correlated Rayleigh speckle: envelope of smoothed complex Gaussian noise,
    # grains elongated laterally as with a real transducer
    sigma = [1.0 * size / 64] * d
    sigma[da] = 0.45 * size / 64
    re = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    im = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    env = np.hypot(re, im)
    env /= np.sqrt(np.mean(env**2))
    db = 20.0 * np.log10(echo * env + 1e-4)  # log compression, 48 dB display range
    return np.clip((db + 36.0) * (255.0 / 48.0), 0.0, 255.0), mask


def phantom_sample(
    rng: np.random.Generator,
    cls: int,
    size: int = 64,
    dims: int = 2,
    depth: int | None = None,
    variant: str = "shape",
) -> tuple[np.ndarray, np.ndarray]:
    """One random phantom image of a given class.

    Args:
        rng: Source of randomness (the sample is a pure function of its state).
        cls: Class index of the variant (``shape``: 0 "none", 1 "smooth",
            2 "irregular"; ``birads``: 0 "benign", 1 "malignant").
        size: Height and width (and depth for 3D unless ``depth`` is given).
        dims: 2 for images, 3 for volumes.
        depth: Number of slices D of a 3D volume; defaults to ``size``.
        variant: ``shape`` or ``birads`` (see the module docstring).

    Returns:
        ``(image, mask)``: uint8 (1, size, size) or (1, D, size, size), and a uint8
        0/1 lesion mask of the spatial shape (all zero for class 0 "none" of the
        ``shape`` variant; every ``birads`` image has a lesion).
    """
    shape = _check_shape(size, dims, depth)
    names, _ = _variant(variant)
    if cls not in range(len(names)):
        raise PhantomError(
            f"phantom class of variant {variant!r} must be in 0..{len(names) - 1}, got {cls!r}"
        )
    scene = _draw_scene(rng, int(cls), dims, variant)
    return _render(scene, rng, shape, shape[-1], _SUPERSAMPLE[variant])


def _variant(variant: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if variant not in VARIANTS:
        raise PhantomError(f"phantom variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def _check_shape(size: int, dims: int, depth: int | None) -> tuple[int, ...]:
    if dims not in (2, 3):
        raise PhantomError(f"phantom dims must be 2 or 3, got {dims!r}")
    if int(size) != size or size < 16:
        raise PhantomError(f"phantom size must be an integer >= 16, got {size!r}")
    if dims == 2:
        if depth is not None:
            raise PhantomError("depth applies to 3D phantoms only (dims=3)")
        return (int(size), int(size))
    d = size if depth is None else depth
    if int(d) != d or d < 8:
        raise PhantomError(f"phantom depth must be an integer >= 8, got {depth!r}")
    return (int(d), int(size), int(size))


def _block_counts(balance: tuple[float, ...], n_classes: int = 3) -> np.ndarray:
    """Patients per class in a block of ``_BLOCK``, by largest remainder."""
    w = np.asarray(balance, dtype=np.float64)
    if w.shape != (n_classes,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise PhantomError(f"class_balance needs {n_classes} non-negative weights, got {balance!r}")
    exact = w / w.sum() * _BLOCK
    counts = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - counts), kind="stable")[: _BLOCK - counts.sum()]
    counts[extra] += 1
    return counts


def patient_classes(
    n_patients: int,
    seed: int,
    class_balance: tuple[float, ...] = DEFAULT_CLASS_BALANCE,
    n_classes: int = 3,
) -> np.ndarray:
    """Class of each patient: shuffled blocks of 20 with the given balance."""
    pattern = np.repeat(np.arange(n_classes), _block_counts(class_balance, n_classes))
    blocks = [
        np.random.default_rng(
            np.random.SeedSequence([seed, _KEY_CLASS], spawn_key=(b,))
        ).permutation(pattern)
        for b in range(math.ceil(n_patients / _BLOCK))
    ]
    return np.concatenate(blocks)[:n_patients] if blocks else np.zeros(0, dtype=np.int64)


def generate_phantom(
    out: str | Path,
    *,
    n: int | None = None,
    size: int = 64,
    dims: int = 2,
    seed: int = 0,
    images_per_patient: int = 2,
    class_balance: tuple[float, ...] | None = None,
    depth: int | None = None,
    variant: str = "shape",
    overwrite: bool = False,
) -> Path:
    """Write a procedural phantom dataset as an sslbench HDF5 file (atomically).

    Args:
        out: Output ``.h5`` path.
        n: Number of images; default 240 (2D) or 120 (3D).
        size: Image height and width in pixels.
        dims: 2 for (1, size, size) images, 3 for (1, D, size, size) volumes.
        seed: Seed of every image and of the train/val/test split.
        images_per_patient: Consecutive images sharing a patient id, class and scene.
        class_balance: Weights of the variant's classes (default: the variant's,
            none / smooth / irregular 25/40/35 % or benign / malignant 50/50 %).
        depth: Slices D of 3D volumes (default ``size``).
        variant: ``shape`` (3 classes by lesion shape, lesions of 0.07-0.18 of the
            width) or ``birads`` (benign / malignant by orientation and margin,
            every image with a lesion of radius 0.24-0.32 of the width; the demo's task).
        overwrite: Replace an existing file.

    Returns:
        The output path.

    Raises:
        PhantomError: Invalid arguments (also a ValueError).
        OutputExistsError: ``out`` exists and ``overwrite`` is false.
        SplitError: Too few patients for a train/val/test split.
    """
    shape = _check_shape(size, dims, depth)
    n = (240 if dims == 2 else 120) if n is None else n
    if int(n) != n or n < 1:
        raise PhantomError(f"phantom n must be a positive integer, got {n!r}")
    if int(images_per_patient) != images_per_patient or images_per_patient < 1:
        raise PhantomError(f"images_per_patient must be >= 1, got {images_per_patient!r}")
    if int(seed) != seed or seed < 0:
        raise PhantomError(f"phantom seed must be a non-negative integer, got {seed!r}")
    ipp, seed, size = int(images_per_patient), int(seed), shape[-1]
    names, default_balance = _variant(variant)
    balance = tuple(default_balance if class_balance is None else class_balance)
    patient = np.arange(n) // ipp
    labels = patient_classes(int(patient[-1]) + 1, seed, balance, len(names))[patient]
    pids = np.array([f"phantom-{p:05d}" for p in patient], dtype=object)
    split = make_split(labels, pids, seed=seed)
    meta = DatasetMeta(
        name="phantom" if dims == 2 else "phantom3d",
        modality="synthetic-ultrasound-phantom",
        spacing=[1.0] * dims,
        class_names=list(names),
        mask_class_names=list(MASK_CLASS_NAMES),
        source="sslbench procedural phantom",
        licence="Apache-2.0 (generated)",
        citation="",
        converter="phantom",
        converter_version=GENERATOR_VERSION,
        extra={
            "n": int(n),
            "size": int(size),
            "dims": dims,
            "depth": shape[0] if dims == 3 else None,
            "seed": seed,
            "images_per_patient": ipp,
            "class_balance": [float(w) for w in balance],
            "class_block": _BLOCK,
            "split": "make_split(labels, patient_ids, seed)",
            # the default variant's files stay byte-identical to version 1's
            **({} if variant == "shape" else {"variant": variant}),
        },
    )
    with H5Writer(
        out,
        n=n,
        image_shape=(1, *shape),
        meta=meta,
        has_masks=True,
        label_shape=(),
        overwrite=overwrite,
    ) as writer:
        scene: _Scene | None = None
        for i in range(n):
            p, v = int(patient[i]), i % ipp
            if v == 0 or scene is None:
                ss = np.random.SeedSequence([seed, _KEY_SCENE], spawn_key=(p,))
                scene = _draw_scene(np.random.default_rng(ss), int(labels[i]), dims, variant)
            rng = np.random.default_rng(
                np.random.SeedSequence([seed, _KEY_SCENE], spawn_key=(p, v))
            )
            image, mask = _render(_view(scene, rng), rng, shape, size, _SUPERSAMPLE[variant])
            writer.write(
                i,
                image,
                mask=mask,
                label=int(labels[i]),
                patient_id=pids[i],
                split=split[i],
                source_file=f"phantom:seed{seed}:patient{p}:view{v}",
            )
    return Path(out)
