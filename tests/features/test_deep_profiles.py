"""The embed and profile stages on a measured tiny plate: cell embeddings (resumed after a kill, sampled, per
channel, on Dask workers, with only the images in flight held), pycytominer well profiles and their benchmarks.
The embedder itself: tests/networks/test_embeddings.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pycytominer
import pytest
from pycytominer.cyto_utils import infer_cp_features

from cellresponse.features.embedding_tables import mean_embeddings, sampled_cells
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.well_profiles import TREATMENT
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def measured_run(tiny_plates, tmp_path_factory):
    run = tmp_path_factory.mktemp("deep") / "run"
    run_cli(
        "run", "--load-data", tiny_plates / "load_data.csv", "--out", run, "--until", "measure",
        "--workers", "0", "--no-progress",
    )  # fmt: skip
    return run


def test_embed_resumed_after_a_kill_equals_an_uninterrupted_run(measured_run, tmp_path):
    import shutil

    killed = tmp_path / "killed"
    shutil.copytree(measured_run, killed)
    run_cli("embed", measured_run, "--no-progress")
    summary = RunFolder(measured_run).read_summary("embed")
    assert summary["device"] == "cpu" and summary["batch_size"] == 16  # null → the CPU's batch
    total = len(list((measured_run / "embeddings").glob("*.parquet")))
    process = subprocess.Popen(
        [sys.executable, "-m", "cellresponse.cli", "embed", str(killed), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "embeddings").glob("*.parquet"))) < 2:
        if process.poll() is not None:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((killed / "embeddings").glob("*.parquet")))
    if done >= total:
        pytest.skip("embed finished every image before the kill landed")
    run_cli("embed", killed, "--no-progress")
    for path in sorted((measured_run / "embeddings").glob("*.parquet")):
        expected, resumed = pd.read_parquet(path), pd.read_parquet(killed / "embeddings" / path.name)
        pd.testing.assert_frame_equal(resumed, expected, check_exact=False, atol=1e-5, rtol=1e-5)
    assert not list((killed / "embeddings").glob(".*.tmp"))


def test_profile_writes_pycytominer_tables_and_benchmarks(measured_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(measured_run, run)
    run_cli("embed", run, "--no-progress")
    # each image's mean embedding, kept when embed finishes, equals the mean of its per-cell file, and is
    # rebuilt when an image is embedded again
    folder = RunFolder(run)
    ids = folder.read_images()["image_id"].tolist()
    kept = mean_embeddings(folder, ids)
    folder.embedding_means.unlink()
    from_files = mean_embeddings(folder, ids)
    pd.testing.assert_frame_equal(kept, from_files, check_exact=False, rtol=1e-6, atol=1e-7)
    assert len(kept) == len(ids) and kept.columns[0] == "emb_0000"
    run_cli("embed", run, "--no-progress")  # nothing left to embed: the means are written from the files
    assert folder.embedding_means.is_file()
    folder.embedding_path(ids[0]).unlink()
    stale = pd.read_parquet(folder.embedding_means)
    stale.loc[:, kept.columns] = 0.0  # a kept table that is not rebuilt would give these zeros back
    stale.to_parquet(folder.embedding_means, index=False)
    run_cli("embed", run, "--no-progress")  # one image again: the means are rebuilt, not kept
    pd.testing.assert_frame_equal(mean_embeddings(folder, ids), kept, check_exact=False, rtol=1e-5, atol=1e-6)
    result = run_cli("profile", run, "--set", "profiles.moa=Metadata_target", "--no-progress")
    assert "Indexing metadata" not in result.stdout + result.stderr  # copairs' chatter stays out
    for kind in ("measured", "deep", "both"):
        wells = pd.read_parquet(run / "profiles" / f"{kind}_wells.parquet")
        treatments = pd.read_parquet(run / "profiles" / f"{kind}_treatments.parquet")
        meta = [c for c in wells.columns if c.startswith("Metadata_")]
        features = [c for c in wells.columns if not c.startswith("Metadata_")]
        assert {"Metadata_Plate", "Metadata_Well", TREATMENT} <= set(meta) and features
        assert wells.columns.tolist() == meta + features  # pycytominer's convention: metadata first
        assert len(wells) == wells[["Metadata_Plate", "Metadata_Well"]].drop_duplicates().shape[0]
        assert treatments[TREATMENT].is_unique
        # CellProfiler's compartment prefix: pycytominer infers the features without being told them
        assert all(c.startswith("Cells_") for c in features)
        assert infer_cp_features(wells) == features
        normalized = pycytominer.normalize(wells, samples="all")
        assert normalized.columns.tolist() == wells.columns.tolist()
    metrics = json.loads((run / "profiles" / "metrics.json").read_text())
    for kind in ("measured", "deep", "both"):
        block = metrics["kinds"][kind]
        assert "mean_average_precision" in block["map_replicates"]
        assert "accuracy" in block["nsc"] or "skipped" in block["nsc"]


def test_per_channel_embeddings_hold_one_block_per_channel(measured_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    # without the rgb embeddings other tests may have written there (a run keeps one embedding setting)
    shutil.copytree(measured_run, run, ignore=shutil.ignore_patterns("embeddings", "embedding_means.parquet"))
    run_cli("embed", run, "--set", "embedding.mode=per_channel", "--no-progress")
    settings = json.loads((run / "embeddings" / "settings.json").read_text())["settings"]
    channels = settings["channels"]
    assert settings["mode"] == "per_channel" and len(channels) >= 2
    table = pd.concat(pd.read_parquet(p) for p in sorted((run / "embeddings").glob("*.parquet")))
    embedding = table[[c for c in table.columns if c.startswith("emb_")]].to_numpy()
    assert embedding.shape[1] == 1280 * len(channels)
    blocks = embedding.reshape(len(embedding), len(channels), 1280)
    # each channel seen on its own: the blocks differ, and none is empty
    assert not np.allclose(blocks[:, 0], blocks[:, 1]) and (np.abs(blocks).sum(axis=2) > 0).all()


def test_a_sample_of_an_images_cells_is_the_same_on_every_run_and_keeps_their_order():
    cells = pd.DataFrame({"label": np.arange(1, 41)})
    first = sampled_cells(cells, "P1-A01-1", 10)
    assert len(first) == 10 and first["label"].is_monotonic_increasing and set(first["label"]) <= set(cells["label"])
    pd.testing.assert_frame_equal(first, sampled_cells(cells.copy(), "P1-A01-1", 10))  # seeded by the image id
    assert not first["label"].equals(sampled_cells(cells, "P1-A01-2", 10)["label"])  # each image its own sample
    assert sampled_cells(cells, "P1-A01-1", 40) is cells and sampled_cells(cells, "P1-A01-1", None) is cells


def test_embed_takes_at_most_the_cells_asked_for_and_keeps_the_setting(measured_run, tmp_path):
    """``embedding.max_cells_per_image``: each image's embeddings hold at most that many of its cells, the mean and
    cell count in embedding_means.parquet are theirs, and a later embed with another cap is refused (a run keeps
    one embedding setting) instead of mixing samples."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(measured_run, run, ignore=shutil.ignore_patterns("embeddings", "embedding_means.parquet"))
    run_cli("embed", run, "--set", "embedding.max_cells_per_image=3", "--no-progress")
    folder = RunFolder(run)
    assert json.loads(folder.embedding_settings.read_text())["settings"]["max_cells_per_image"] == 3
    means = pd.read_parquet(folder.embedding_means).set_index("image_id")
    for image_id in means.index:
        cells = pd.read_parquet(folder.cells_path(image_id), columns=["label"])
        table = pd.read_parquet(folder.embedding_path(image_id))
        assert len(table) == min(3, len(cells)) == means.loc[image_id, "cell_count"]
        columns = [c for c in table.columns if c.startswith("emb_")]
        np.testing.assert_allclose(means.loc[image_id, columns].to_numpy(float), table[columns].mean(), rtol=1e-5)
    assert (means["cell_count"] == 3).any()  # the fixture's fields hold more than three cells
    refused = run_cli("embed", run, "--set", "embedding.max_cells_per_image=5", "--no-progress", check=False)
    assert refused.returncode != 0 and "rerun with --overwrite" in refused.stdout + refused.stderr


