"""Fused attention kernels for layers that mix learned and fixed-pattern heads, and the dense
reference they are validated against. This folder is installed as ``attnsum.kernels`` (see
pyproject.toml); it imports nothing from the rest of attnsum."""

from .reference import dense_masked_attention

__all__ = ["dense_masked_attention"]
