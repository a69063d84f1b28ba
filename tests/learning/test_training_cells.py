"""The cells the network trains on, read plate by plate (learning.training_cells): the same sets as one table
would give, their feature rows on disk."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cellresponse.config import TrainingConfig
from cellresponse.errors import InputError
from cellresponse.features.crop_store import CropStore
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.encoders import Scaler
from cellresponse.learning.training_cells import cell_sets

FEATURES = [f"f{i}" for i in range(6)]


def three_plate_run(root) -> RunFolder:
    """A run folder with three plates of cells (``cells.parquet/<plate>.parquet``) and a crop-store index."""
    rng = np.random.default_rng(1)
    (root / "cells.parquet").mkdir(parents=True)
    (root / "crops").mkdir()
    images, index = [], []
    for plate in ("P1", "P2", "P3"):
        ids = [f"{plate}_{f}" for f in range(10)]
        images.append(pd.DataFrame({"image_id": ids, "plate": plate, "label": [f"c{f % 3}" for f in range(10)]}))
        image_of, labels = np.repeat(ids, 25), np.tile(np.arange(1, 26), 10)
        cells = pd.DataFrame(rng.normal(5.0, 2.0, (len(image_of), len(FEATURES))), columns=FEATURES)
        cells.iloc[::13, 2] = np.nan
        cells.insert(0, "label", labels)
        cells.insert(0, "image_id", image_of)
        cells.insert(0, "cell_id", [f"{i}#{n}" for i, n in zip(image_of, labels, strict=True)])
        cells.to_parquet(root / "cells.parquet" / f"{plate}.parquet")
        index.append(cells[["cell_id", "image_id", "label"]])
    pd.concat(images, ignore_index=True).to_parquet(root / "images.parquet")
    index = pd.concat(index, ignore_index=True)[::-1].reset_index(drop=True)  # store rows in another order
    index.insert(0, "row", np.arange(len(index)))
    index["part"], index["offset"], index["length"] = index["image_id"] + ".crops", 0, 0
    index.to_parquet(root / "crops" / "index.parquet")
    return RunFolder(root)


def test_cell_sets_read_plate_by_plate_equal_those_of_the_whole_table(tmp_path):
    run = three_plate_run(tmp_path / "run")
    images = run.read_images()
    side = np.where(np.arange(len(images)) % 4 == 0, "validation", "train")
    sides = pd.DataFrame({"image_id": images["image_id"], "side": side}).iloc[:-2]  # two images outside the split
    read = []

    def parts():
        for part in run.cell_parts(images["image_id"], ["image_id", "label", *FEATURES]):
            read.append(len(part))
            yield part

    capped = TrainingConfig(max_cells_per_image=20)
    store = CropStore(run.crops)
    encoder, scaler, train, val, val_side = cell_sets(
        parts, FEATURES, sides, images, "label", capped, 0, store, run.training_cells / "0"
    )
    assert max(read) == 250  # one plate's cells at a time, never the whole table
    # the same sets from the whole table, as train made them before
    cells = run.read_cells()
    cells = cells[cells["image_id"].isin(set(sides["image_id"]))].copy()
    cells["side"] = cells["image_id"].map(dict(zip(sides["image_id"], sides["side"], strict=True)))
    cells["true_label"] = cells["image_id"].map(dict(zip(images["image_id"], images["label"], strict=True)))
    whole = Scaler.fit(cells[cells["side"] == "train"], FEATURES)
    np.testing.assert_allclose(scaler.mean, whole.mean, rtol=1e-13)
    assert val_side == "validation" and encoder.classes == ["c0", "c1", "c2"]
    for made, side_name in ((train, "train"), (val, "validation")):
        expected = cells[cells["side"] == side_name]
        per_image = expected.groupby("image_id").size()
        assert len(made.features) == len(made.rows) == len(made.targets) == min(20, per_image.max()) * len(per_image)
        assert isinstance(made.features, np.memmap)  # on disk, not in the process's memory
        # each row is its own cell's: the stored row maps back to the cell whose features it holds
        held = store.cells_at(made.rows)
        picked = expected.set_index("cell_id").loc[held["image_id"] + "#" + held["label"].astype(str)]
        np.testing.assert_array_equal(np.asarray(made.features), whole.transform(picked))
        np.testing.assert_array_equal(made.targets, encoder.transform(picked["true_label"]))


def test_a_training_cell_without_a_crop_is_named_in_one_line(tmp_path):
    run = three_plate_run(tmp_path / "run")
    store = CropStore(run.crops)
    index = pd.read_parquet(run.crops / "index.parquet")
    asked = pd.DataFrame({"cell_id": ["P1_0#1", "P1_0#99", "nope#1"], "image_id": ["P1_0", "P1_0", "nope"],
                          "label": [1, 99, 1]})  # fmt: skip
    rows = store.known_rows(asked)
    assert rows[1:].tolist() == [-1, -1] and store.cells_at(rows[:1]).values.tolist() == [["P1_0", 1]]
    with pytest.raises(InputError, match=r"^2 cells have no crop \(e\.g\. P1_0#99\) — rerun `cellresponse crops`"):
        store.rows_for(asked)
    with pytest.raises(InputError, match=r"\(e\.g\. nope#1\)"):  # named from image and label without a cell id
        store.rows_for(asked.iloc[2:, 1:])
    # a cell of a training image lost its crop: the sets refuse, in the same words
    index = index[index["cell_id"] != "P2_1#25"]
    index.assign(row=np.arange(len(index))).to_parquet(run.crops / "index.parquet")
    images = run.read_images()
    sides = pd.DataFrame({"image_id": images["image_id"], "side": "train"})
    sides.loc[0, "side"] = "validation"

    def parts():
        return run.cell_parts(images["image_id"], ["image_id", "label", *FEATURES])

    with pytest.raises(InputError, match=r"^1 cells have no crop — rerun `cellresponse crops`"):
        cell_sets(parts, FEATURES, sides, images, "label", TrainingConfig(), 0, CropStore(run.crops), tmp_path / "f")


def test_crop_store_finds_cells_by_image_and_label_and_refuses_an_index_holding_a_cell_twice(tmp_path):
    run = three_plate_run(tmp_path / "run")  # its index is not in (image, label) order: the store sorts it
    index = pd.read_parquet(run.crops / "index.parquet")
    store = CropStore(run.crops)
    shuffled = index.sample(frac=1.0, random_state=0)
    rows = store.rows_for(shuffled)  # any order, any plate
    assert sorted(rows) == list(range(len(index)))
    pd.testing.assert_frame_equal(store.cells_at(rows), shuffled[["image_id", "label"]].reset_index(drop=True))
    assert len(store) == len(index) and store.rows_for(shuffled.iloc[:0]).size == 0
    pd.concat([index, index.iloc[:1]]).assign(row=np.arange(len(index) + 1)).to_parquet(run.crops / "index.parquet")
    with pytest.raises(InputError, match="holds a cell twice"):
        CropStore(run.crops)
    two_parts = index.assign(part=np.where(index.index == 3, "other.crops", index["part"]))
    two_parts.to_parquet(run.crops / "index.parquet")
    with pytest.raises(InputError, match="in two part files"):
        CropStore(run.crops)


@pytest.mark.parametrize("contiguous", [True, False])
def test_crop_store_reads_each_cells_own_blob_whether_or_not_the_blobs_follow_each_other(tmp_path, contiguous):
    """Two images' parts of distinct crops; the index in (image, label) order, with a gap between the blobs of one
    image's cells where ``contiguous`` is False (the store then keeps the lengths instead of deriving them)."""
    from cellresponse.features.crop_store import write_part

    (tmp_path / "parts").mkdir()
    rows, size = [], 4
    for image, count in (("A", 3), ("B", 2)):
        crops = np.stack([np.full((8, size, size), 10 * ord(image) % 256 + n, np.uint8) for n in range(count)])
        write_part(tmp_path / "parts" / f"{image}.crops", crops)
        offsets = np.frombuffer((tmp_path / "parts" / f"{image}.crops").read_bytes()[16 : 16 + 8 * (count + 1)], "<u8")
        for n in range(count):
            rows.append({"cell_id": f"{image}#{n + 1}", "image_id": image, "label": n + 1, "part": f"{image}.crops",
                         "offset": int(offsets[n]), "length": int(offsets[n + 1] - offsets[n])})  # fmt: skip
    index = pd.DataFrame(rows)
    if not contiguous:  # the middle cell of A dropped: A's first blob no longer ends where the next row's starts
        index = index.drop(index=1)
    index.insert(0, "row", np.arange(len(index)))
    index.to_parquet(tmp_path / "index.parquet")
    (tmp_path / "settings.json").write_text(json.dumps({"settings": {"store_size": size}}))
    store = CropStore(tmp_path)
    assert (store._index.lengths is None) == contiguous
    wanted = index.iloc[::-1]
    crops = store.batch(store.rows_for(wanted))
    expected = [10 * ord(image) % 256 + n - 1 for image, n in zip(wanted["image_id"], wanted["label"], strict=True)]
    assert crops[:, :, 0, 0].tolist() == [[value] * 8 for value in expected]


