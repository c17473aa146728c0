"""Opening a prepared data set's records, and reading their text fields.

`open_records(data, split)`: a random-access TFDS data source of the configured builder (the
schema of data/tfds/common.py), what the LM pipeline, the demo and the evaluation read.
`field_text(v)`: one field of such a record as `str` (TFDS gives text back as bytes).
"""

from __future__ import annotations

from typing import Any

import ml_collections


def field_text(v: Any) -> str:
    """A record's field as text: bytes decoded as UTF-8, anything else through `str`."""
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def open_records(data: ml_collections.ConfigDict, split: str) -> Any:
    """A TFDS data source of the configured builder (images left undecoded: codes suffice)."""
    import tensorflow_datasets as tfds

    import llmcxr_jax.data.tfds  # noqa: F401  (registers our builders)

    name = data.builder + (f"/{data.builder_config}" if data.get("builder_config") else "")
    kwargs = dict(data.get("builder_kwargs", {}) or {})
    builder = tfds.builder(
        name, data_dir=data.data_dir or None, file_format="array_record", **kwargs
    )
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{name} is not prepared in {data.data_dir or '~/tensorflow_datasets'}: run "
            "`llmcxr-jax prepare-data` (or the demo) first"
        )
    decoders = {"image": tfds.decode.SkipDecoding()} if "image" in builder.info.features else None
    return builder.as_data_source(split, decoders=decoders)
