"""Downstream task adapters (classification, segmentation) and versioned task specs."""
