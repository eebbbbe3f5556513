"""Quality report of a synthetic dataset against the real train split.

``sslbench synth report synth.h5 --real real.h5 -o report/`` writes
``report.json``, ``report.md`` and PNG figures. All three questions of a
synthetic pretraining source are answered on the **train split** of the real
file, the data a generator is allowed to learn from:

Fidelity: the Fréchet Inception Distance (Heusel et al. 2017) computed with
MONAI's :class:`~monai.metrics.FIDMetric` on pooled features of a fixed
extractor. ImageNet Inception weights cannot be downloaded here, so the default
extractor is a ResNet-18 (``pretrain.encoders``, single channel) randomly
initialised with ``torch.manual_seed(0)``, whose weights' SHA-256 is recorded;
``--extractor CKPT`` uses an sslbench encoder checkpoint instead. Images are
fed in [0, 1], resized to ``max(64, H rounded up to the encoder's size
multiple)``. The FID between two random halves of the real train images is
reported as a floor on the same scale (``fid_real_halves``; a random network's
features have an arbitrary scale, so read the synthetic FID relative to it).
**FIDs are only comparable when computed with the same extractor
(same name and weights hash) and similar sample sizes**; they are not comparable
with published Inception FIDs. When there are fewer images than feature
dimensions, the features are projected onto the span of the centred features
and the mean difference, which leaves the Fréchet distance unchanged (both
covariances vanish outside that subspace) and avoids a slow, ill-conditioned
512 x 512 matrix square root.

Diversity: mean MS-SSIM (Wang et al. 2003, MONAI's
:class:`~monai.metrics.MultiScaleSSIMMetric`) between random pairs of distinct
synthetic images, and the same for real train images; lower means more
diverse, and a synthetic value far above the real one signals mode collapse.
The standard 5 scales with an 11-pixel window need images of at least 176 px,
so small images use fewer scales (:func:`ms_ssim_params`): a 7-pixel window
(sigma 1.5 x 7 / 11) and as many scales as fit, keeping the first weights of
the standard set, renormalised to sum to one.

Memorisation: images are compared in pixel space (values in [0, 1],
downsampled with antialiasing to at most 32 px per side, flattened, L2). For
each synthetic image ``s`` let ``d(s)`` be the distance to its nearest real
train image ``r*(s)``; for each real train image ``r`` let ``d_rr(r)`` be the
distance to its nearest *other* real train image. Reported:

* ``ratio(s) = d(s) / d_rr(r*(s))``: how much closer ``s`` is to its match than
  the match's own nearest real neighbour (below 1: closer than any other real
  image is; near 0: a copy), as quantiles and the fraction below 1;
* ``fraction_closer_than_median_real_nn``: the fraction of synthetic images with
  ``d(s) < median_r d_rr(r)``, i.e. closer to the training set than a typical
  real image is to its nearest neighbour;
* ``closest_pairs.png``: the synthetic images with the smallest ``d(s)`` above
  their nearest real image, for inspection.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.linalg import LinAlgWarning

from benchmark.core.errors import DataError, OutputExistsError
from benchmark.core.io import atomic_path, atomic_write_json, atomic_write_text, provenance
from benchmark.data.dataset import H5Dataset
from benchmark.data.h5format import open_h5, read_split
from pretrain.generators.base import image_grid, resize, to_uint8

STANDARD_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
PIXEL_SIZE = 32


def load_images(
    path: str | Path, split: str | None, max_images: int, seed: int, what: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Float [0, 1] images of ``split`` (all samples if None), at most ``max_images``."""
    p = Path(path)
    with open_h5(p) as f:
        n_split = int((read_split(f) == split).sum()) if split else int(f["images"].shape[0])
    if split and n_split == 0:
        raise DataError(f"{p}: {what} file has no samples in the {split} split")
    ds = H5Dataset(p, split=split, keys=())
    idx = np.arange(len(ds))
    if len(ds) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), max_images, replace=False))
    images = ds.to_float(ds.raw_images(idx))
    ds.close()
    info = {
        "path": str(p.resolve()),
        "split": split or "all",
        "n": len(ds),
        "n_used": len(idx),
        "content_hash": ds.meta.get("content_hash"),
        "name": ds.meta.get("name"),
        "generator": ds.meta.get("extra", {}).get("generator"),
    }
    return images, info


