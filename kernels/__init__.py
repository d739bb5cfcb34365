"""Fused attention kernels for layers that mix learned and fixed-pattern heads, and the dense
reference they are validated against. This folder is installed as ``attnsum.kernels`` (see
pyproject.toml); it imports nothing from the rest of attnsum."""

from .reference import attention_ref

__all__ = ["attention_ref"]
