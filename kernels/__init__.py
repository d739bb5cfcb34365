"""Fused attention kernels for layers that mix learned and fixed-pattern heads, and the dense
reference they are validated against. Imported as ``attnsum_kernels``."""

from .reference import attention_ref

__all__ = ["attention_ref"]
