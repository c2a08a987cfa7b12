"""Every config dataclass checks its fields' types (config.check_field_types), as --set does."""

import dataclasses
import json
import typing

import numpy as np
import pytest

from clipclop_jax.config import CollageConfig, ConfigTypeError, OptimConfig
from clipclop_jax.guidance.augment import AugmentConfig
from clipclop_jax.guidance.objective import RegionConfig
from clipclop_jax.runs.settings import GenerateConfig, OutputConfig
from clipclop_jax.search.evolution import EvolutionConfig

CONFIGS = [
    CollageConfig,
    OptimConfig,
    AugmentConfig,
    EvolutionConfig,
    RegionConfig,
    OutputConfig,
    GenerateConfig,
]


@pytest.mark.parametrize(
    "kwargs, field, expected",
    [
        (dict(seed=True), "seed", "int"),
        (dict(population=2.5), "population", "int"),
        (dict(population="2"), "population", "int"),
        (dict(prompt=123), "prompt", "str"),
        (dict(output_size=True), "output_size", "int (a whole number) or None"),
        (dict(collage=3), "collage", "CollageConfig"),
        (dict(collage=CollageConfig(), optim=CollageConfig()), "optim", "OptimConfig"),
    ],
)
def test_generate_config_refuses_wrong_types_naming_field_value_and_type(kwargs, field, expected):
    with pytest.raises(ConfigTypeError) as raised:
        GenerateConfig(**kwargs)
    message = str(raised.value)
    assert "\n" not in message
    assert f"GenerateConfig.{field}={kwargs[field]!r}" in message
    assert f"expected {expected}" in message
    # The CLI reports ValueErrors as one line; API users may catch TypeError.
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, TypeError)


def _wrong_values(hint):
    """Values of the wrong type for a field annotated ``hint``."""
    options = typing.get_args(hint) if typing.get_origin(hint) is not tuple else (hint,)
    options = options or (hint,)
    kinds = {o for o in options if o is not type(None)}
    if dataclasses.is_dataclass(next(iter(kinds))):
        return [3, "x", [1]]
    if kinds == {bool}:
        return [1, 0, "true", None]
    if kinds == {int}:
        return [True, 2.5, 2.0, "2"]
    if kinds == {float}:
        return [True, "1.0", [1.0]]
    if kinds == {str}:
        return [123, b"x", ["a"]]
    if typing.get_origin(next(iter(kinds))) is tuple:
        return ["ab", (0.5,), (0.5, "1"), (True, 0.9), 0.5]
    raise AssertionError(f"no wrong values for {hint}")


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_of_every_config_checks_its_type(cls):
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        for value in _wrong_values(hints[field.name]):
            with pytest.raises(ConfigTypeError, match=rf"{cls.__name__}\.{field.name}="):
                cls(**{field.name: value})


def test_numbers_are_stored_as_their_fields_type():
    optim = OptimConfig(learning_rate=2, steps=np.int64(7))
    assert type(optim.learning_rate) is float and optim.learning_rate == 2.0
    assert type(optim.steps) is int and optim.steps == 7
    collage = CollageConfig(min_scale=np.float32(1.5), canvas_height=np.int32(32))
    assert type(collage.min_scale) is float and type(collage.canvas_height) is int
    augment = AugmentConfig(crop_scale=[0.5, 1], fill=0)
    assert augment.crop_scale == (0.5, 1.0) and type(augment.crop_scale[1]) is float
    assert type(augment.fill) is float
    # Stored as JSON-able Python numbers: config.json round-trips.
    config = GenerateConfig(population=np.int64(3), optim=optim)
    assert GenerateConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_optional_fields_take_none_and_their_type():
    config = GenerateConfig(output_size=None, num_devices=None, region_prompts=None)
    assert config.output_size is None
    assert GenerateConfig(output_size=64).output_size == 64


def test_a_dict_for_a_nested_config_is_converted_and_checked():
    config = GenerateConfig(collage={"num_patches": 5}, optim={"steps": 3})
    assert config.collage == CollageConfig(num_patches=5)
    assert config.optim == OptimConfig(steps=3)
    with pytest.raises(ValueError, match="Unknown setting 'num_patchs'.*'num_patches'"):
        GenerateConfig(collage={"num_patchs": 5})
    with pytest.raises(ConfigTypeError, match=r"CollageConfig\.num_patches='5'"):
        GenerateConfig(collage={"num_patches": "5"})


def test_replace_checks_types_too():
    with pytest.raises(ConfigTypeError, match=r"OptimConfig\.use_augmentations=1 "):
        dataclasses.replace(OptimConfig(), use_augmentations=1)
