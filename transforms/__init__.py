"""Transforms: raw segments to staged datasets (decode, de-duplicate, partition)."""