def default_extractor(
    in_chans: int, seed: int = 0, spatial_dims: int = 2
) -> tuple[Any, dict[str, Any]]:
    """The fixed, seeded, randomly initialised feature extractor.

    ResNet-18 (timm) for images, 3D ResNet-10 (MONAI) for volumes.
    """
    from pretrain.encoders import create_encoder

    name = "resnet18" if spatial_dims == 2 else "resnet10_3d"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = create_encoder(name, in_chans=in_chans)
    h = hashlib.sha256()
    for k, v in sorted(encoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return encoder.eval(), {
        "name": name,
        "weights": f"random init, seed {seed}",
        "seed": seed,
        "weights_sha256": h.hexdigest(),
    }


def extract_features(encoder: Any, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pooled features of float [0, 1] images, resized to a size the encoder accepts."""
    size = extractor_input_size(encoder, tuple(images.shape[2:]))
    feats = []
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            feats.append(encoder.forward_features(resize(images[s : s + batch_size], size)))
    return torch.cat(feats).double()


def extractor_input_size(encoder: Any, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Input size of the extractor: each side rounded up to its size multiple, at least
    64 px for images and 32 voxels for volumes (cheap on a CPU)."""
    m = int(getattr(encoder, "size_multiple", 32))
    floor = 64 if len(spatial) == 2 else 32
    return tuple(max(floor, math.ceil(s / m) * m) for s in spatial)


def fid(synthetic: torch.Tensor, real: torch.Tensor) -> float:
    """FID between two feature sets with MONAI's FIDMetric (lossless subspace reduction)."""
    from monai.metrics import FIDMetric

    if synthetic.shape[0] < 2 or real.shape[0] < 2:
        raise DataError("FID needs at least 2 synthetic and 2 real images")
    mu_s, mu_r = synthetic.mean(0), real.mean(0)
    basis = torch.cat([synthetic - mu_s, real - mu_r, (mu_s - mu_r)[None]])
    if basis.shape[0] < basis.shape[1]:
        q, _ = torch.linalg.qr(basis.T)  # (D, k) orthonormal, spans every centred vector
        synthetic, real = synthetic @ q, real @ q
    with warnings.catch_warnings():  # rank-deficient covariances are expected at small n
        warnings.simplefilter("ignore", LinAlgWarning)
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        return float(FIDMetric()(synthetic, real))


def fid_real_halves(real: torch.Tensor, seed: int) -> float | None:
    """FID between two random halves of the real features: a floor on the same scale."""
    if real.shape[0] < 4:
        return None
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(real.shape[0]))
    half = real.shape[0] // 2
    return fid(real[perm[:half]], real[perm[half : 2 * half]])


def ms_ssim_params(spatial: tuple[int, ...]) -> dict[str, Any]:
    """Window and scales of MS-SSIM that fit images of ``spatial`` size (see module doc)."""
    side = min(spatial)
    for k in (11, 7, 5, 3):
        if k == 11 and side < 176:
            continue
        scales = 0
        for s in range(5, 0, -1):  # also satisfy MONAI's size check ((s - 1)**2 divisor)
            if side // 2 ** (s - 1) > k - 1 and side // max(1, (s - 1) ** 2) > k - 1:
                scales = s
                break
        if scales >= 2 or k == 3:
            break
    if scales < 1:
        raise DataError(f"images of size {spatial} are too small for MS-SSIM")
    w = np.asarray(STANDARD_MS_SSIM_WEIGHTS[:scales])
    return {
        "kernel_size": k,
        "kernel_sigma": 1.5 * k / 11,
        "scales": scales,
        "weights": (w / w.sum()).tolist(),
    }


def ms_ssim_pairs(
    images: torch.Tensor, n_pairs: int, seed: int, params: dict[str, Any]
) -> dict[str, Any]:
    """Mean and std of MS-SSIM over ``n_pairs`` random pairs of distinct images."""
    from monai.metrics import MultiScaleSSIMMetric

    n = images.shape[0]
    if n < 2:
        return {"mean": None, "std": None, "n_pairs": 0}
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # never i
    metric = MultiScaleSSIMMetric(
        spatial_dims=images.dim() - 2,
        data_range=1.0,
        kernel_size=params["kernel_size"],
        kernel_sigma=params["kernel_sigma"],
        weights=params["weights"],
        reduction="none",
    )
    vals = torch.cat(
        [
            torch.as_tensor(metric(images[i[s : s + 256]], images[j[s : s + 256]])).flatten()
            for s in range(0, n_pairs, 256)
        ]
    ).double()
    return {
        "mean": float(vals.mean()),
        "std": float(vals.std()) if n_pairs > 1 else 0.0,
        "n_pairs": int(n_pairs),
    }


def _pixels(images: torch.Tensor) -> torch.Tensor:
    size = tuple(min(PIXEL_SIZE, s) for s in images.shape[2:])
    return resize(images, size).flatten(1).double()


def _quantiles(x: np.ndarray) -> dict[str, float]:
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return {}
    return {f"q{round(q * 100):02d}": float(np.quantile(finite, q)) for q in QUANTILES}


def memorisation(synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, Any]:
    """Nearest-real-neighbour distances and ratios (definitions in the module doc)."""
    s, r = _pixels(synthetic), _pixels(real)
    if r.shape[0] < 2:
        raise DataError("memorisation needs at least 2 real train images")
    d_sr = torch.cdist(s, r)
    d_syn, nn = d_sr.min(1)
    d_rr = torch.cdist(r, r)
    d_rr.fill_diagonal_(float("inf"))
    d_real = d_rr.min(1).values
    ref = d_real[nn]
    ratio = torch.where(
        ref > 0, d_syn / ref.clamp_min(1e-300), torch.where(d_syn > 0, float("inf"), 0.0)
    ).numpy()
    median_real = float(d_real.median())
    return {
        "space": f"pixels in [0, 1], downsampled to <= {PIXEL_SIZE} px per side, L2",
        "fraction_closer_than_median_real_nn": float((d_syn < median_real).double().mean()),
        "median_real_nn_distance": median_real,
        "fraction_ratio_below_1": float((ratio < 1).mean()),
        "ratio_quantiles": _quantiles(ratio),
        "ratio_n_infinite": int(np.isinf(ratio).sum()),
        "synthetic_nn_distance_quantiles": _quantiles(d_syn.numpy()),
        "real_nn_distance_quantiles": _quantiles(d_real.numpy()),
        "_d_syn": d_syn.numpy(),
        "_nn": nn.numpy(),
        "_ratio": ratio,
        "_d_real": d_real.numpy(),
    }


def _save_fig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_figures(
    out: Path,
    synthetic: torch.Tensor,
    real: torch.Tensor,
    mem: dict[str, Any],
    seed: int,
    n_pairs: int = 8,
) -> dict[str, str]:
    """Real-vs-synthetic grid, closest pairs and distance histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    pick = [
        np.sort(rng.choice(x.shape[0], min(16, x.shape[0]), replace=False))
        for x in (real, synthetic)
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, x, p, title in zip(
        axes, (real, synthetic), pick, ("real (train)", "synthetic"), strict=True
    ):
        ax.imshow(image_grid(to_uint8(x[p]), ncol=4), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title)
        ax.axis("off")
    _save_fig(fig, out / "samples_real_vs_synthetic.png")

    order = np.argsort(mem["_d_syn"], kind="stable")[:n_pairs]
    fig, axes = plt.subplots(2, len(order), figsize=(1.6 * len(order), 3.6), squeeze=False)
    for c, k in enumerate(order):
        for row, img in enumerate((synthetic[k], real[int(mem["_nn"][k])])):
            mid = img[:, img.shape[1] // 2] if img.dim() == 4 else img
            axes[row, c].imshow(to_uint8(mid)[0], cmap="gray", vmin=0, vmax=255)
            axes[row, c].axis("off")
        axes[0, c].set_title(f"d={mem['_d_syn'][k]:.2f}\nratio={mem['_ratio'][k]:.2f}", fontsize=7)
    fig.suptitle(
        "closest synthetic images (top) and their nearest real train image (bottom)", fontsize=8
    )
    _save_fig(fig, out / "closest_pairs.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(mem["_d_real"], bins=30, alpha=0.6, density=True, label="real -> nearest other real")
    ax.hist(mem["_d_syn"], bins=30, alpha=0.6, density=True, label="synthetic -> nearest real")
    ax.axvline(mem["median_real_nn_distance"], color="k", lw=1, ls="--", label="median real NN")
    ax.set_xlabel("L2 distance (pixels)")
    ax.legend(fontsize=7)
    _save_fig(fig, out / "nn_distances.png")
    files = {
        "grid": "samples_real_vs_synthetic.png",
        "closest_pairs": "closest_pairs.png",
        "nn_distances": "nn_distances.png",
    }
    if synthetic.dim() == 5:
        _orthogonal_slices(out / "orthogonal_slices.png", real[pick[0][:4]], synthetic[pick[1][:4]])
        files["orthogonal_slices"] = "orthogonal_slices.png"
    return files


def _orthogonal_slices(path: Path, real: torch.Tensor, synthetic: torch.Tensor) -> None:
    """Axial, coronal and sagittal middle slices of a few real and synthetic volumes."""
    import matplotlib.pyplot as plt

    vols = [("real", v) for v in real] + [("synthetic", v) for v in synthetic]
    fig, axes = plt.subplots(len(vols), 3, figsize=(5.4, 1.8 * len(vols)), squeeze=False)
    for r, (label, v) in enumerate(vols):
        x = to_uint8(v)[0]  # (D, H, W)
        d, h, w = x.shape
        for c, (sl, name) in enumerate(
            ((x[d // 2], "axial"), (x[:, h // 2], "coronal"), (x[:, :, w // 2], "sagittal"))
        ):
            axes[r, c].imshow(sl, cmap="gray", vmin=0, vmax=255)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        axes[r, 0].text(-2, d // 2, label, fontsize=7, ha="right", va="center", rotation=90)
    fig.suptitle("orthogonal middle slices: real (top) and synthetic (bottom)", fontsize=8)
    _save_fig(fig, path)


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the numbers of ``report.json`` with their definitions."""
    ex, ms, mem = report["extractor"], report["ms_ssim"], report["memorisation"]
    rq = mem["ratio_quantiles"]
    lines = [
        "# Synthetic data quality report",
        "",
        f"- synthetic: `{report['synthetic']['path']}` ({report['synthetic']['n_used']} of "
        f"{report['synthetic']['n']} images)",
        f"- real (train split): `{report['real']['path']}` ({report['real']['n_used']} of "
        f"{report['real']['n']} images)",
        f"- image shape: {tuple(report['image_shape'])}",
        "",
        "## Fidelity",
        "",
        f"FID = **{_fmt(report['fid'])}** (MONAI FIDMetric, Heusel et al. 2017) on "
        f"{ex['num_features']}-d pooled features of `{ex['name']}` ({ex['weights']}, weights "
        f"sha256 `{ex['weights_sha256'][:16]}...`, input "
        f"{' x '.join(map(str, ex['input_size']))} px).",
        "",
        f"Reference: FID between two random halves of the real train images = "
        f"{_fmt(report['fid_real_halves'])} (same extractor; the scale of a random extractor's "
        "features is arbitrary, so read the synthetic FID relative to this floor).",
        "",
        "FIDs are only comparable with the same extractor (name and weights hash) and similar "
        "sample sizes; they are not Inception FIDs."
        + (
            " With fewer images than feature dimensions the FID is strongly biased upwards."
            if "biased" in report["fid_note"]
            else ""
        ),
        "",
        "## Diversity (MS-SSIM between random pairs; lower = more diverse)",
        "",
        "| set | mean | std | pairs |",
        "|---|---|---|---|",
        *(
            f"| {k} | {_fmt(ms[k]['mean'])} | {_fmt(ms[k]['std'])} | {ms[k]['n_pairs']} |"
            for k in ("synthetic", "real")
        ),
        "",
        f"Window {ms['params']['kernel_size']} px, {ms['params']['scales']} scales, weights "
        f"{[round(w, 4) for w in ms['params']['weights']]} (fewer scales than the standard 5 "
        "for small images).",
        "",
        "## Memorisation",
        "",
        f"Distances: {mem['space']}. d(s) = distance of a synthetic image to its nearest real "
        "train image r*; d_rr(r) = distance of a real train image to its nearest other real "
        "train image; ratio(s) = d(s) / d_rr(r*).",
        "",
        f"- fraction of synthetic images closer to the training set than the median real "
        f"nearest-neighbour distance ({_fmt(mem['median_real_nn_distance'])}): "
        f"**{_fmt(mem['fraction_closer_than_median_real_nn'])}**",
        f"- fraction with ratio < 1: **{_fmt(mem['fraction_ratio_below_1'])}**",
        "- ratio quantiles: " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in rq.items()),
        "",
        "## Figures",
        "",
        *(f"- `{f}`" for f in report["files"].values()),
        "",
    ]
    return "\n".join(lines)