def test_settled_scales_keep_refuse_or_start_over(tmp_path):
    """The stored scales of an output folder: reused with the same settings, refused with others or with another
    scope asked for (nothing mixed), made anew after --overwrite (crops and embed share this)."""
    import json

    from cellresponse.errors import InputError
    from cellresponse.stages.per_image import settled_scales

    folder, path = tmp_path / "out", tmp_path / "out" / "settings.json"
    first = settled_scales(folder, path, {"a": 1}, lambda: ({"P": [[0, 1]]}, "experiment"), False, "redo")
    assert first == {"P": [[0, 1]]} and json.loads(path.read_text())["scope"] == "experiment"
    assert settled_scales(folder, path, {"a": 1}, lambda: pytest.fail("recomputed"), False, "redo") == first
    assert settled_scales(folder, path, {"a": 1}, lambda: pytest.fail("recomputed"), False, "redo", "experiment")
    with pytest.raises(InputError, match=r"scaled per experiment, not per plate .*--overwrite to redo"):
        settled_scales(folder, path, {"a": 1}, lambda: pytest.fail("recomputed"), False, "redo", "plate")
    with pytest.raises(InputError, match=r"other settings .*--overwrite to redo"):
        settled_scales(folder, path, {"a": 2}, lambda: ({}, "plate"), False, "redo")
    (folder / "part.npy").write_bytes(b"")
    again = settled_scales(folder, path, {"a": 2}, lambda: ({"P": [[2, 3]]}, "plate"), True, "redo")
    assert again == {"P": [[2, 3]]} and not (folder / "part.npy").exists()
    # a folder written before scopes were stored was scaled per plate
    path.write_text(json.dumps({"settings": {"a": 2}, "scales": again}))
    with pytest.raises(InputError, match="scaled per plate, not per experiment"):
        settled_scales(folder, path, {"a": 2}, lambda: pytest.fail("recomputed"), False, "redo", "experiment")


