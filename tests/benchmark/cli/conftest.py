"""The generator tests' tiny data files and tiny DDPM, for the ``sslbench synth`` tests."""

from tests.pretrain.generators.conftest import (  # noqa: F401  (fixtures)
    _single_thread,
    make_tiny,
    tiny,
    tiny_gen,
    tiny_real,
)
