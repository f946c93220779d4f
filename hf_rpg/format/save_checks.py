"""What ``save_pretrained`` refuses to write: state ``from_pretrained`` would refuse to load.

A save replaces the previous checkpoint, so a ring that went NaN (a diverged run) or a
``state_dict=`` of the wrong shape would destroy a good checkpoint and leave one that does
not load. These checks run on the tensors about to be written, before anything is written.
"""

from __future__ import annotations

import torch

RING_PREFIX = "rpg_rings."


def _kind(dtype: torch.dtype) -> str:
    return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "integer or bool"


def problems(tensors: dict[str, torch.Tensor], ring_sizes: dict[str, int], live: dict[str, torch.Tensor]) -> list[str]:
    """Why the tensors to save would not load: ``tensors`` (key -> tensor to write, rings under
    ``rpg_rings.<name>``), the manifest's ring sizes and the model's live stored tensors (by key)."""
    found = []
    for key, tensor in tensors.items():
        if key.startswith(RING_PREFIX):
            name = key.removeprefix(RING_PREFIX)
            if tuple(tensor.shape) != (ring_sizes[name],):
                found.append(f"ring {name!r} has shape {list(tensor.shape)}, the manifest says [{ring_sizes[name]}]")
            elif not tensor.is_floating_point():
                found.append(f"ring {name!r} is {tensor.dtype}; a ring is floating point")
            else:
                bad = ~torch.isfinite(tensor)
                if bool(bad.any()):
                    first = int(bad.nonzero()[0, 0])
                    found.append(
                        f"ring {name!r} holds {int(bad.sum())} NaN or Inf value(s), the first at index {first} "
                        f"(value {tensor[first].item()}): training diverged, or the ring was overwritten"
                    )
            continue
        expected = live.get(key)
        if expected is None:
            continue
        if tuple(tensor.shape) != tuple(expected.shape):
            found.append(f"{key!r} has shape {list(tensor.shape)} but the model's tensor has {list(expected.shape)}")
        elif _kind(tensor.dtype) != _kind(expected.dtype):
            found.append(f"{key!r} is {tensor.dtype} but the model's tensor is {expected.dtype}")
    return found


__all__ = ["problems"]
