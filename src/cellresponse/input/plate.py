"""Plate input: find the images of a plate and join them to treatment metadata.

Two image sources give the same **image table** (one row per field of view):

* a folder of Phenix-named TIFFs, ``r01c01f01p01-ch3sk1fk1fl1.tiff`` (row, column, field, plane, channel);
* a CellProfiler ``load_data.csv`` with ``FileName_Orig<Name>``/``PathName_Orig<Name>`` and ``Metadata_*`` columns.

Columns of the image table (``RUN/images.parquet``):

``image_id``       unique, file-name safe id: ``<plate>_<CoreFileName>``
``plate``, ``well`` (``A01``), ``site`` (int)
``CoreFileName``   ``r01c01f01``, the study's join key
``FileName_Orig<Name>``, ``PathName_Orig<Name>``  one pair per channel, in channel order; paths absolute
``Metadata_*``     every metadata column of the source and of the joined treatment table
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellresponse.errors import InputError
from cellresponse.input.illumination import ILLUM_PATH

log = logging.getLogger(__name__)

PHENIX_PATTERN = re.compile(
    r"^r(?P<row>\d{2})c(?P<col>\d{2})f(?P<field>\d{2,3})p(?P<plane>\d{2})-ch(?P<channel>\d+)"
    r"sk\d+fk\d+fl\d+\.tiff?$",
    re.IGNORECASE,
)
CORE_PATTERN = re.compile(r"^(r\d{2}c\d{2}f\d{2,3})")
WELL_PATTERN = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,2})$")
FILE_PREFIX, PATH_PREFIX = "FileName_Orig", "PathName_Orig"
# Plates holding fewer distinct compounds than this (median over plates) are confounded with them: a per-plate
# statistic (a normalisation, an intensity scale) is there a per-compound one and erases what the compound does.
MIN_COMPOUNDS_PER_PLATE = 4


@dataclass(frozen=True)
class PhenixName:
    row: int
    col: int
    field: int
    plane: int
    channel: int

    @property
    def well(self) -> str:
        return well_name(self.row, self.col)

    @property
    def core(self) -> str:
        return core_file_name(self.row, self.col, self.field)


def parse_phenix_name(name: str) -> PhenixName | None:
    """Parse ``r01c02f03p01-ch4sk1fk1fl1.tiff``; ``None`` for any other name."""
    match = PHENIX_PATTERN.match(Path(name).name)
    if match is None:
        return None
    return PhenixName(**{key: int(value) for key, value in match.groupdict().items()})


def _row_letters(row: int) -> str:
    letters = ""
    while row > 0:
        row, rem = divmod(row - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def well_name(row: int, col: int) -> str:
    """1-based row/column to a well name: (1, 1) -> ``A01``, (16, 24) -> ``P24``, (27, 1) -> ``AA01``."""
    if row < 1 or col < 1:
        raise ValueError(f"row and column are 1-based, got {row}, {col}")
    return f"{_row_letters(row)}{col:02d}"


def parse_well(well: str) -> tuple[int, int]:
    """``B02`` -> (2, 2); also accepts ``b2`` and ``AA01``."""
    match = WELL_PATTERN.match(str(well).strip())
    if match is None:
        raise InputError(f"cannot read well name {well!r} (expected a name like A01)")
    letters, col = match.groups()
    row = 0
    for letter in letters.upper():
        row = row * 26 + (ord(letter) - ord("A") + 1)
    return row, int(col)


def core_file_name(row: int, col: int, field: int) -> str:
    """The study's join key, ``r01c01f01``."""
    return f"r{row:02d}c{col:02d}f{field:02d}"


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "image"


def channel_names(table: pd.DataFrame) -> list[str]:
    """Channel names of an image table in channel order (``FileName_OrigDNA`` -> ``DNA``)."""
    return [c[len(FILE_PREFIX) :] for c in table.columns if c.startswith(FILE_PREFIX)]


