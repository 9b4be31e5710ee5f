"""1-bit storage of ``continual``'s task masks (R4, spec test 13).

Masks are stored 1 bit per weight (:class:`PackedMask`: numpy.packbits over the layers' flattened masks
concatenated in layer order; ⌈ΣN_l / 8⌉ bytes); :func:`pack_mask` and :func:`unpack_mask` convert. No Ray, no
MLflow.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainers.continual.groups import Masks


@dataclass(frozen=True)
class PackedMask:
    """One task's mask at 1 bit per weight: ``bits`` = numpy.packbits (big bit order) of the layers' flattened
    masks concatenated in ``names`` order; the last byte is zero-padded."""
    bits: np.ndarray
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def n_bits(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    def as_dict(self) -> dict:
        return {"bits": self.bits, "names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "PackedMask":
        pm = cls(np.asarray(d["bits"], dtype=np.uint8), tuple(d["names"]), tuple(tuple(int(x) for x in s)
                                                                               for s in d["shapes"]))
        if pm.bits.size != packed_nbytes(pm.n_bits):
            raise ValueError(f"bits: {pm.bits.size} bytes do not hold {pm.n_bits} bits")
        return pm


def packed_nbytes(n_bits: int) -> int:
    """⌈n_bits / 8⌉: the stored size of a mask of n_bits weights."""
    return (int(n_bits) + 7) // 8


def pack_mask(mask: Masks) -> PackedMask:
    """Pack name → bool mask (torch or numpy) into a :class:`PackedMask` (layer order = mapping order)."""
    if not mask:
        raise ValueError("mask: empty; pass name → bool mask for every masked layer")
    names, shapes, flats = [], [], []
    for n, m in mask.items():
        a = m.detach().cpu().numpy() if isinstance(m, Tensor) else np.asarray(m)
        if a.dtype != np.bool_:
            raise ValueError(f"mask[{n!r}]: expected a bool mask, got dtype {a.dtype}")
        names.append(n)
        shapes.append(tuple(int(x) for x in a.shape))
        flats.append(a.ravel())
    return PackedMask(np.packbits(np.concatenate(flats)), tuple(names), tuple(shapes))


def unpack_mask(packed: PackedMask, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Inverse of :func:`pack_mask`: name → bool tensor."""
    flat = np.unpackbits(packed.bits, count=packed.n_bits).astype(np.bool_)
    out, off = {}, 0
    for n, s in zip(packed.names, packed.shapes):
        size = math.prod(s)
        out[n] = torch.from_numpy(flat[off:off + size].reshape(s).copy()).to(device)
        off += size
    return out
