"""The generator contract, the generator registry and the synthetic-file writer.

A *generator* is any source of synthetic images for self-supervised
pretraining, following the question of Khader et al. 2022 (*Medical Diffusion*:
does pretraining on diffusion-generated images help when labels are scarce?).
Four kinds are registered in :data:`GENERATORS`:

* ``ddpm``: a denoising diffusion model (Ho et al. 2020) trained on the real
  train split, sampled with DDIM (Song et al. 2021) or ancestral DDPM steps;
* ``ldm``: a latent diffusion model (an autoencoder, then a DDPM on its latents;
  Rombach et al. 2022, as Khader et al. 2022), trained on the real train split;
* ``phantom``: the built-in procedural ultrasound phantom;
* ``import``: images produced by another tool, checked and converted.

Every generator produces images of one fixed shape ``(C, *spatial)``, 2D
``(C, H, W)`` now and 3D ``(C, D, H, W)`` later, as uint8 arrays
``(N, C, *spatial)``. :func:`write_synthetic` stores them in the sslbench
HDF5 format (``benchmark/data/FORMAT.md``): uint8 images, no labels or masks,
every sample in split ``train``, patient ids ``synth-000000``, ... and the
generator's provenance (:meth:`Generator.describe`) in ``meta.extra``.

Reproducibility: :meth:`Generator.sample_batch` receives the seed *and* the
batch index, so a batch never depends on what was drawn before it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark.core.errors import SSLBenchError
from benchmark.core.io import atomic_path, check_output_path
from benchmark.core.registry import Registry
from benchmark.data.h5format import DatasetMeta, H5Writer

GENERATORS: Registry[type[Generator]] = Registry(
    "generators", "sources of synthetic images (diffusion model, phantom, imported)"
)

#: Patient id of synthetic sample ``i``.
PATIENT_ID_FORMAT = "synth-{:06d}"


class GeneratorError(SSLBenchError, ValueError):
    """A generator was asked for something it cannot do (bad size, bad checkpoint, ...)."""


class GeneratorDivergedError(SSLBenchError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


def seed_int(*keys: int) -> int:
    """A 63-bit integer seed derived from ``keys`` with :class:`numpy.random.SeedSequence`."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def to_uint8(
    images: torch.Tensor | np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Clip float images in ``value_range`` and quantise them to uint8 (round half to even)."""
    t = torch.as_tensor(images).detach().float().cpu()
    lo, hi = value_range
    t = ((t - lo) / (hi - lo)).clamp_(0.0, 1.0).mul_(255.0).round_()
    return t.to(torch.uint8).numpy()


def resize(images: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize float images ``(N, C, *spatial)`` to ``size`` (bilinear / trilinear, antialiased).

    Antialiasing is only available for 2D in PyTorch; 3D volumes are resized
    trilinearly without it. Returns the input unchanged if it already has ``size``.
    """
    if tuple(images.shape[2:]) == tuple(size):
        return images
    dims = images.dim() - 2
    if dims == 2:
        return F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=True
        )
    if dims == 3:
        return F.interpolate(images, size=size, mode="trilinear", align_corners=False)
    raise GeneratorError(f"cannot resize images with {dims} spatial dimensions")


