"""External initial weights of an encoder: the ``init`` option.

``init`` is an encoder constructor argument (in ``encoder_args``, or
``--encoder-set init=...`` on the command line):

* ``random`` (the default): random initialisation, nothing is read;
* ``timm:<tag>``, e.g. ``timm:resnet18.a1_in1k``: the pretrained weights timm
  resolves for that tag (``timm.create_model(tag, pretrained=True)``). This needs
  the internet, or the weights already in timm's / Hugging Face's cache; offline
  it is a clear error that says how to use a local file instead;
* a path to a weights file: ``.pt`` / ``.pth`` / ``.bin`` (``torch.save``) or
  ``.safetensors`` (when the ``safetensors`` package is installed), holding the
  state dict of a timm model or of an sslbench encoder (its checkpoint's
  ``encoder.pt``; a checkpoint folder may be given too). Wrappers (``{"state_dict":
  ...}``, ``{"model": ...}``) and ``module.`` / ``model.`` key prefixes are removed.

Weights are loaded the way timm's ``load_pretrained`` loads them, but strictly:
the model's checkpoint filter (ViT position and patch embeddings resampled to the
encoder's image and patch size), then the input convolution adapted with timm's
``adapt_input_conv`` when the channel counts differ (``in_chans=1`` sums the RGB
kernels), then the classifier's keys dropped (sslbench encoders have no
classifier). Any other missing, unexpected or mis-shaped key is an error naming
the file and the keys.

The encoder keeps what it loaded in ``Encoder.init_info`` (part of
``Encoder.describe()``, hence of checkpoint metadata and evaluation records):
the spec, the file name, the SHA-256 of the file (``hash_of: file``) or, for a
timm tag, of the resolved weights (``hash_of: state_dict``, see
:func:`state_dict_sha256`), and which keys were adapted and dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.core.errors import DataError, SSLBenchError
from benchmark.core.io import sha256_file

RANDOM = "random"
TIMM_PREFIX = "timm:"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
#: A checkpoint folder given as ``init`` stands for this file in it.
CHECKPOINT_WEIGHTS = "encoder.pt"
#: Markers of ImageNet-trained timm tags (``resnet18.a1_in1k``, ``..._in21k_ft_in1k``).
_IMAGENET_TAG = re.compile(r"(^|[._])in(1k|12k|21k|22k)")
#: Keys listed in an error message before "... and N more".
_MAX_KEYS = 8
#: What an ``init`` value can be (the end of every error about one).
INIT_HELP = (
    "init is 'random', 'timm:<tag>' (e.g. timm:resnet18.a1_in1k) or the path of a "
    ".pt/.pth/.bin/.safetensors state dict"
)


@dataclass(frozen=True)
class InitSpec:
    """A parsed ``init`` value.

    Attributes:
        kind: ``random``, ``timm`` or ``file``.
        value: The timm tag (``timm``) or the resolved absolute path (``file``).
    """

    kind: str
    value: str = ""

    @property
    def spec(self) -> str:
        """The ``init`` string that rebuilds this spec (``random``, ``timm:<tag>`` or a path)."""
        if self.kind == "timm":
            return TIMM_PREFIX + self.value
        return self.value if self.kind == "file" else RANDOM

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def identity(self) -> dict[str, Any]:
        """What the weights are, without any path (for job keys and record fingerprints).

        Returns:
            ``{"kind": "random"}``, ``{"kind": "timm", "tag": ...}`` or ``{"kind": "file",
            "sha256": <SHA-256 of the file>}``: a file is identified by its content, so an
            edited file changes the identity and a moved one does not.
        """
        if self.kind == "timm":
            return {"kind": "timm", "tag": self.value}
        if self.kind == "file":
            return {"kind": "file", "sha256": sha256_file(self.value)}
        return {"kind": "random"}

    def display_name(self) -> str:
        """The tag, or the file name (a checkpoint's ``encoder.pt``: its folder's name)."""
        if self.kind != "file":
            return self.value or RANDOM
        p = Path(self.value)
        return p.parent.name if p.name == CHECKPOINT_WEIGHTS else p.name

    def slug(self) -> str:
        """A short file-name-safe name: the tag, or the weights file's stem."""
        name = self.value if self.kind == "timm" else Path(self.display_name()).stem
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "weights"

    def label(self, arch: str) -> str:
        """The leaderboard row of an arm initialised with these weights.

        ``ImageNet init (resnet18.a1_in1k)`` for an ImageNet timm tag, ``timm init
        (<tag>)`` for another tag, ``external init (<file name>) / <arch>`` for a file.
        """
        if self.kind == "timm":
            kind = "ImageNet" if _IMAGENET_TAG.search(self.value) else "timm"
            return f"{kind} init ({self.value})"
        if self.kind == "file":
            return f"external init ({self.display_name()}) / {arch}"
        return f"scratch / {arch}"