def test_embed_holds_only_the_images_in_flight(measured_run, tmp_path, monkeypatch):
    """The main process keeps a few images' windows, not every image's: memory independent of the plate's size
    (a list of finished read-ahead futures once kept them all, 1.5 GB at 48 CPJUMP1 fields)."""
    import gc
    import shutil
    import weakref

    from cellresponse.config import load_config
    from cellresponse.input.runfolder import RunFolder
    from cellresponse.stages import embed

    run = RunFolder(tmp_path / "run")
    # without the embeddings other tests may have written there: every image is embedded here
    shutil.copytree(measured_run, run.root, ignore=shutil.ignore_patterns("embeddings", "embedding_means.parquet"))
    alive: list[weakref.ref] = []
    most_alive = []
    real_windows = embed._windows

    def tracked_windows(*args, **kwargs):
        image_id, ids, windows = real_windows(*args, **kwargs)
        alive.append(weakref.ref(windows))
        return image_id, ids, windows

    class CountingEmbedder:
        def __init__(self, *args, **kwargs):
            pass

        def dims(self, channels: int) -> int:
            return 4

        def __call__(self, windows: np.ndarray) -> np.ndarray:
            gc.collect()
            most_alive.append(sum(ref() is not None for ref in alive))
            return np.zeros((len(windows), 4), np.float32)

    monkeypatch.setattr(embed, "_windows", tracked_windows)
    monkeypatch.setattr(embed, "Embedder", CountingEmbedder)
    monkeypatch.setattr(embed, "GATHER", 1)  # one image per network call
    summary = embed.run(run, load_config(run.config), progress=False)
    images = summary["embedded_now"]
    assert summary["device"] == "cpu"  # the stage's record names where the network ran
    assert images >= 3 * embed.PREFETCH and len(most_alive) == images
    assert max(most_alive) <= embed.PREFETCH + 1


def test_embed_on_dask_workers_equals_embed_in_process(measured_run, tmp_path):
    """embedding.execution: workers — one task per image on two worker processes, each loading the backbone once —
    writes the embeddings (and the means) the in-process run writes."""
    import shutil

    here, workers = tmp_path / "here", tmp_path / "workers"
    for folder in (here, workers):
        shutil.copytree(measured_run, folder, ignore=shutil.ignore_patterns("embeddings", "embedding_means.parquet"))
    run_cli("embed", here, "--no-progress")
    run_cli("embed", workers, "--workers", "2", "--set", "embedding.execution=workers", "--no-progress")
    assert RunFolder(workers).read_summary("embed")["execution"] == "Dask workers"
    assert RunFolder(here).read_summary("embed")["execution"] == "this process"
    ids = RunFolder(here).read_images()["image_id"].tolist()
    for image_id in ids:
        a = pd.read_parquet(RunFolder(here).embedding_path(image_id))
        b = pd.read_parquet(RunFolder(workers).embedding_path(image_id))
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5)
    pd.testing.assert_frame_equal(
        mean_embeddings(RunFolder(here), ids), mean_embeddings(RunFolder(workers), ids), rtol=1e-4, atol=1e-5
    )


def test_measured_profiles_built_plate_by_plate_equal_those_of_the_whole_table(measured_run):
    """The profile stage reads cells.parquet one plate's part at a time (a screen holds one plate's cells at once);
    the per-image table equals the one built from all cells at once."""
    from cellresponse.features.cell_features import feature_columns
    from cellresponse.profiling.profile_models import image_feature_table
    from cellresponse.stages.profile import measured_image_table

    run = RunFolder(measured_run)
    images = run.read_images()
    assert images["plate"].nunique() == 2
    cells = run.read_cells()
    whole = image_feature_table(cells, feature_columns(cells.columns))
    by_plate = measured_image_table(run, images)
    pd.testing.assert_frame_equal(by_plate.sort_index(), whole.sort_index(), check_exact=False, rtol=1e-9)
