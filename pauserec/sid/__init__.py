"""Semantic IDs: item text -> embedding -> codes, a de-duplication level, published indexes,
reports.

| module   | holds                                                                                |
|----------|--------------------------------------------------------------------------------------|
| kmeans   | k-means and residual k-means (the algorithm below every method)                      |
| balanced | ``rq-kmeans-balanced``: Sinkhorn-balanced residual k-means                           |
| rqvae    | ``rq-vae``: the RQ-VAE of TIGER / LC-Rec                                             |
| quantise | method name -> codes, cached by the embeddings' content and the settings             |
| ids      | :class:`SIDConfig`, :func:`build` (or import an index), de-dup, index files, reports |
| compare  | ours beside a published index of the same catalog (``sid build --compare``)          |
| command  | ``python -m pauserec sid build``                                                     |

Dependencies point down the table's first four rows: an algorithm lives below the dispatcher that
calls it.
"""

from pauserec.sid.ids import (
    BUILD_SOURCES,
    DEFAULT_METHOD,
    METHODS,
    SIDConfig,
    add_dedup_level,
    build,
    codebook_sizes,
    effective_codebook_size,
    embed_texts,
    embeddings,
    format_report,
    load_index,
    report,
    write_index,
)

__all__ = [
    "BUILD_SOURCES",
    "DEFAULT_METHOD",
    "METHODS",
    "SIDConfig",
    "add_dedup_level",
    "build",
    "codebook_sizes",
    "effective_codebook_size",
    "embed_texts",
    "embeddings",
    "format_report",
    "load_index",
    "report",
    "write_index",
]