def parse_init(init: Any, base_dir: str | Path | None = None) -> InitSpec:
    """Parse an ``init`` value; a file must exist (resolved against ``base_dir``).

    Args:
        init: ``None`` or ``"random"``, ``"timm:<tag>"``, or a weights file path (or an
            sslbench checkpoint folder).
        base_dir: Folder of relative paths (default: the current directory).

    Returns:
        The parsed spec; a file's path is absolute.

    Raises:
        SSLBenchError: An empty tag or a value of the wrong type.
        DataError: The file does not exist or has an unknown suffix.
    """
    if init is None or init == RANDOM:
        return InitSpec("random")
    if isinstance(init, InitSpec):
        return init
    if not isinstance(init, str | Path):
        raise SSLBenchError(f"init {init!r}: expected a string; {INIT_HELP}")
    text = str(init).strip()
    if text.startswith(TIMM_PREFIX):
        tag = text[len(TIMM_PREFIX) :].strip()
        if not tag:
            raise SSLBenchError(f"init {text!r}: no timm tag after 'timm:'; {INIT_HELP}")
        return InitSpec("timm", tag)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    if path.is_dir():
        if not (path / CHECKPOINT_WEIGHTS).is_file():
            raise DataError(
                f"init {text!r}: {path} is a folder without {CHECKPOINT_WEIGHTS} (not an "
                f"sslbench checkpoint); {INIT_HELP}"
            )
        path = path / CHECKPOINT_WEIGHTS
    if not path.is_file():
        raise DataError(f"init {text!r}: weights file {path} does not exist; {INIT_HELP}")
    if path.suffix.lower() not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise DataError(
            f"init {text!r}: {path.name} is neither a torch file ({', '.join(TORCH_SUFFIXES)}) "
            f"nor {SAFETENSORS_SUFFIX}"
        )
    return InitSpec("file", str(path.resolve()))


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's content: every key (sorted) with its dtype, shape and bytes.

    Identifies weights that come without a file of their own (timm tags): equal
    tensors give equal hashes whatever file format or cache held them.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unwrap(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint's wrapper, checked to hold tensors."""
    for _ in range(3):  # {"state_dict": {...}}, {"model": {...}}, nested once or twice
        if not isinstance(obj, dict) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next(
            (obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), dict)),
            None,
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{where}: not a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(
            f"{where}: not a state dict: {_keys(bad)} are not tensors (save "
            "model.state_dict(), not a training checkpoint)"
        )
    return {str(k): v for k, v in obj.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a torch (``weights_only``) or safetensors file, on the CPU.

    Raises:
        DataError: The file is unreadable or holds no state dict.
        SSLBenchError: A ``.safetensors`` file without the ``safetensors`` package.
    """
    p = Path(path)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SSLBenchError(
                f"{p}: reading .safetensors weights needs the safetensors package "
                "(pip install safetensors), or save them with torch.save as .pth"
            ) from None
        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise DataError(f"{p}: unreadable safetensors weights ({exc})") from None
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt files
            raise DataError(
                f"{p}: unreadable weights ({exc.__class__.__name__}); expected a state dict "
                "saved with torch.save(model.state_dict(), path)"
            ) from None
    return _unwrap(obj, str(p))


def _strip_prefixes(state: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` (DataParallel) and ``model.`` (an sslbench encoder) key prefixes
    that every key carries and the target's keys do not."""
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state) and not any(
            k.startswith(prefix) for k in target
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS])
    more = f" ... and {len(keys) - _MAX_KEYS} more" if len(keys) > _MAX_KEYS else ""
    return f"[{shown}{more}]"


