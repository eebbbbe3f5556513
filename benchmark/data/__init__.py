"""The sslbench data layer: one HDF5 format for every dataset (see FORMAT.md)."""

from benchmark.data.dataset import H5Dataset
from benchmark.data.h5format import (
    FORMAT_VERSION,
    SPLITS,
    DatasetMeta,
    H5Writer,
    compute_content_hash,
    open_h5,
    read_meta,
)

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "DatasetMeta",
    "H5Dataset",
    "H5Writer",
    "compute_content_hash",
    "open_h5",
    "read_meta",
]