def channel_paths(row: pd.Series | dict, names: list[str]) -> list[Path]:
    return [Path(row[f"{PATH_PREFIX}{n}"]) / row[f"{FILE_PREFIX}{n}"] for n in names]


def group_keys(table: pd.DataFrame, by: str, column: str | None = None) -> pd.Series:
    """The group each row (an image, or a cell with image/plate/well columns) belongs to at a level: ``cell``,
    ``image``, ``well`` (``plate/well``), ``plate`` or a ``column`` — the unit of splits and of votes."""
    if by == "cell":
        return table["cell_id"].astype(str)
    if by == "image":
        return table["image_id"].astype(str)
    if by == "well":
        return table["plate"].astype(str) + "/" + table["well"].astype(str)
    if by == "plate":
        return table["plate"].astype(str)
    if by == "column":
        if not column or column not in table.columns:
            raise InputError(f"split column {column!r} not in the image table; columns: {list(table.columns)}")
        return table[column].astype(str)
    raise InputError(f"unknown grouping level {by!r}")


# --------------------------------------------------------------------------------------------------
# Image sources
# --------------------------------------------------------------------------------------------------


def _plate_from_folder(folder: Path) -> str:
    # Phenix exports are named "<plate>__<date>-Measurement N/Images"; use the plate part.
    name = folder.parent.name if folder.name.lower() == "images" else folder.name
    return name.split("__")[0]


def scan_phenix_folder(folder: str | Path, plate: str | None = None) -> pd.DataFrame:
    """Find Phenix-named TIFFs under ``folder`` (recursively); one row per plate/well/field.

    Each sub-folder holding images is one plate, named after the folder (``BR00116991__2020...`` ->
    ``BR00116991``) unless ``plate`` is given. Only the first focal plane is used. A field missing
    a channel that other fields have is an error naming the missing file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    records = []
    for path in sorted(folder.rglob("*")):
        parsed = parse_phenix_name(path.name)
        if parsed is not None and path.is_file():
            records.append((path, parsed))
    if not records:
        raise InputError(
            f"no Phenix-named images (like r01c01f01p01-ch1sk1fk1fl1.tiff) under {folder}; "
            "for other names use --load-data with a CellProfiler load_data.csv"
        )
    planes = sorted({p.plane for _, p in records})
    if len(planes) > 1:
        log.warning("found planes %s; using plane %02d only", planes, planes[0])
    channels = sorted({p.channel for _, p in records})
    fields: dict[tuple[Path, str], dict[int, Path]] = {}
    for path, parsed in records:
        if parsed.plane != planes[0]:
            continue
        fields.setdefault((path.parent, parsed.core), {})[parsed.channel] = path
    rows = []
    for (parent, core), by_channel in sorted(fields.items()):
        missing = [c for c in channels if c not in by_channel]
        if missing:
            example = next(iter(by_channel.values())).name
            wanted = re.sub(r"-ch\d+", f"-ch{missing[0]}", example)
            raise InputError(
                f"missing channel file: {parent / wanted} (field {core} has channels "
                f"{sorted(by_channel)}, the plate has {channels})"
            )
        parsed = parse_phenix_name(by_channel[channels[0]].name)
        assert parsed is not None
        plate_name = plate or _plate_from_folder(parent)
        row = {
            "plate": plate_name,
            "well": parsed.well,
            "site": parsed.field,
            "CoreFileName": core,
        }
        for c in channels:
            row[f"{FILE_PREFIX}ch{c}"] = by_channel[c].name
            row[f"{PATH_PREFIX}ch{c}"] = str(by_channel[c].parent.resolve())
        rows.append(row)
    table = pd.DataFrame(rows)
    return _finish_table(table)


def read_load_data(csv_path: str | Path) -> pd.DataFrame:
    """Read a CellProfiler ``load_data.csv``; relative ``PathName_*`` are taken from the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"load_data file not found: {csv_path}")
    table = read_table(csv_path)
    names = channel_names(table)
    if not names:
        raise InputError(f"{csv_path} has no FileName_Orig<Name> columns (CellProfiler load_data format)")
    for name in names:
        if f"{PATH_PREFIX}{name}" not in table.columns:
            raise InputError(f"{csv_path} has {FILE_PREFIX}{name} but no {PATH_PREFIX}{name} column")
        base = csv_path.parent.resolve()
        table[f"{PATH_PREFIX}{name}"] = [
            str(p if Path(p).is_absolute() else (base / p).resolve()) for p in table[f"{PATH_PREFIX}{name}"].astype(str)
        ]
    for column in [c for c in table.columns if c.startswith(ILLUM_PATH)]:  # CellProfiler's illumination functions
        table[column] = [
            p if pd.isna(p) or Path(str(p)).is_absolute() else str((csv_path.parent.resolve() / str(p)).resolve())
            for p in table[column]
        ]
    for required in ("Metadata_Well",):
        if required not in table.columns:
            raise InputError(f"{csv_path} has no {required} column")
    table["plate"] = table["Metadata_Plate"].astype(str) if "Metadata_Plate" in table else csv_path.stem
    table["well"] = [well_name(*parse_well(w)) for w in table["Metadata_Well"]]
    if "Metadata_Site" in table:
        table["site"] = table["Metadata_Site"].astype(int)
    else:
        table["site"] = table.groupby(["plate", "well"]).cumcount() + 1
    first = table[f"{FILE_PREFIX}{names[0]}"].astype(str)
    cores = first.str.extract(CORE_PATTERN, expand=False)
    derived = [core_file_name(*parse_well(w), s) for w, s in zip(table["well"], table["site"], strict=True)]
    table["CoreFileName"] = cores.fillna(pd.Series(derived, index=table.index))
    return _finish_table(table)