def image_grid(images: np.ndarray, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """Tile uint8 images ``(N, C, *spatial)`` into one greyscale mosaic (H', W').

    The first channel is shown; 3D volumes show their middle slice along D.
    """
    imgs = np.asarray(images)
    if imgs.ndim == 5:
        imgs = imgs[:, :, imgs.shape[2] // 2]
    imgs = imgs[:, 0]
    n, h, w = imgs.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = imgs[k]
    return grid


def save_grid(images: np.ndarray, path: str | Path, ncol: int = 8, scale: int = 1) -> Path:
    """Save :func:`image_grid` of uint8 ``images`` as a PNG, atomically."""
    from PIL import Image

    grid = Image.fromarray(image_grid(images, ncol=ncol))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return Path(path)


class GeneratorTrainer(abc.ABC):
    """How a trainable generator kind trains on a real file's train split."""

    #: The dataclass of its training options (``generator.train`` in experiments).
    config_class: ClassVar[type]

    @staticmethod
    @abc.abstractmethod
    def fit(data: Path, out: Path, options: dict[str, Any], device: str) -> Path:
        """Train (or resume) into ``out`` on the train split of ``data``; returns ``out``."""


#: Training of the trainable generator kinds, by the generator's registry name.
GENERATOR_TRAINERS: Registry[type[GeneratorTrainer]] = Registry(
    "generator trainers", "train a generator on a real train split"
)


class Generator(abc.ABC):
    """Base class of synthetic image sources.

    Subclasses implement :meth:`sample_batch` and :meth:`describe`. A trainable
    kind sets ``trainable``, registers its training in :data:`GENERATOR_TRAINERS`
    and provides a ``load`` class method for a trained folder (see
    :class:`pretrain.generators.ddpm.DDPMGenerator` and
    :class:`pretrain.generators.ddpm_train.DDPMTraining`).

    Args:
        image_shape: Per-sample shape ``(C, H, W)`` or ``(C, D, H, W)``.
    """

    name: ClassVar[str] = ""
    #: Whether the generator learns from data (``sslbench synth train``); a trainable
    #: kind registers its training in :data:`GENERATOR_TRAINERS` under the same name
    #: and loads a trained folder with ``load(folder, steps=, device=, output_shape=)``.
    trainable: ClassVar[bool] = False
    #: Constructor options that are paths: resolved by experiment files and kept out
    #: of job keys (a fingerprint of their content goes in instead).
    path_options: ClassVar[tuple[str, ...]] = ()
    #: Whether the constructor takes ``like`` (a real file whose shape it must match).
    takes_like: ClassVar[bool] = False
    #: Whether sampling takes a number of denoising steps (``sample_steps``).
    has_sample_steps: ClassVar[bool] = False

    def __init__(self, image_shape: tuple[int, ...]) -> None:
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) not in (3, 4):
            raise GeneratorError(
                f"image shape must be (C, H, W) or (C, D, H, W), got {self.image_shape}"
            )

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return len(self.image_shape) - 1

    @property
    def num_available(self) -> int | None:
        """How many samples exist (imported sets), or None when unlimited."""
        return None

    @abc.abstractmethod
    def sample_batch(self, start: int, count: int, seed: int, batch_index: int) -> np.ndarray:
        """Samples ``start .. start + count - 1`` as uint8 ``(count, C, *spatial)``.

        Implementations must be a pure function of the arguments (and the
        generator's weights), so that the same seed gives the same images.
        """

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable provenance stored in the synthetic file's ``meta.extra``."""

    def source_name(self, i: int, seed: int) -> str:
        """The ``source_files`` entry of sample ``i`` (where it came from)."""
        return f"{self.name}:seed{seed}:sample{i}"

    def dataset_meta(self) -> DatasetMeta:
        """Descriptive attributes of the synthetic file."""
        return DatasetMeta(
            name=f"synth-{self.name}",
            modality="synthetic",
            source=f"sslbench generator {self.name!r}",
            converter=f"synth-{self.name}",
            licence="generated",
            extra={"generator": self.describe()},
        )

    def iter_batches(
        self, n: int, seed: int = 0, batch_size: int = 16
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, uint8 images)`` in batches of ``batch_size`` (the last may be short)."""
        if int(n) != n or n < 1:
            raise GeneratorError(f"number of samples must be a positive integer, got {n!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise GeneratorError(f"batch size must be a positive integer, got {batch_size!r}")
        avail = self.num_available
        if avail is not None and n > avail:
            raise GeneratorError(f"{n} samples requested but only {avail} are available")
        for b, start in enumerate(range(0, int(n), int(batch_size))):
            count = min(int(batch_size), int(n) - start)
            out = np.asarray(self.sample_batch(start, count, int(seed), b))
            expected = (count, *self.image_shape)
            if out.shape != expected or out.dtype != np.uint8:
                raise GeneratorError(
                    f"generator {self.name!r} returned {out.dtype} {out.shape}, "
                    f"expected uint8 {expected}"
                )
            yield start, out

    def sample(self, n: int, seed: int = 0, batch_size: int = 16) -> np.ndarray:
        """``n`` samples as one uint8 array ``(n, C, *spatial)``."""
        return np.concatenate([b for _, b in self.iter_batches(n, seed, batch_size)])


def write_synthetic(
    generator: Generator,
    n: int,
    out: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Sample ``n`` images from ``generator`` into an sslbench HDF5 file, atomically.

    Args:
        generator: The image source.
        n: Number of images.
        out: Output ``.h5`` path (refused if it exists and ``overwrite`` is false).
        seed: Sampling seed (recorded).
        batch_size: Images per :meth:`Generator.sample_batch` call.
        overwrite: Replace an existing output.
        progress: Show a progress bar.
        extra: More provenance merged into ``meta.extra``.

    Returns:
        The output path.
    """
    check_output_path(out, overwrite)
    meta = generator.dataset_meta()
    meta.extra.update(
        {
            "n": int(n),
            "seed": int(seed),
            "batch_size": int(batch_size),
            "split_policy": "every synthetic sample is in split 'train'",
            **(extra or {}),
        }
    )
    bar = tqdm(
        total=int(n),
        disable=not progress,
        unit="img",
        desc=f"sample {generator.name}",
        dynamic_ncols=True,
    )
    try:
        with H5Writer(
            out,
            n=int(n),
            image_shape=generator.image_shape,
            meta=meta,
            image_dtype=np.uint8,
            has_masks=False,
            label_shape=None,
            overwrite=overwrite,
        ) as writer:
            for start, batch in generator.iter_batches(n, seed, batch_size):
                for k, image in enumerate(batch):
                    i = start + k
                    writer.write(
                        i,
                        image,
                        patient_id=PATIENT_ID_FORMAT.format(i),
                        split="train",
                        source_file=generator.source_name(i, seed),
                    )
                bar.update(len(batch))
    finally:
        bar.close()
    return Path(out)
