"""Self-supervised methods, one file each, built from lightly's losses, heads and modules.

Every module in this package registers its method on import, so adding a method
is one new file (plus nothing else: the contract tests are parametrised over
the registry).
"""

from benchmark.core.plugins import import_submodules
from pretrain.methods.base import METHODS, SSLMethod, StepOutput, create_method

import_submodules(__name__)

__all__ = ["METHODS", "SSLMethod", "StepOutput", "create_method"]
