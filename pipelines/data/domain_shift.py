"""Entry points used by the method registry."""
from __future__ import annotations

import os

from pipelines.data.arrow import to_datasets
from pipelines.data.bundle import DataBundle
from pipelines.data.digits import _DEFAULT_SHIFT, _check_embedded_args, embedded_digits_shift, embedded_name
from pipelines.data.parquet import read_parquet

_EMBEDDED_KW = ("image_size", "shift", "val_fraction")
_PARQUET_KW = ("image_shape", "val_fraction")


def load_domain_shift(source: str = "embedded", seed: int = 0, **kw) -> DataBundle:
    """``"embedded"`` -> :func:`embedded_digits_shift` + :func:`to_datasets`; else a parquet path.

    Keyword arguments: ``image_size``, ``shift``, ``val_fraction`` (embedded) and ``image_shape``,
    ``val_fraction`` (parquet); those that do not apply to the chosen source are ignored.
    """
    unknown = sorted(set(kw) - set(_EMBEDDED_KW) - set(_PARQUET_KW))
    if unknown:
        raise ValueError(f"load_domain_shift: unknown argument(s) {unknown}; allowed: "
                         f"{', '.join(sorted(set(_EMBEDDED_KW) | set(_PARQUET_KW)))}")
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise ValueError(f"source: {source!r} is not allowed; allowed: \"embedded\" or a parquet file/directory")
    if str(source) == "embedded":
        args = {k: v for k, v in kw.items() if k in _EMBEDDED_KW and v is not None}
        arrays = embedded_digits_shift(seed=seed, **args)
        shift = _check_embedded_args(seed, 16, args.get("shift", _DEFAULT_SHIFT), 0.2)
        return to_datasets(arrays, embedded_name(shift))
    args = {k: v for k, v in kw.items() if k in _PARQUET_KW and v is not None}
    return read_parquet(str(source), seed=seed, **args)


def build_domain_shift(cfg) -> DataBundle:
    """Registry hook: a validated config with ``seed`` and a ``data`` section -> :class:`DataBundle`."""
    d = cfg.data
    return load_domain_shift(d.source, seed=cfg.seed, image_size=d.image_size, shift=tuple(d.shift),
                             val_fraction=d.val_fraction, image_shape=d.image_shape)


def build_classification(cfg) -> DataBundle:
    """Registry hook for plain supervised methods: the same :class:`DataBundle`, with no domain shift.

    Embedded: the digits at ``data.image_size``, split as in :func:`digits_split_indices` with no
    shift applied, so ``source_train`` trains, ``source_val`` validates and ``target_test`` is a
    held-out test set of clean digits (``target_train`` is unused). Parquet: the same schema and
    rules as :func:`read_parquet` (source rows train/val, labelled target rows test).
    """
    d = cfg.data
    return load_domain_shift(d.source, seed=cfg.seed, image_size=d.image_size, shift=(),
                             val_fraction=d.val_fraction, image_shape=d.image_shape)
