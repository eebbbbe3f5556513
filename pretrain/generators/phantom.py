"""The procedural ultrasound phantom as a synthetic-image generator.

Wraps :func:`benchmark.data.phantom.phantom_sample` so that the phantom can be
used like any other generator (``sslbench synth phantom``): a cheap, fully
known synthetic source to compare a trained DDPM against, and the synthetic
source of the quick demo. Unlike ``sslbench data phantom`` (a labelled *real*
stand-in dataset with masks, patients and a train/val/test split), the files
written here have no labels or masks and every image is in split ``train``,
exactly like the files sampled from a DDPM.

Sample ``i`` is a pure function of ``(seed, i)``: its class (none / smooth /
irregular lesion, drawn with the phantom's default class balance) and its
scene come from ``SeedSequence([seed, tag], spawn_key=(i,))``, so the images do
not depend on the batch size or on ``n``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from benchmark.data.h5format import DatasetMeta
from benchmark.data.phantom import (
    CLASS_NAMES,
    DEFAULT_CLASS_BALANCE,
    GENERATOR_VERSION,
    PhantomError,
    phantom_sample,
)
from pretrain.generators.base import GENERATORS, Generator, GeneratorError

_TAG = 0x5E7A


@GENERATORS.register("phantom")
class PhantomGenerator(Generator):
    """Procedural phantom images of a fixed size.

    Args:
        size: Height and width in pixels (>= 16).
        dims: 2 for images ``(1, size, size)``, 3 for volumes ``(1, D, size, size)``.
        depth: Slices of a 3D volume (default ``size``).
        class_balance: Weights of the none / smooth / irregular lesion classes.
    """

    name: ClassVar[str] = "phantom"

    def __init__(
        self,
        size: int = 64,
        dims: int = 2,
        depth: int | None = None,
        class_balance: tuple[float, float, float] = DEFAULT_CLASS_BALANCE,
    ) -> None:
        w = np.asarray(class_balance, dtype=np.float64)
        if w.shape != (3,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise GeneratorError(
                f"class_balance needs 3 non-negative weights, got {class_balance!r}"
            )
        self.size, self.dims, self.depth = int(size), int(dims), depth
        self.class_balance = tuple(float(x) for x in w / w.sum())
        try:  # validates size, dims and depth with the phantom's own messages
            image, _ = phantom_sample(np.random.default_rng(0), 0, self.size, self.dims, depth)
        except PhantomError as exc:
            raise GeneratorError(str(exc)) from None
        super().__init__(tuple(image.shape))

    def sample_batch(self, start: int, count: int, seed: int, batch_index: int) -> np.ndarray:
        out = np.empty((count, *self.image_shape), dtype=np.uint8)
        for k in range(count):
            rng = np.random.default_rng(
                np.random.SeedSequence([seed, _TAG], spawn_key=(start + k,))
            )
            cls = int(rng.choice(3, p=self.class_balance))
            out[k], _ = phantom_sample(rng, cls, self.size, self.dims, self.depth)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phantom_version": GENERATOR_VERSION,
            "size": self.size,
            "dims": self.dims,
            "depth": self.depth,
            "class_balance": dict(zip(CLASS_NAMES, self.class_balance, strict=True)),
            "seeding": "sample i from SeedSequence([seed, 0x5E7A], spawn_key=(i,))",
        }

    def dataset_meta(self) -> DatasetMeta:
        meta = super().dataset_meta()
        meta.modality = "synthetic-ultrasound-phantom"
        meta.spacing = [1.0] * self.dims
        meta.licence = "Apache-2.0 (generated)"
        return meta
