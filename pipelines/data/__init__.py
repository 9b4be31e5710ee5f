"""The data layer: what the methods train on, as Ray Datasets, from the embedded benchmarks or users' files.

It imports no method (import-linter checks it). Modules:

* :mod:`pipelines.data.bundle`: split names, :class:`DataBundle`, :class:`DataValidationError`;
* :mod:`pipelines.data.digits`: the embedded domain-shift benchmark (scikit-learn digits, a seeded shift);
* :mod:`pipelines.data.arrow`: numpy arrays -> Ray Datasets (tensor columns, ``from_blocks``);
* :mod:`pipelines.data.parquet`: the domain-shift parquet schema: write, validate (streamed, one clear error), read;
* :mod:`pipelines.data.images`: embedded image sets of the generative methods (digits, natural patches);
* :mod:`pipelines.data.domain_shift`: the entry points of the domain-shift and classification methods;
* :mod:`pipelines.data.tasks`: ordered task streams of continual learning (embedded, arrays, parquet);
* :mod:`pipelines.data.shift_pair`: domain pairs of shift_explainer (embedded colour/thickness, parquet).
"""
from __future__ import annotations

from pipelines.data.bundle import (DataBundle, DataValidationError, DOMAINS, FEATURE_COLUMNS, IMAGE_SHAPE_KEY,
                                   LABELLED_SPLITS, SHIFT_OPS, SPLIT_VALUES, SPLITS)
from pipelines.data.digits import (apply_shift, digits_images, digits_split_indices, embedded_digits_shift,
                                   embedded_name)
from pipelines.data.arrow import (dataset_from_tables, to_datasets)
from pipelines.data.parquet import (parquet_files, read_parquet, split_uniform, validate_parquet, write_parquet)
from pipelines.data.images import (build_images, embedded_images, GAN_SPLITS, IMAGE_SETS, natural_patches)
from pipelines.data.domain_shift import (build_classification, build_domain_shift, load_domain_shift)
from pipelines.data.tasks import (build_task_stream, embedded_task_stream, read_task_parquet, TASK_SPLIT_VALUES,
                                  task_stream_from_arrays, TASK_STREAMS, TaskStream, write_task_parquet,
                                  _select_task_rows, _validate_task_parquet)
from pipelines.data.shift_pair import (build_shift_pair, colourise, embedded_colour_thickness, SHIFT_PAIR_SPLITS)

__all__ = [
    "DataBundle", "DataValidationError", "DOMAINS", "FEATURE_COLUMNS", "IMAGE_SHAPE_KEY", "LABELLED_SPLITS",
    "SHIFT_OPS", "SPLIT_VALUES", "SPLITS", "apply_shift", "digits_images", "digits_split_indices",
    "embedded_digits_shift", "embedded_name", "dataset_from_tables", "to_datasets", "parquet_files",
    "read_parquet", "split_uniform", "validate_parquet", "write_parquet", "build_images", "embedded_images",
    "GAN_SPLITS", "IMAGE_SETS", "natural_patches", "build_classification", "build_domain_shift",
    "load_domain_shift", "build_task_stream", "embedded_task_stream", "read_task_parquet", "TASK_SPLIT_VALUES",
    "task_stream_from_arrays", "TASK_STREAMS", "TaskStream", "write_task_parquet", "_select_task_rows",
    "_validate_task_parquet", "build_shift_pair", "colourise", "embedded_colour_thickness", "SHIFT_PAIR_SPLITS"
]