def synth_report(
    synthetic: str | Path,
    real: str | Path,
    out_dir: str | Path,
    *,
    extractor: str | Path | None = None,
    max_images: int = 2000,
    n_pairs: int = 500,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the quality report of ``synthetic`` against the train split of ``real``.

    Args:
        synthetic: Synthetic sslbench file (its train split, or every sample if none).
        real: Real sslbench file (its train split only).
        out_dir: Folder for ``report.json``, ``report.md`` and the PNG figures.
        extractor: sslbench encoder checkpoint for FID features (default: seeded random
            ResNet-18).
        max_images: Seeded random subset size per set (FID, MS-SSIM and memorisation).
        n_pairs: Random pairs for MS-SSIM.
        seed: Seed of the subsets, pairs and figure picks.
        overwrite: Replace an existing report.

    Returns:
        The report as written to ``report.json``.
    """
    out = Path(out_dir)
    if (out / "report.json").exists() and not overwrite:
        raise OutputExistsError(f"{out}: holds a report already; pass --overwrite to replace it")
    if max_images < 2 or n_pairs < 1:
        raise DataError(f"max_images must be >= 2 and pairs >= 1, got {max_images}, {n_pairs}")
    with open_h5(synthetic) as f:
        syn_split = "train" if (read_split(f) == "train").any() else None
    syn, syn_info = load_images(synthetic, syn_split, max_images, seed, "synthetic")
    real_x, real_info = load_images(real, "train", max_images, seed + 1, "real")
    if syn.shape[1:] != real_x.shape[1:]:
        raise DataError(
            f"{synthetic}: images have shape {tuple(syn.shape[1:])} but the real "
            f"images of {real} have {tuple(real_x.shape[1:])}"
        )
    if syn.dim() not in (4, 5):
        raise DataError(f"{synthetic}: expected 2D images or 3D volumes, got {tuple(syn.shape)}")
    if extractor is None:
        encoder, ex_info = default_extractor(int(syn.shape[1]), spatial_dims=syn.dim() - 2)
    else:
        from pretrain.checkpoint import checkpoint_hash, load_encoder

        encoder = load_encoder(extractor)
        ex_info = {
            "name": encoder.name,
            "weights": f"checkpoint {Path(extractor).resolve()}",
            "weights_sha256": checkpoint_hash(extractor),
        }
        if encoder.in_chans != syn.shape[1] or encoder.spatial_dims != syn.dim() - 2:
            raise DataError(
                f"{extractor}: extractor takes {encoder.in_chans}-channel "
                f"{encoder.spatial_dims}D inputs, images are {tuple(syn.shape[1:])}"
            )
    f_syn, f_real = extract_features(encoder, syn), extract_features(encoder, real_x)
    ex_info.update(
        num_features=int(f_syn.shape[1]),
        input_size=list(extractor_input_size(encoder, tuple(syn.shape[2:]))),
    )
    params = ms_ssim_params(tuple(syn.shape[2:]))
    mem = memorisation(syn, real_x)
    out.mkdir(parents=True, exist_ok=True)
    files = save_figures(out, syn, real_x, mem, seed)
    report = {
        "synthetic": syn_info,
        "real": real_info,
        "image_shape": list(syn.shape[1:]),
        "fid": fid(f_syn, f_real),
        "fid_real_halves": fid_real_halves(f_real, seed),
        "extractor": ex_info,
        "fid_note": "comparable only with the same extractor (name + weights_sha256) and "
        "similar sample sizes"
        + (
            "; fewer images than feature dimensions: strongly biased upwards"
            if min(len(f_syn), len(f_real)) < f_syn.shape[1]
            else ""
        ),
        "ms_ssim": {
            "synthetic": ms_ssim_pairs(syn, n_pairs, seed, params),
            "real": ms_ssim_pairs(real_x, n_pairs, seed + 1, params),
            "params": params,
        },
        "memorisation": {k: v for k, v in mem.items() if not k.startswith("_")},
        "files": files,
        "seed": seed,
        "max_images": max_images,
        "provenance": provenance(),
    }
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_json(out / "report.json", report)
    return report