def _finish_table(table: pd.DataFrame) -> pd.DataFrame:
    table["image_id"] = [safe_id(f"{p}_{c}") for p, c in zip(table["plate"], table["CoreFileName"], strict=True)]
    duplicated = table["image_id"].duplicated(keep=False)
    if duplicated.any():
        # CoreFileName is not unique (e.g. a load_data.csv with several rows per well/site): fall back
        # to a running number so every image keeps its own id.
        table.loc[duplicated, "image_id"] = [
            f"{i}-{n}" for n, i in enumerate(table.loc[duplicated, "image_id"], start=1)
        ]
    table["site"] = table["site"].astype(int)
    return _finish_columns(table).reset_index(drop=True)


def check_files_exist(table: pd.DataFrame) -> None:
    """Fail on the first channel file that does not exist, naming it."""
    names = channel_names(table)
    for _, row in table.iterrows():
        for path in channel_paths(row, names):
            if not path.is_file():
                raise InputError(
                    f"missing channel file: {path} (image {row['image_id']}); fix the path or remove the row"
                )


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or TSV (separator from the extension, else sniffed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"table not found: {path}")
    sep = "\t" if path.suffix.lower() in {".tsv", ".tab"} else None
    try:
        table = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c")
    except Exception as exc:
        raise InputError(f"cannot read table {path}: {exc}") from None
    if table.empty:
        raise InputError(f"table {path} has no rows")
    return table


@dataclass
class JoinReport:
    """What the metadata join kept and dropped (the study drops unmatched rows on both sides)."""

    how: str
    matched: int
    metadata_without_images: int
    images_without_metadata: int
    examples_metadata_only: list[str] = field(default_factory=list)
    examples_images_only: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"metadata join by {self.how}: {self.matched} images matched"
        if self.metadata_without_images:
            text += (
                f"; {self.metadata_without_images} metadata rows without images dropped "
                f"(e.g. {', '.join(self.examples_metadata_only)})"
            )
        if self.images_without_metadata:
            text += (
                f"; {self.images_without_metadata} images without metadata dropped "
                f"(e.g. {', '.join(self.examples_images_only)})"
            )
        return text

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _prefix_metadata(table: pd.DataFrame) -> pd.DataFrame:
    renames = {}
    for column in table.columns:
        if column.startswith(("Metadata_", FILE_PREFIX, PATH_PREFIX)) or column == "CoreFileName":
            continue
        renames[column] = f"Metadata_{column}"
    return table.rename(columns=renames)


