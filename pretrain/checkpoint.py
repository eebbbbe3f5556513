"""The shared encoder checkpoint format.

A checkpoint is a folder with two files:

* ``encoder.pt``: the encoder's ``state_dict`` (``torch.save``);
* ``encoder.json``: metadata: encoder name and constructor args, feature
  contract, method, source, synthetic ratio, steps, batch size, seed, data file
  content hashes, resolved config, package versions, git commit and the
  SHA-256 of ``encoder.pt``.

:func:`load_encoder` rebuilds the encoder from the checkpoint alone; it is the
only thing task adapters need. Both files are written atomically, weights
first, so a folder with a valid ``encoder.json`` always has matching weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmark.core.errors import DataError
from benchmark.core.io import atomic_path, atomic_write_json, provenance, sha256_file
from pretrain.encoders import Encoder, create_encoder

WEIGHTS = "encoder.pt"
METADATA = "encoder.json"
CHECKPOINT_VERSION = "1"


def _folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.name in (WEIGHTS, METADATA) else p


def save_encoder(path: str | Path, encoder: Encoder, metadata: dict[str, Any]) -> Path:
    """Save ``encoder`` and ``metadata`` into the checkpoint folder ``path``.

    Returns:
        The checkpoint folder.
    """
    folder = _folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        torch.save(state, tmp)
    meta = {
        **metadata,
        "checkpoint_version": CHECKPOINT_VERSION,
        "encoder": encoder.describe(),  # always the full description, never a bare name
        "weights_sha256": sha256_file(folder / WEIGHTS),
    }
    meta.setdefault("provenance", provenance())
    atomic_write_json(folder / METADATA, meta)
    return folder


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint folder (or of its ``encoder.pt``/``encoder.json``)."""
    folder = _folder(path)
    meta_path = folder / METADATA
    if not folder.exists():
        raise DataError(f"{folder}: no such checkpoint")
    if not meta_path.exists():
        raise DataError(f"{folder}: not an sslbench encoder checkpoint (missing {METADATA})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: unreadable checkpoint metadata ({exc})") from None
    if "encoder" not in meta or "name" not in meta["encoder"]:
        raise DataError(f"{meta_path}: checkpoint metadata has no encoder name")
    return dict(meta)


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 of the checkpoint's weights (identifies the encoder for caches and records)."""
    return str(read_checkpoint_meta(path)["weights_sha256"])


def load_encoder(
    path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True
) -> Encoder:
    """Rebuild the encoder of a checkpoint with its weights.

    Args:
        path: Checkpoint folder, or its ``encoder.pt`` / ``encoder.json``.
        map_location: Device to load the weights on.
        verify: Check the weights' SHA-256 against the metadata.

    Returns:
        The encoder in eval mode, with ``checkpoint_meta`` set to the metadata. An
        encoder that started from external weights (``init``) is rebuilt without
        reading them again; its ``init`` and ``init_info`` come from the metadata.
    """
    folder = _folder(path)
    meta = read_checkpoint_meta(folder)
    weights = folder / WEIGHTS
    if not weights.exists():
        raise DataError(f"{folder}: checkpoint has no {WEIGHTS}")
    if verify and sha256_file(weights) != meta.get("weights_sha256"):
        raise DataError(f"{weights}: weights do not match the hash in {METADATA} (corrupted?)")
    args = dict(meta["encoder"].get("args", {}))
    # the checkpoint's weights replace any external initial weights: do not read them again
    init = args.pop("init", None)
    encoder = create_encoder(meta["encoder"]["name"], **args)
    if init is not None:
        encoder.encoder_args["init"] = init
        encoder.init_info = meta["encoder"].get("init")
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise DataError(f"{weights}: unreadable weights ({exc.__class__.__name__})") from None
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(
            f"{weights}: weights do not fit encoder {meta['encoder']['name']!r} "
            f"(missing {len(missing)}, unexpected {len(unexpected)} keys)"
        )
    encoder.to(map_location).eval()
    encoder.checkpoint_meta = meta
    return encoder
