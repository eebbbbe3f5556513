"""Versioned task specifications, one YAML file each in ``tasks/specs/``.

A task spec names a dataset file, what to predict (``labels`` or ``masks``),
the default adapters and their protocol options, the metrics (with their
direction) and the primary metric used for model selection and summaries::

    name: busi-cls
    version: "1"
    description: BUSI breast ultrasound, benign / malignant / normal
    dataset: busi64.h5            # relative to the data root
    convert: sslbench data convert busi ../shared/data/busi_256 -o data/busi64.h5 --size 64
    target: labels
    image_size: 64
    preprocessing: {resize: bilinear, antialias: true}
    adapters: [linear, knn, finetune]
    protocol: {linear: {class_weight: balanced}}
    metrics:
      - {name: auc, higher_is_better: true}
      - {name: balanced_accuracy, higher_is_better: true}
    primary_metric: auc

Relative dataset paths are resolved against the data root: ``--data-root``,
else the environment variable ``SSLBENCH_DATA_ROOT``, else ``data/`` in the
working directory. ``version`` must change whenever a change to the spec would
change results; it is written into every record.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from benchmark.core.errors import DataError, SSLBenchError, did_you_mean

SPEC_DIR = Path(__file__).resolve().parent / "specs"
DATA_ROOT_ENV = "SSLBENCH_DATA_ROOT"
DEFAULT_DATA_ROOT = "data"
TARGETS = ("labels", "masks")
#: Defaults of the ``preprocessing`` mapping (images are always scaled to [0, 1]).
DEFAULT_PREPROCESSING: dict[str, Any] = {"resize": "bilinear", "antialias": True}
PREPROCESSING_KEYS = ("resize", "antialias")
RESIZE_MODES = ("bilinear", "nearest", "bicubic", "area")


class SpecError(SSLBenchError, ValueError):
    """A task spec is missing, malformed or inconsistent with its dataset."""


def _suggest(word: str, valid: list[str]) -> str:
    return did_you_mean(word, valid) or f" (valid: {', '.join(valid)})"


@dataclass(frozen=True)
class MetricSpec:
    """A metric of a task and its direction."""

    name: str
    higher_is_better: bool = True


@dataclass
class TaskSpec:
    """One evaluation task (see the module docstring for the YAML layout).

    Attributes:
        name: Task name (also the file stem of shipped specs).
        version: Version string; bump it whenever results would change.
        description: One or two sentences.
        dataset: Path of the sslbench HDF5 file (relative to the data root).
        convert: The command that creates the dataset file.
        target: ``"labels"`` (classification) or ``"masks"`` (segmentation).
        adapters: Adapters run by default.
        protocol: Adapter name -> options overriding that adapter's defaults.
        metrics: Reported metrics.
        primary_metric: Metric used for model selection and summaries.
        image_size: Spatial size fed to the encoder.
        preprocessing: ``resize`` mode and ``antialias`` flag.
        source: File the spec was loaded from (None if built in code).
    """

    name: str
    version: str
    dataset: str
    target: str
    metrics: list[MetricSpec]
    primary_metric: str
    image_size: int
    description: str = ""
    convert: str = ""
    adapters: list[str] = field(default_factory=list)
    protocol: dict[str, dict[str, Any]] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    source: Path | None = None

    # -- paths -----------------------------------------------------------------
    def dataset_path(self, data_root: str | os.PathLike[str] | None = None) -> Path:
        """The dataset path, relative paths resolved against the data root."""
        p = Path(self.dataset).expanduser()
        return p if p.is_absolute() else resolve_data_root(data_root) / p

    def resolve_dataset(self, data_root: str | os.PathLike[str] | None = None) -> Path:
        """The dataset path, checked to exist and to hold this task's target.

        Raises:
            DataError: The file is missing (the message gives the command that
                creates it) or has no ``labels`` / ``masks``.
        """
        from benchmark.data.h5format import read_meta

        path = self.dataset_path(data_root)
        if not path.exists():
            how = f"; create it with: {self.convert}" if self.convert else ""
            raise DataError(f"{path}: dataset of task {self.name!r} not found{how}")
        meta = read_meta(path)
        has = meta["has_labels"] if self.target == "labels" else meta["has_masks"]
        if not has:
            raise DataError(
                f"{path}: task {self.name!r} needs {self.target} but the dataset has none"
            )
        if self.target == "labels" and meta["label_shape"]:
            raise DataError(
                f"{path}: multi-label labels {meta['label_shape']} are not supported by "
                f"classification task {self.name!r} (need one integer class per sample)"
            )
        return path

    # -- metrics and adapters -----------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        """Names of the reported metrics, in spec order."""
        return [m.name for m in self.metrics]

    def adapter_options(self, adapter: str) -> dict[str, Any]:
        """Protocol options of ``adapter`` from this spec (empty if none)."""
        return dict(self.protocol.get(adapter, {}))

    def check_registries(self) -> None:
        """Check metric names and directions and protocol options against the registries.

        Separate from loading so that a spec can be read without importing
        every adapter; :mod:`tasks.sweep` calls it before a sweep.
        """
        from tasks.adapters import ADAPTERS
        from tasks.metrics import get_metric

        for m in self.metrics:
            metric = get_metric(m.name)  # raises with the nearest names if unknown
            if metric.higher_is_better != m.higher_is_better:
                raise SpecError(
                    f"{self.where}: metric {m.name!r} has higher_is_better="
                    f"{metric.higher_is_better} in the registry, not {m.higher_is_better}"
                )
        for name, options in self.protocol.items():
            cls = ADAPTERS.get(name)
            if cls.target != self.target:
                raise SpecError(
                    f"{self.where}: adapter {name!r} predicts {cls.target}, task predicts "
                    f"{self.target}"
                )
            cls(**options)  # raises on unknown options, suggesting the nearest

    @property
    def where(self) -> str:
        return str(self.source) if self.source else f"task {self.name!r}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for records)."""
        out = asdict(self)
        out["source"] = str(self.source) if self.source else None
        return out