def platemap_to_metadata(platemap: pd.DataFrame, compounds: list[pd.DataFrame]) -> pd.DataFrame:
    """JUMP-style platemap (well_position -> broad_sample) joined to compound tables (-> pert_iname, target).

    Wells with no broad_sample are the solvent control: their ``pert_iname`` is the ``solvent`` value
    (DMSO in CPJUMP1).
    """
    if not {"well_position", "broad_sample"} <= set(platemap.columns):
        raise InputError("a platemap needs the columns well_position and broad_sample")
    table = platemap.copy()
    for compound in compounds:
        extra = [c for c in compound.columns if c != "broad_sample" and c not in table.columns]
        table = table.merge(compound[["broad_sample", *extra]], on="broad_sample", how="left")
    control = table["solvent"] if "solvent" in table.columns else "DMSO"
    if "pert_iname" not in table.columns:
        table["pert_iname"] = np.nan
    empty = table["broad_sample"].isna()
    table["pert_iname"] = table["pert_iname"].astype(object)
    table.loc[empty, "pert_iname"] = control[empty] if isinstance(control, pd.Series) else control
    # The solvent wells are JUMP's negative controls: say so where the compound table uses pert_type / control_type.
    for column, value in (("pert_type", "control"), ("control_type", "negcon")):
        if column in table.columns:
            table[column] = table[column].astype(object)
            table.loc[empty, column] = value
    if "target" not in table.columns and "target_list" in table.columns:
        table["target"] = table["target_list"]
    table["Metadata_Well"] = [well_name(*parse_well(w)) for w in table["well_position"]]
    return _prefix_metadata(table.drop(columns=["well_position"]))


def _classify_metadata(tables: list[pd.DataFrame]) -> tuple[str, pd.DataFrame]:
    """Work out the join from the tables given: core file name, plate/well, or a platemap."""
    if len(tables) > 1 or ({"well_position", "broad_sample"} <= set(tables[0].columns)):
        platemaps = [t for t in tables if "well_position" in t.columns]
        if len(platemaps) != 1:
            raise InputError(
                "several metadata tables given: expected one JUMP platemap (well_position, broad_sample) "
                "and compound tables keyed by broad_sample"
            )
        compounds = [t for t in tables if "well_position" not in t.columns]
        for t in compounds:
            if "broad_sample" not in t.columns:
                raise InputError("compound metadata tables must have a broad_sample column")
        return "platemap", platemap_to_metadata(platemaps[0], compounds)
    table = _prefix_metadata(tables[0])
    if "CoreFileName" in table.columns or "Metadata_CoreFileName" in table.columns:
        table = table.rename(columns={"Metadata_CoreFileName": "CoreFileName"})
        return "core", table
    file_columns = [c for c in table.columns if c.startswith("FileName_")]
    if file_columns:
        cores = table[file_columns[0]].astype(str).str.extract(CORE_PATTERN, expand=False)
        if cores.notna().all():
            table["CoreFileName"] = cores
            return "core", table.drop(columns=file_columns)
    if "Metadata_Well" in table.columns:
        return "well", table
    raise InputError(
        "cannot join metadata: it needs a FileName_* column starting with r01c01f01 (CoreFileName), "
        "Metadata_Well (with Metadata_Plate), or a JUMP platemap (well_position, broad_sample)"
    )


