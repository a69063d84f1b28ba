"""The per-image profile tables the profile models learn from and are scored on: measured always, deep and
both where every image has its embeddings from the frozen network."""

from __future__ import annotations

import logging

import pandas as pd

from cellresponse.features.cell_features import feature_columns
from cellresponse.features.embedding_tables import frozen_embedding_settings, mean_embeddings
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.profile_models import PROFILE_KINDS, filled, image_feature_statistics, image_profiles

log = logging.getLogger(__name__)


def profile_tables(run: RunFolder, cells: pd.DataFrame, image_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Per-image profiles of every kind the run has: measured always, deep and both once every image of the
    split has its embeddings from the frozen pretrained network (``cellresponse embed``)."""
    cells = cells[cells["image_id"].isin(set(image_ids))]
    return profile_tables_of(run, image_feature_statistics(cells, feature_columns(cells.columns)), image_ids)


def profile_tables_of(run: RunFolder, statistics: pd.DataFrame, image_ids: list[str]) -> dict[str, pd.DataFrame]:
    """:func:`profile_tables` from per-image cell statistics (``image_feature_statistics``, computed plate by plate
    where the cells come so; index image_id, in order) of at least ``image_ids``."""
    measured = filled(statistics[statistics.index.isin(set(image_ids))])
    embedded = frozen_embedding_settings(run) is not None and all(run.embedding_path(i).is_file() for i in image_ids)
    if not embedded:
        log.info("no frozen-network embeddings for every image: the deep and both profile models are left out")
    deep = mean_embeddings(run, image_ids) if embedded else None
    return {
        kind: image_profiles(kind, measured, deep) for kind in PROFILE_KINDS if deep is not None or kind == "measured"
    }
