"""Contract tests run on every registered SSL method (methods added later are picked up).

Each method is built on a tiny random encoder (ResNet-18, or a patch-8 ViT-tiny for
methods that need patch tokens) and trained for a few steps on 8 random 32x32
greyscale images (larger for methods with a minimum view size, :data:`MIN_SIZE`), with
views from :func:`pretrain.augment.make_views`.
"""

from __future__ import annotations

import inspect
import math
from numbers import Real

import pytest
import torch

from pretrain.augment import ViewRecipe, make_views
from pretrain.encoders import create_encoder
from pretrain.methods import METHODS, SSLMethod, StepOutput, create_method
from pretrain.methods.base import COMMON_DEFAULTS, MethodConfigError

SIZE = 32
BATCH = 8
STEPS = 2
FAMILIES = {"contrastive", "distillation", "non-contrastive", "masked"}
NAMES = METHODS.names()
#: Methods that refuse SIZE px views, with their smallest size (SparK: 4x4 mask patches at
#: the encoder's coarsest stride, 32).
MIN_SIZE = {"spark": 128}


def size_of(name: str) -> int:
    """The view size the contract tests use for ``name``."""
    return max(SIZE, MIN_SIZE.get(name, SIZE))


def build(name: str, **config: object) -> SSLMethod:
    """A method around a fresh tiny encoder that it accepts."""
    cls = METHODS.get(name)
    if cls.requires_vit:
        encoder = create_encoder("vit_tiny_p8", img_size=size_of(name))
    else:
        encoder = create_encoder("resnet18", img_size=size_of(name))
    return create_method(name, encoder, **config)


