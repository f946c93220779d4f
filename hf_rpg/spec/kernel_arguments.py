"""The arguments of the fused ``rpg-v1`` kernels (``index_kernels``), checked before any kernel
runs: a bad ring, key, span, gain or gradient raises a clear ``ValueError`` here instead of
reading or writing out of bounds inside compiled code; and how tensors reach the numba kernels
(``numpy_view``)."""

from __future__ import annotations

import ctypes
import numbers
import operator

import numpy as np
import torch

from .generator import GeneratorKey, domain_bits

_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.bfloat16: np.uint16,  # bit patterns
    torch.float16: np.float16,
}


def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """A flat NumPy view of a contiguous CPU tensor's memory (bfloat16 as uint16 bit patterns),
    for the numba kernels. Not ``Tensor.numpy()``: that marks the tensor's storage as never
    resizable, and FSDP2 frees an unsharded parameter (a ring, a delta target's base weight) by
    resizing its storage to zero."""
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError(f"numpy_view needs a contiguous CPU tensor, got {tuple(tensor.stride())} on {tensor.device}")
    dtype = _NUMPY_DTYPES[tensor.dtype]
    if tensor.numel() == 0:
        return np.empty(0, dtype)
    memory = (ctypes.c_char * (tensor.numel() * tensor.element_size())).from_address(tensor.data_ptr())
    return np.frombuffer(memory, dtype=dtype)


def feistel_widths(total: int) -> tuple[int, int]:
    """The Feistel halves' bit widths of the domain ``[0, total)``."""
    bits = domain_bits(total)
    return (bits + 1) // 2, bits - (bits + 1) // 2


def division_magic(n: int) -> tuple[int, int, int]:
    """Multiplier and shifts such that ``q // n == (t + ((q - t) >> s1)) >> s2`` with
    ``t = (q * m) >> 32``, for every ``q < 2**32`` (Granlund and Montgomery 1994, fig. 4.1)."""
    length = (n - 1).bit_length()  # ceil(log2 n)
    return ((1 << 32) * ((1 << length) - n)) // n + 1, min(length, 1), max(length - 1, 0)


def kernel_params(total: int, ring_size: int, key: GeneratorKey) -> tuple:
    """The numba kernels' parameters in the uint32 domain (``uint32_path_applies``)."""
    low_bits, high_bits = feistel_widths(total)
    magic, sh1, sh2 = division_magic(ring_size)
    u = np.uint32
    return (
        np.uint64(total), u(low_bits), u(high_bits), u((1 << low_bits) - 1), u((1 << high_bits) - 1),
        *(u(k) for k in key.round_keys), u(key.sign_key), u(magic), u(sh1), u(sh2), u(ring_size),
    )  # fmt: skip


def kernel_params64(total: int, ring_size: int, key: GeneratorKey) -> tuple:
    """The numba int64 index kernel's parameters (domains beyond uint32)."""
    low_bits, high_bits = feistel_widths(total)
    u = np.uint64
    return (
        u(total), u(low_bits), u(high_bits), u((1 << low_bits) - 1), u((1 << high_bits) - 1),
        *(u(k) for k in key.round_keys), u(key.sign_key), u(ring_size),
    )  # fmt: skip


def check_int(name: str, value: object) -> int:
    """``value`` as a Python int (NumPy and torch integers accepted, bools and floats not)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None


def check_common(ring: torch.Tensor, key: GeneratorKey, total: int, name: str = "ring") -> int:
    """The ring size ``n`` after checking the ring (a floating-point tensor of 1 to ``total``
    elements), the key and the number of generated positions ``total`` (1 to 2**62)."""
    if not isinstance(key, GeneratorKey):
        raise ValueError(f"key must be a GeneratorKey (generator.derive_key), got {type(key).__name__}")
    if not 1 <= total <= 1 << 62:
        raise ValueError(f"total must be in [1, 2**62], got {total}")
    if not isinstance(ring, torch.Tensor) or not ring.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {type(ring).__name__}")
    n = ring.numel()
    if not 1 <= n <= total:
        raise ValueError(f"{name}.numel() (the ring size) must be in [1, total={total}], got {n}")
    return n


def check_span(total: int, start: int, numel: int) -> None:
    """``[start, start + numel)`` lies inside ``[0, total)``."""
    if start < 0 or numel < 0 or start + numel > total:
        raise ValueError(
            f"need start >= 0, numel >= 0 and start + numel <= total={total}, got start={start}, numel={numel}"
        )


def check_gain(gain: float) -> float:
    """``gain`` as a float (a real number, not a bool)."""
    if isinstance(gain, bool) or not isinstance(gain, numbers.Real):
        raise ValueError(f"gain must be a float, got {gain!r}")
    return float(gain)


def check_grad(grad_ring: torch.Tensor, grad: torch.Tensor, count: int, device: torch.device) -> None:
    """The gradient of ``count`` generated elements and the ring gradient it scatters into:
    floating-point, ``count`` elements, both on ``device``."""
    if not isinstance(grad, torch.Tensor) or not grad.is_floating_point():
        raise ValueError(f"grad must be a floating-point tensor, got {type(grad).__name__}")
    if grad.numel() != count:
        raise ValueError(f"grad must have {count} elements, got {grad.numel()}")
    if grad.device != grad_ring.device or grad_ring.device != device:
        raise ValueError(f"grad ({grad.device}) and grad_ring ({grad_ring.device}) must be on one device")
    if not grad_ring.is_contiguous():
        raise ValueError("grad_ring must be contiguous (it is updated in place)")


# --------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------
