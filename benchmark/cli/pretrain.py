"""``sslbench pretrain``: one SSL pretraining run outside an experiment."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmark.cli.args import parse_assignments
from benchmark.core.errors import SSLBenchError


def _strength(text: str) -> str | float:
    """``--strength``: a name (standard, weak) or a number >= 0."""
    try:
        return float(text)
    except ValueError:
        return text


def _pool_size(text: str) -> int | str:
    """``--pool-size``: a positive int, ``matched`` or ``all`` (the sources' check)."""
    from pretrain.sources.base import check_pool_size

    value: int | str = int(text) if text.lstrip("-").isdigit() else text
    try:
        checked = check_pool_size(value, "--pool-size")
    except SSLBenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return "all" if checked is None else checked


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    import yaml

    from pretrain.train import PretrainConfig, pretrain

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    values: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SSLBenchError(f"{path}: cannot read config ({exc.__class__.__name__})") from None
        if not isinstance(loaded, dict):
            raise SSLBenchError(f"{path}: config must be a mapping of PretrainConfig fields")
        unknown = sorted(set(loaded) - fields)
        if unknown:
            from benchmark.core.registry import unknown_name_error

            raise unknown_name_error(f"key in {path}", unknown[0], sorted(fields))
        values.update(loaded)
    cli = {
        "method": args.method,
        "encoder": args.encoder,
        "source": args.source,
        "real": args.data,
        "synthetic": args.synthetic,
        "synthetic_ratio": args.ratio,
        "mixing_mode": args.mode,
        "real_weight": args.real_weight,
        "pool_size": args.pool_size,
        "strength": args.strength,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "image_size": args.size,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "device": args.device,
        "amp": args.amp,
        "channels_last": args.channels_last,
    }
    values.update({k: v for k, v in cli.items() if v is not None})
    if args.set:
        values["method_config"] = {
            **values.get("method_config", {}),
            **parse_assignments(args.set, "--set"),
        }
    if args.encoder_set:
        values["encoder_config"] = {
            **values.get("encoder_config", {}),
            **parse_assignments(args.encoder_set, "--encoder-set"),
        }
    config = PretrainConfig(**values)
    from pretrain import distributed

    try:
        result = pretrain(
            config,
            args.output,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    finally:
        info = distributed.env_info()
        distributed.shutdown(info)
    if not info.is_main:
        return 0
    s = result.summary
    print(f"encoder checkpoint: {result.checkpoint}")
    print(
        f"final loss {s['final_loss']:.4f}, embedding std {s['final_embedding_std']:.4f}, "
        f"{s['images_per_s']:.1f} images/s, {s['images_seen']} images seen"
    )
    print(health_line(s))
    return 0


def health_line(summary: dict[str, Any]) -> str:
    """One line: the health verdict, kNN init -> end, loss first -> last (chance)."""
    h = summary.get("health") or {}
    loss, knn = h.get("loss") or {}, h.get("knn") or {}
    parts = [f"health: {h.get('verdict', 'not checked')}"]
    if knn.get("init") is not None and knn.get("end") is not None:
        parts.append(
            f"kNN balanced acc {knn['init']:.3f} -> {knn['end']:.3f} (margin {knn['margin']:g})"
        )
    elif knn.get("note"):
        parts.append(str(knn["note"]))
    linear = h.get("linear") or {}
    if linear.get("init") is not None and linear.get("end") is not None:
        parts.append(f"linear AUC {linear['init']:.3f} -> {linear['end']:.3f}")
    dense = h.get("dense") or {}
    if dense.get("init") is not None and dense.get("end") is not None:
        parts.append(
            f"dense-probe Dice {dense['init']:.3f} -> {dense['end']:.3f} "
            f"(margin {knn.get('margin', 0):g})"
        )
    if loss.get("first") is not None:
        chance = f" (chance {loss['chance']:.3f})" if loss.get("chance") is not None else ""
        parts.append(f"loss {loss['first']:.3f} -> {loss['last']:.3f}{chance}")
    if h.get("collapse", {}).get("collapsed"):
        parts.append("embedding collapse")
    return "; ".join(parts)


def add_pretrain_command(sub: Any) -> None:
    """``sslbench pretrain``."""
    p = sub.add_parser("pretrain", help="pretrain an encoder with an SSL method on a source")
    p.add_argument("--config", help="YAML file of PretrainConfig fields (CLI flags win)")
    p.add_argument("--data", help="real dataset .h5 (its train split is used)")
    p.add_argument("--synthetic", help="synthetic dataset .h5")
    p.add_argument("--source", help="real | synthetic | mixed (default real)")
    p.add_argument("--ratio", type=float, help="synthetic fraction per batch for mixed")
    p.add_argument(
        "--mode",
        choices=["replace", "add"],
        help="mixed: synthetic images replace real ones in the batch (default) or are added",
    )
    p.add_argument(
        "--real-weight", type=float, help="mixed: sampling weight of real images (default 1)"
    )
    p.add_argument(
        "--strength",
        type=_strength,
        help="augmentation strength: standard (default), weak (AdaInf's preset) or a number",
    )
    p.add_argument(
        "--pool-size",
        type=_pool_size,
        help="synthetic pool: N (the first N samples), matched (the real train split's size)"
        " or all (default)",
    )
    p.add_argument("--method", help="SSL method (sslbench list methods)")
    p.add_argument("--encoder", help="encoder (sslbench list encoders)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="images per step")
    p.add_argument("--size", type=int, help="view size in pixels")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method option")
    p.add_argument("--encoder-set", action="append", metavar="KEY=VALUE", help="encoder option")
    p.add_argument("--checkpoint-every", type=int, help="save training state every N steps")
    p.add_argument("--log-every", type=int)
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--amp", help="auto, bf16, fp16 or none")
    p.add_argument("--channels-last", help="auto (2D CNNs), on or off")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from the saved state")
    p.add_argument("--overwrite", action="store_true", help="start the run again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_pretrain)