def join_metadata(
    images: pd.DataFrame, metadata_tables: list[pd.DataFrame], how: str = "auto"
) -> tuple[pd.DataFrame, JoinReport]:
    """Inner-join the image table to treatment metadata; report what was dropped on each side."""
    detected, meta = _classify_metadata(metadata_tables)
    if how != "auto" and how != detected:
        raise InputError(f"join={how} was asked for, but the metadata looks like a {detected} table")
    meta = meta.copy()
    if "Metadata_Well" in meta.columns:
        meta["Metadata_Well"] = [well_name(*parse_well(w)) for w in meta["Metadata_Well"]]
    images = images.copy()
    if detected == "core":
        left, right = ["CoreFileName"], ["CoreFileName"]
        if "Metadata_Plate" in meta.columns and images["plate"].isin(meta["Metadata_Plate"].astype(str)).any():
            left, right = ["plate", "CoreFileName"], ["Metadata_Plate", "CoreFileName"]
            meta["Metadata_Plate"] = meta["Metadata_Plate"].astype(str)
    elif detected == "well":
        left, right = ["well"], ["Metadata_Well"]
        if "Metadata_Plate" in meta.columns:
            meta["Metadata_Plate"] = meta["Metadata_Plate"].astype(str)
            left, right = ["plate", "well"], ["Metadata_Plate", "Metadata_Well"]
    else:
        left, right = ["well"], ["Metadata_Well"]
    dup = meta.duplicated(subset=right, keep=False)
    if dup.any():
        example = meta.loc[dup, right].iloc[0].tolist()
        raise InputError(f"metadata has several rows for the same key {right}={example}; keys must be unique")
    # Columns present on both sides: the image source wins for its own Metadata_* columns.
    overlap = [c for c in meta.columns if c in images.columns and c not in right]
    overlap = [c for c in overlap if c not in left]
    images = images.drop(columns=[c for c in overlap if c.startswith("Metadata_") and c in images.columns])
    merged = images.merge(meta, left_on=left, right_on=right, how="outer", indicator=True, suffixes=("", "_meta"))
    images_only = merged[merged["_merge"] == "left_only"]
    meta_only = merged[merged["_merge"] == "right_only"]
    joined = merged[merged["_merge"] == "both"].drop(columns="_merge")
    joined = joined[[c for c in joined.columns if not c.endswith("_meta")]]
    report = JoinReport(
        how="+".join(left),
        matched=len(joined),
        metadata_without_images=len(meta_only),
        images_without_metadata=len(images_only),
        examples_metadata_only=["/".join(str(v) for v in r) for r in meta_only[right].head(3).itertuples(index=False)],
        examples_images_only=images_only["image_id"].head(3).astype(str).tolist(),
    )
    if joined.empty:
        raise InputError(
            f"no image matched the metadata ({report.how}): {len(images)} images, e.g. "
            f"{images[left].head(2).to_dict('records')}; metadata keys e.g. "
            f"{meta[right].head(2).to_dict('records')}"
        )
    joined = joined.reset_index(drop=True)
    if "Metadata_Plate" not in joined.columns:
        joined["Metadata_Plate"] = joined["plate"]
    return _finish_columns(joined), report