# -- loading ----------------------------------------------------------------------
def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """``data_root``, else ``$SSLBENCH_DATA_ROOT``, else ``data/``."""
    root = data_root or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


def available_specs() -> list[str]:
    """Names of the shipped specs."""
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def spec_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The YAML file of a shipped spec name, or the given path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or len(p.parts) > 1:
        if not p.exists():
            raise SpecError(f"{p}: no such task spec file")
        return p
    shipped = SPEC_DIR / f"{p.name}.yaml"
    if not shipped.exists():
        raise SpecError(f"unknown task {str(name_or_path)!r}{_suggest(str(p), available_specs())}")
    return shipped


_REQUIRED = ("name", "version", "dataset", "target", "metrics", "primary_metric", "image_size")


def load_spec(name_or_path: str | os.PathLike[str]) -> TaskSpec:
    """Load and validate a task spec by shipped name (``"busi-cls"``) or path."""
    path = spec_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read task spec ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a task spec must be a mapping of keys")
    return spec_from_dict(raw, source=path)


def spec_from_dict(raw: dict[str, Any], source: Path | None = None) -> TaskSpec:
    """Validate a mapping as a :class:`TaskSpec`; errors name ``source``."""
    where = str(source) if source else "task spec"
    valid = [f.name for f in fields(TaskSpec) if f.name != "source"]
    for key in raw:
        if key not in valid:
            raise SpecError(f"{where}: unknown key {key!r}{_suggest(str(key), valid)}")
    missing = [k for k in _REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise SpecError(f"{where}: missing required key(s) {', '.join(missing)}")
    values = dict(raw)
    values["name"] = str(values["name"])
    values["version"] = str(values["version"])
    values["dataset"] = str(values["dataset"])
    if values["target"] not in TARGETS:
        raise SpecError(
            f"{where}: target must be one of {TARGETS}, got {values['target']!r}"
            f"{_suggest(str(values['target']), list(TARGETS))}"
        )
    size = values["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SpecError(f"{where}: image_size must be a positive integer, got {size!r}")
    values["metrics"] = _parse_metrics(values["metrics"], where)
    names = [m.name for m in values["metrics"]]
    if values["primary_metric"] not in names:
        raise SpecError(
            f"{where}: primary_metric {values['primary_metric']!r} is not among the metrics "
            f"{names}{_suggest(str(values['primary_metric']), names)}"
        )
    adapters = values.get("adapters") or []
    if isinstance(adapters, str):
        adapters = [adapters]
    if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
        raise SpecError(f"{where}: adapters must be a list of adapter names")
    values["adapters"] = adapters
    protocol = values.get("protocol") or {}
    if not isinstance(protocol, dict) or not all(
        isinstance(v, dict) or v is None for v in protocol.values()
    ):
        raise SpecError(f"{where}: protocol must map adapter names to option mappings")
    values["protocol"] = {str(k): dict(v or {}) for k, v in protocol.items()}
    values["preprocessing"] = _parse_preprocessing(values.get("preprocessing"), where)
    return TaskSpec(**values, source=source)


def _parse_metrics(value: Any, where: str) -> list[MetricSpec]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: metrics must be a non-empty list")
    out = []
    for item in value:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise SpecError(f"{where}: each metric needs a name, got {item!r}")
        for key in item:
            if key not in ("name", "higher_is_better"):
                raise SpecError(
                    f"{where}: unknown metric key {key!r}"
                    f"{_suggest(str(key), ['name', 'higher_is_better'])}"
                )
        hib = item.get("higher_is_better", True)
        if not isinstance(hib, bool):
            raise SpecError(f"{where}: higher_is_better of {item['name']!r} must be true/false")
        out.append(MetricSpec(str(item["name"]), hib))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise SpecError(f"{where}: metrics are listed twice: {names}")
    return out


def _parse_preprocessing(value: Any, where: str) -> dict[str, Any]:
    pre = dict(DEFAULT_PREPROCESSING)
    if value is None:
        return pre
    if not isinstance(value, dict):
        raise SpecError(f"{where}: preprocessing must be a mapping")
    for key, v in value.items():
        if key not in PREPROCESSING_KEYS:
            raise SpecError(
                f"{where}: unknown preprocessing key {key!r}"
                f"{_suggest(str(key), list(PREPROCESSING_KEYS))}"
            )
        pre[key] = v
    if pre["resize"] not in RESIZE_MODES:
        raise SpecError(
            f"{where}: preprocessing resize must be one of {RESIZE_MODES}, got {pre['resize']!r}"
        )
    if not isinstance(pre["antialias"], bool):
        raise SpecError(f"{where}: preprocessing antialias must be true or false")
    return pre