def timm_state_dict(tag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights timm resolves for ``tag`` (downloaded, or from its cache).

    Returns:
        The state dict of ``timm.create_model(tag, pretrained=True)`` (its native input
        channels and classifier) and where timm found it (``hf_hub_id`` / ``url``).

    Raises:
        SSLBenchError: timm could not load them (offline, unknown tag, ...); the message
            names the tag and how to use a local file instead.
    """
    import timm

    try:
        model = timm.create_model(tag, pretrained=True)
    except Exception as exc:  # network, hub and tag errors come in many types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SSLBenchError(
            f"init 'timm:{tag}': timm could not load the pretrained weights of {tag!r} "
            f"({exc.__class__.__name__}: {detail}). Without internet access, save them on a "
            f"machine that has it - torch.save(timm.create_model({tag!r}, pretrained=True)"
            f".state_dict(), '{tag}.pth') - and pass that local file: init=/path/to/{tag}.pth"
        ) from None
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    source = {k: cfg[k] for k in ("architecture", "tag", "hf_hub_id", "url") if cfg.get(k)}
    return dict(model.state_dict()), source


def load_init_weights(
    model: nn.Module,
    init: InitSpec,
    *,
    first_conv: Sequence[str] = (),
    classifier: Sequence[str] = (),
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    | None = None,
    arch: str = "",
) -> dict[str, Any]:
    """Load external weights into ``model`` strictly; see the module docstring.

    Args:
        model: The module whose ``state_dict`` keys the weights must match (an
            encoder's ``model``).
        init: A ``timm`` or ``file`` spec (:func:`parse_init`).
        first_conv: Dotted names of the input convolution(s), adapted to the model's
            input channels with ``timm.models.adapt_input_conv``.
        classifier: Dotted names of classifier layers whose keys are dropped.
        filter_fn: timm's checkpoint filter of the model family, applied first.
        arch: The encoder's name (error messages).

    Returns:
        The provenance recorded as ``Encoder.init_info``.

    Raises:
        DataError: A missing, unexpected or mis-shaped key, naming the file and keys.
        SSLBenchError: A timm tag that timm could not load.
    """
    from timm.models import adapt_input_conv

    info: dict[str, Any] = {"spec": init.spec, "kind": init.kind}
    if init.kind == "timm":
        state, source = timm_state_dict(init.value)
        where = f"init 'timm:{init.value}'"
        info.update(
            tag=init.value, sha256=state_dict_sha256(state), hash_of="state_dict", source=source
        )
    elif init.kind == "file":
        state = read_state_dict(init.value)
        where = init.value
        info.update(file=Path(init.value).name, sha256=sha256_file(init.value), hash_of="file")
    else:
        raise SSLBenchError(f"load_init_weights: nothing to load for init {init.spec!r}")
    target = model.state_dict()
    state = _strip_prefixes(state, set(target))
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # a model filter rejecting foreign weights
            raise DataError(
                f"{where}: timm's checkpoint filter of {arch or 'the model'} rejected these "
                f"weights ({exc.__class__.__name__}: {exc})"
            ) from None
    adapted = []
    for conv in first_conv:
        key = f"{conv}.weight"
        if key not in state or key not in target:
            continue
        have, want = state[key], target[key]
        if have.ndim == want.ndim == 4 and have.shape[1] != want.shape[1]:
            state[key] = adapt_input_conv(int(want.shape[1]), have, base_chans=int(have.shape[1]))
            adapted.append(
                f"{key}: {have.shape[1]} -> {want.shape[1]} input channels (timm adapt_input_conv)"
            )
    dropped = sorted(
        k
        for k in state
        if k not in target and any(k == c or k.startswith(c + ".") for c in classifier)
    )
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {tuple(v.shape)} (encoder {tuple(target[k].shape)})"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_keys(unexpected)}")
        if shapes:
            parts.append(f"wrong shapes {_keys(shapes)}")
        raise DataError(
            f"{where}: weights do not fit encoder {arch or type(model).__name__!r}: "
            + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)
    info.update(adapted=adapted, dropped=dropped)
    return info