def train(name: str, seed: int = 0, steps: int = STEPS) -> tuple[SSLMethod, list[StepOutput]]:
    """``steps`` optimizer steps of ``name``; returns the method and the step outputs."""
    torch.manual_seed(seed)
    method = build(name)
    method.train()
    optimizer = torch.optim.AdamW(method.parameter_groups(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    size = size_of(name)
    images = torch.rand(BATCH, 1, size, size, generator=generator)
    outputs = []
    for step in range(steps):
        views = make_views(images, method.view_recipes(size), generator)
        out = method.training_step(views, step, steps)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        method.after_optimizer_step(step, steps)
        outputs.append(out)
    return method, outputs


@pytest.fixture(scope="module", params=NAMES)
def trained(request: pytest.FixtureRequest) -> tuple[str, SSLMethod, list[StepOutput]]:
    method, outputs = train(request.param)
    return request.param, method, outputs


def test_registry_is_not_empty() -> None:
    assert len(METHODS) > 0


@pytest.mark.parametrize("name", NAMES)
def test_class_metadata(name: str) -> None:
    cls = METHODS.get(name)
    assert issubclass(cls, SSLMethod)
    assert cls.name == name, "register the class under its own `name`"
    assert cls.family in FAMILIES
    assert cls.paper.strip(), "cite the paper"
    assert 0.1 <= cls.cost <= 20, "cost: time per image relative to SimCLR (dry-run estimates)"
    doc = (inspect.getdoc(cls) or "") + (inspect.getmodule(cls).__doc__ or "")  # type: ignore[union-attr]
    undocumented = [k for k in cls.default_config if k not in COMMON_DEFAULTS and k not in doc]
    assert not undocumented, f"default_config keys not described in the docstring: {undocumented}"


@pytest.mark.parametrize("name", NAMES)
def test_defaults_validate(name: str) -> None:
    cls = METHODS.get(name)
    config = cls.validate_config({})
    assert set(config) == set(COMMON_DEFAULTS) | set(cls.default_config)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_is_rejected(name: str) -> None:
    with pytest.raises(MethodConfigError, match="no_such_option"):
        METHODS.get(name).validate_config({"no_such_option": 1})


@pytest.mark.parametrize("name", NAMES)
def test_bad_values_are_rejected(name: str) -> None:
    cls = METHODS.get(name)
    with pytest.raises(MethodConfigError, match="lr"):
        cls.validate_config({"lr": -1.0})
    numeric = [
        k
        for k, v in cls.default_config.items()
        if k not in COMMON_DEFAULTS and isinstance(v, Real) and not isinstance(v, bool)
    ]
    rejected = []
    for key in numeric:
        try:  # anything but MethodConfigError (TypeError, ...) fails the test
            cls.validate_config({key: -1})
        except MethodConfigError as err:
            assert key in str(err), f"message should name {key!r}: {err}"
            rejected.append(key)
    if numeric:
        assert rejected, f"no numeric option of {name!r} is validated: {numeric}"


@pytest.mark.parametrize("name", NAMES)
def test_view_recipes(name: str) -> None:
    method = build(name)
    for size in (32, 64, 224):
        if size < size_of(name):
            with pytest.raises(MethodConfigError, match=str(size)):
                method.view_recipes(size)
            continue
        recipes = method.view_recipes(size)
        assert recipes and all(isinstance(r, ViewRecipe) for r in recipes)
        assert recipes[0].size == size
        assert all(0 < r.size <= size for r in recipes), "views may only be smaller (local crops)"


def test_training_steps(trained: tuple[str, SSLMethod, list[StepOutput]]) -> None:
    name, method, outputs = trained
    assert len(outputs) == STEPS
    for out in outputs:
        assert isinstance(out, StepOutput)
        assert out.loss.ndim == 0 and out.loss.requires_grad
        assert torch.isfinite(out.loss), f"{name}: loss {out.loss}"
        emb = out.embeddings
        assert emb.ndim == 2 and emb.shape[0] == BATCH and emb.shape[1] > 0
        assert not emb.requires_grad, "embeddings must be detached"
        assert torch.isfinite(emb).all()
        for key, value in out.logs.items():
            assert isinstance(key, str) and isinstance(value, Real) and math.isfinite(value)
    grads = [p.grad for g in method.parameter_groups() for p in g["params"]]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached"
    enc_params = {id(p) for p in method.encoder.parameters()}
    trained_ids = {id(p) for g in method.parameter_groups() for p in g["params"]}
    assert enc_params <= trained_ids, "every encoder parameter must be optimised"


def test_determinism(trained: tuple[str, SSLMethod, list[StepOutput]]) -> None:
    name, _, outputs = trained
    _, again = train(name)
    assert [o.loss.item() for o in outputs] == [o.loss.item() for o in again]


NAMES_3D = [n for n in NAMES if 3 in METHODS.get(n).spatial_dims]
#: Options for SIZE^3 volumes: SparK needs 4 mask patches per axis, a finer grid than its default.
CONFIG_3D: dict[str, dict[str, object]] = {"spark": {"mask_stride": 8}}


@pytest.mark.parametrize("name", NAMES_3D)
def test_training_steps_on_3d_volumes(name: str) -> None:
    """The same method files train a MONAI 3D encoder on volumes."""
    torch.manual_seed(0)
    encoder = create_encoder("resnet10_3d", img_size=SIZE)
    method = create_method(name, encoder, **CONFIG_3D.get(name, {}))
    method.train()
    optimizer = torch.optim.AdamW(method.parameter_groups(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    volumes = torch.rand(4, 1, SIZE, SIZE, SIZE, generator=generator)
    views = make_views(volumes, method.view_recipes(SIZE), generator)
    assert all(v.dim() == 5 for v in views)
    out = method.training_step(views, 0, 1)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    method.after_optimizer_step(0, 1)
    assert torch.isfinite(out.loss) and out.embeddings.shape[0] == 4


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NAMES_3D])
def test_2d_only_methods_refuse_3d_encoders(name: str) -> None:
    with pytest.raises(MethodConfigError, match="3D"):
        create_method(name, create_encoder("resnet10_3d", img_size=SIZE))
