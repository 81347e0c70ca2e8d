"""A run's data as MLflow dataset inputs: a digest and the shapes, never the images
(docs/architecture.md, "MLflow"; docs/ui.md)."""

from __future__ import annotations

from typing import Any


def log_dataset_input(data: Any, name: str, context: str, **source: Any) -> None:
    """Log ``data`` (a ``LabeledTensors``) as an MLflow dataset input of the active run
    (``dataset_input``)."""
    import mlflow  # heavy: imported on use (core/tracking/store.py)

    mlflow.log_input(dataset_input(data, name, **source), context=context)


def dataset_input(data: Any, name: str, **source: Any) -> Any:
    """``data`` (a ``LabeledTensors``) as an MLflow dataset: name, a digest of its labels and of
    its images' bytes, their shapes as the schema, and ``source`` (data set, split, n, seed, ...)
    as the source's tags. The images themselves are not logged. Build it once for data that many
    runs share (the evaluation half) and ``mlflow.log_input`` it in each."""
    import hashlib

    import numpy as np
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    x, y = data.x.detach().cpu(), data.y.detach().cpu()
    digest = hashlib.sha256()
    digest.update(y.numpy().astype(np.int64).tobytes())
    digest.update(x.contiguous().numpy().tobytes())
    schema = Schema([TensorSpec(np.dtype(str(x.dtype).removeprefix("torch.")), (-1, *x.shape[1:]), "image"),
                     TensorSpec(np.dtype(str(y.dtype).removeprefix("torch.")), (-1,), "label")])
    tags = {k: str(v) for k, v in source.items()}
    return MetaDataset(CodeDatasetSource(tags=tags), name=name, digest=digest.hexdigest()[:8], schema=schema)