def _finish_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Column order of the image table: ids, channel files, then metadata."""
    first = ["image_id", "plate", "well", "site", "CoreFileName"]
    chans = [c for c in table.columns if c.startswith((FILE_PREFIX, PATH_PREFIX))]
    rest = [c for c in table.columns if c not in first and c not in chans]
    return table[first + chans + rest]


@dataclass(frozen=True)
class ImageSource:
    """Where a plate's images and their treatments come from: a Phenix folder or a load_data.csv, metadata
    tables to join, and (for a Phenix folder) the plate name."""

    images_dir: Path | None = None
    load_data: Path | None = None
    metadata: tuple[Path, ...] = ()
    plate: str | None = None

    def describe(self) -> str:
        return str(self.images_dir or self.load_data)


def build_image_table(source: ImageSource, join: str = "auto") -> tuple[pd.DataFrame, JoinReport | None]:
    """The image table from a Phenix folder or a load_data.csv, joined to metadata when given."""
    if (source.images_dir is None) == (source.load_data is None):
        raise InputError("give exactly one image source: --images DIR or --load-data CSV")
    if source.images_dir is not None:
        table = scan_phenix_folder(source.images_dir, plate=source.plate)
    elif source.load_data is not None:
        table = read_load_data(source.load_data)
    report = None
    if source.metadata:
        table, report = join_metadata(table, [read_table(p) for p in source.metadata], how=join)
        log.info(report.summary())
    check_files_exist(table)
    return table, report


def compounds_per_plate(
    table: pd.DataFrame, plate_column: str, compound_column: str, treated: np.ndarray | pd.Series | None = None
) -> float:
    """Median number of distinct compounds per plate (controls left out where ``treated`` marks the rest); 0 for
    no rows."""
    chosen = table if treated is None else table[np.asarray(treated, dtype=bool)]
    return float(chosen.groupby(plate_column)[compound_column].nunique().median()) if len(chosen) else 0.0


def compounds_per_plate_phrase(per_plate: float) -> str:
    """``median 1 compound per plate``, ``median 2.5 compounds per plate``: :func:`compounds_per_plate` in words."""
    return f"median {per_plate:g} compound{'' if per_plate == 1 else 's'} per plate"


def did_you_mean(wanted: str, choices: list[str]) -> str:
    """`` — did you mean X?`` for the closest of ``choices`` (case-insensitive), or ``""``."""
    lowered = {c.lower(): c for c in choices}
    near = difflib.get_close_matches(wanted.lower(), list(lowered), n=1, cutoff=0.6)
    return f" — did you mean {lowered[near[0]]}?" if near else ""


def check_columns(table: pd.DataFrame, columns: list[str], what: str, key: str) -> None:
    """Every column in ``columns`` must be in the image table (``what``/``key`` name them in the message)."""
    available = [c for c in table.columns if c.startswith("Metadata_")]
    for column in columns:
        if column not in table.columns:
            raise InputError(
                f"{what} column {column!r} is not in the image table{did_you_mean(column, available)} — set "
                f"{key}; available: {', '.join(available) or 'none'}"
            )


def check_same_images(before: pd.DataFrame, after: pd.DataFrame, where: str) -> None:
    """A run folder's image table may be rebuilt (a resumed command) but not replaced by other images: its masks,
    cells, embeddings and model belong to the images it holds. Raises :class:`InputError` saying how they differ."""
    held, given = set(before["image_id"].astype(str)), set(after["image_id"].astype(str))
    if held == given:
        return
    raise InputError(
        f"{where} already holds an image table of {len(held)} images; these are {len(given)} "
        f"({len(given - held)} not in it, {len(held - given)} of it missing) — its masks, cells and model belong to "
        "its own images: give --out a new folder, or --overwrite to start this one again from these images"
    )


def check_label(table: pd.DataFrame, label: str) -> None:
    """The label column must exist and hold at least one value."""
    if label not in table.columns:
        candidates = [c for c in table.columns if c.startswith("Metadata_")]
        raise InputError(
            f"label column {label!r} is not in the image table{did_you_mean(label, candidates)}; available: "
            f"{', '.join(candidates) or 'none'} — use --label to choose one"
        )
    values = table[label]
    if values.isna().all() or (values.astype(str).str.strip() == "").all():
        raise InputError(f"label column {label!r} is empty for every image — check the metadata join")


def labelled_images(table: pd.DataFrame, label: str) -> pd.DataFrame:
    """The images that carry a label (as ``str``), for training and evaluation; clear errors when there is
    nothing to learn (no such column, no values, a single class)."""
    check_label(table, label)
    values = table[label]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        log.warning("%d images have no %s and are left out of training and evaluation", int(empty.sum()), label)
    images = table[~empty].reset_index(drop=True)
    images[label] = images[label].astype(str)
    if images[label].nunique() < 2:
        raise InputError(
            f"all {len(images)} images have the same {label} ({images[label].iloc[0]!r}): nothing to learn — "
            "add images of other treatments or choose another --label"
        )
    return images
