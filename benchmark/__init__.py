"""sslbench: self-supervised pretraining on real, synthetic and mixed medical images.

The ``benchmark`` package holds the harness: command line, configuration, the HDF5
data layer, registries, runner, results and tracking.
"""

__version__ = "0.1.0"