def test_the_plates_are_read_with_one_read_of_the_image_table(tmp_path, monkeypatch):
    run = three_plate_run(tmp_path / "run")
    reads = []
    read_images = RunFolder.read_images
    monkeypatch.setattr(RunFolder, "read_images", lambda self: reads.append(1) or read_images(self))
    wanted = [f"P{p}_{f}" for p in (1, 3) for f in range(4)]
    parts = list(run.cell_parts(wanted, ["image_id", "label", *FEATURES]))
    assert len(reads) == 1  # not once a plate: a screen's image table is millions of rows
    assert [sorted(part["image_id"].unique()) for part in parts] == [wanted[:4], wanted[4:]]
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), run.read_cells(["label", *FEATURES], wanted))


def test_the_store_index_drops_image_names_no_cell_has_and_knows_its_order():
    from cellresponse.features.crop_store import in_cell_order, used_codes

    codes, names = used_codes(np.array([0, 0, 2, 2, 3], np.int16), np.array(["a", "unused", "c", "d"], dtype=object))
    assert codes.tolist() == [0, 0, 1, 1, 2] and names.tolist() == ["a", "c", "d"] and codes.dtype == np.int16
    assert in_cell_order(np.array([0, 0, 1]), np.array([1, 5, 2]))  # by image, then rising label
    assert not in_cell_order(np.array([0, 0, 1]), np.array([5, 1, 2]))  # labels fall within an image
    assert not in_cell_order(np.array([0, 0, 1]), np.array([1, 1, 2]))  # a cell twice
    assert not in_cell_order(np.array([1, 0]), np.array([1, 1]))  # images out of order
