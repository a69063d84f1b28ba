"""One typed config holding every number of the method, with the study's defaults.

The config is a tree of pydantic models that forbid unknown keys, so a typo in a YAML file or an
override is an error instead of a silently ignored setting. It is loaded in layers:
defaults (the study) <- preset <- YAML file <- ``--set key=value`` overrides.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cellresponse.errors import InputError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    """How images are found and joined to treatment metadata."""

    label: str = Field("Metadata_pert_iname", description="Metadata column predicted by the model.")
    target_column: str = Field("Metadata_target", description="Second label (gene target), encoded too.")
    control_label: str = Field(
        "DMSO",
        description="Label or compound value of the negative-control wells, besides JUMP's pert_type / control_type "
        "columns (control_type negcon), which are read where the metadata has them.",
    )
    positive_controls: Literal["exclude", "include"] = Field(
        "exclude", description="Positive controls (control_type poscon*): neither references nor queries, or kept."
    )
    pixel_size_um: float | None = Field(
        None, gt=0, description="Microns per pixel, when known (report scale bars in µm instead of pixels)."
    )
    join: Literal["auto", "core", "well", "platemap"] = Field(
        "auto", description="How metadata joins images: CoreFileName, plate/well or a JUMP platemap."
    )
    illumination: Literal["auto", "compute", "none"] = Field(
        "auto",
        description="auto: divide by the CellProfiler illumination functions a load_data names (FileName_Illum<Ch>), "
        "else compute them where every plate has 50+ images; compute: one per plate and channel as JUMP's "
        "CorrectIlluminationCalculate (saved in RUN/illumination/); none: raw images.",
    )
    illumination_filter: int = Field(
        500, ge=3, description="Median filter size (px) of computed illumination functions (JUMP's setting)."
    )
    intensity_scale: Literal["auto", "plate", "experiment"] = Field(
        "auto",
        description="How raw intensities are scaled for the image models (crops, embeddings): per plate (absorbs a "
        "plate's gain), or one scale across the experiment (keeps compounds' brightness apart where each plate holds "
        "one or two); auto: experiment where plates are confounded with compounds (median under 4 per plate), as "
        "profiles.normalize: auto decides. A bundle's new plates are scaled as its training plates were.",
    )


class ChannelRecipe(_Section):
    """An image built from channels: ``median`` of the first three is the study's segmentation input."""

    kind: Literal["median", "mean", "max", "single", "stack"] = "median"
    channels: list[int | str] = Field(
        default_factory=lambda: list[int | str]([0, 1, 2]),
        description="Channel positions (0-based) or names; names match 'DNA', 'OrigDNA' or 'ch5'.",
    )


class SegmentationConfig(_Section):
    backend: Literal["auto", "cellpose", "offline"] = Field(
        "auto", description="auto: Cellpose when its weights are available, else the offline backend."
    )
    model: str = Field("cyto3", description="Cellpose model name (cyto2 reproduces the study's era).")
    weights_dir: str | None = Field(None, description="Folder holding Cellpose weights (else its own cache).")
    flow_threshold: float = Field(0.7, ge=0.0, le=10.0)
    cellprob_threshold: float = Field(-5.0, ge=-10.0, le=10.0)
    diameter: float | None = Field(None, gt=0, description="Cell diameter in px; null = estimate it.")
    nuclear_channel: str | None = Field(
        "auto",
        description="Channel with nuclei for the offline backend: a name, 'auto' (DNA/DAPI/Hoechst/ch5) or null.",
    )
    min_size: int = Field(15, ge=0, description="Objects smaller than this (px) are removed.")
    input: ChannelRecipe = Field(default_factory=ChannelRecipe)


class MeasurementConfig(_Section):
    intensity_channels: list[str] = Field(
        default_factory=lambda: ["all"],
        description="Channels measured per cell (Intensity_*_<name> columns); 'all' = every channel, [] = none.",
    )
    compartments: bool = Field(
        True,
        description="Nucleus/cytoplasm means per channel, the nucleus being the cell's DNA-bright part "
        "(needs segmentation.nuclear_channel among the measured channels).",
    )
    extended: bool = Field(
        True,
        description="CellProfiler-style texture (co-occurrence at 3 px), radial distribution, colocalisation "
        "per measured channel and neighbour counts.",
    )
    set: Literal["default", "cellprofiler"] = Field(
        "default",
        description="cellprofiler adds CellProfiler's own per-cell measurements through cp_measure (size/shape, "
        "Zernike, intensity, texture, granularity, radial distribution, colocalisation) under CellProfiler's names.",
    )


class CropConfig(_Section):
    store_size: int = Field(96, ge=8, le=1024, description="Side of the stored crops (px).")
    size: int = Field(224, ge=8, le=1024, description="Side of the model input (crops resized in batches).")
    mean: float = 0.5
    std: float = Field(0.5, gt=0)
    recipe: Literal["mask_flow", "fluorescence"] = "mask_flow"
    fluorescence_channels: list[str] = Field(default_factory=list)
    padding: float = Field(0.0, ge=0.0, le=2.0, description="Extra margin around the bbox, fraction of its side.")


class SplitConfig(_Section):
    by: Literal["image", "well", "plate", "column"] = Field(
        "well", description="Grouping of the split (the study: image, which leaks sites of one well across sides)."
    )
    column: str | None = Field(None, description="With by=column: a column whose values name the side.")
    test_values: list[str] = Field(
        default_factory=list, description="With by=column: values of the column that form the test side."
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    validation_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Groups of the training side kept for early stopping; 0 = use the test side."
    )
    stratify: bool = True
    downsample_control: bool = Field(True, description="Down-sample DMSO to the second-largest class.")

    @field_validator("test_values", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        # `--set split.test_values=[2]` reads 2 as a YAML integer; the column's values are compared as text, as
        # `--test-values 2` gives them (one value alone is a list of one)
        values = value if isinstance(value, list) else [value]
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]


class TrainingConfig(_Section):
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    step_size: int = Field(5, ge=1, description="StepLR period in epochs.")
    gamma: float = Field(0.5, gt=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(5, ge=1, description="Early stopping on validation loss.")
    tabular_hidden: int = Field(32, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    attention_hidden: int = Field(256, ge=1, description="Hidden width of the attention gate.")
    projection: int = Field(256, ge=1)
    augment: bool = False
    channels_last: bool = True
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = Field(
        "32-true",
        description="Lightning precision. The study trained in float32; bf16-mixed runs the network in bfloat16 on "
        "GPUs that have it (A100, H100): 2,239 vs 1,627 cells/s and half the memory on an H200 at the study's "
        "settings (docs/benchmarks.md).",
    )
    # Deterministic mode warns rather than raises on an op without a deterministic CUDA kernel (torch's docs list
    # some, adaptive pooling's backward among them), so such an op cannot stop a long GPU run. This network has
    # none that raised: torch's strict mode trained it on an H200 (benchmarks/gpu_train.py, torch 2.11, 2026-11-26).
    deterministic: bool = Field(
        True,
        description="Deterministic kernels (a seed gives the same run on a CPU). false: cuDNN picks the fastest "
        "kernels — 1,627 vs 1,206 cells/s in float32 on an H200 (docs/benchmarks.md).",
    )
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    max_cells_per_image: int | None = Field(
        None, ge=1, description="Train (and validate) on at most this many random cells of each image; null = all."
    )
    max_cells_per_class: int | None = Field(
        None, ge=1, description="Then at most this many cells of each class per epoch; null = all."
    )


Backbone = Literal["efficientnet-b0", "efficientnet-lite0"]


class ModelConfig(_Section):
    """The image branches of the study's network."""

    backbone: Backbone = Field("efficientnet-b0", description="EfficientNet trunk of the two image branches.")
    pretrained: str = Field(
        "none",
        description="none (from scratch), imagenet (the weights installed with the package: Lite0 only) "
        "or the path of ImageNet weights for the backbone (.pth/.safetensors, efficientnet-pytorch key names).",
    )


class EmbeddingConfig(_Section):
    """Per-cell embeddings (`cellresponse embed`): a frozen pretrained backbone, or the run's trained network."""

    source: Literal["backbone", "network"] = Field(
        "backbone",
        description="backbone: the frozen pretrained network below; network: the trained bundle's projection "
        "layer (RUN/model/bundle, on the crop store).",
    )
    backbone: Backbone = "efficientnet-lite0"
    pretrained: str = Field("imagenet", description="imagenet (packaged Lite0 weights) or a weights path.")
    channels: list[str] = Field(
        default_factory=list,
        description="Fluorescence channels shown to the network; [] = the first three (rgb) or all (per_channel).",
    )
    mode: Literal["rgb", "per_channel"] = Field(
        "rgb",
        description="rgb: three channels as one RGB image; per_channel: each channel as a grey image, "
        "embeddings concatenated.",
    )
    crop_size: int | None = Field(
        None, ge=8, le=1024, description="Side (px) of the window centred on each cell; null = 3 × median diameter."
    )
    input_size: int = Field(96, ge=16, le=512, description="Side the windows are resized to for the network.")
    # A deep profile is a mean over an image's cells; on dense plates a sample of them costs a share of the time.
    # BBBC021-moa, replicate 1 -> 2: 50 of a median 102 cells a field called unseen compounds right on 0.941 / 0.945
    # of fields / wells instead of 0.959 / 0.964 with all (docs/results.md, 2026-12-07) — hence off by default.
    max_cells_per_image: int | None = Field(
        None,
        ge=1,
        description="At most this many cells of each image are embedded (a sample seeded by the image id, the same "
        "on every run); null = every cell. The backbone's embeddings only.",
    )
    # null picks by device (networks.embeddings.embedding_batch_size): small batches stay in the CPU's caches
    # (Lite0 at 96 px on 2 cores ran 528 windows/s in batches of 16, 404 in 32, 273 in 64, 181 in 256; one run each,
    # 2026-11-25; batch norm folded: 578 in 16), while a GPU wants large ones (H200, per channel × 3: 1,458 cells/s
    # in batches of 16, 17,927 in 256; benchmarks/gpu_inference.py, 2026-12-04).
    batch_size: int | None = Field(
        None, ge=1, description="Windows per forward pass; null = 16 on the CPU, 256 on a GPU."
    )
    execution: Literal["auto", "process", "workers"] = Field(
        "auto",
        description="Where embed (and predict's embedding) runs: process = here, on all cores; workers = one task per "
        "image on the Dask workers (runtime.workers / --scheduler), each loading the backbone once; auto = workers "
        "where --scheduler names a cluster, else here (on 2 cores, 2 local workers ran ×1.04-1.33 the speed of this "
        "process in three runs: docs/benchmarks.md).",
    )


# The mechanism columns `profiles.moa: auto` looks for, in this order: a MoA column as BBBC021 and most
# CellProfiler metadata name it, then the gene target of the study's CPJUMP1 metadata (JUMP's NSC tests use it).
MOA_COLUMNS = ("Metadata_MoA", "Metadata_moa", "Metadata_target")
# The compound columns `profiles.compound: auto` looks for (BBBC021, CPJUMP1's pert_iname, JUMP's broad_sample and
# JCP2022 identifiers), and the concentration columns that make a compound a treatment (compound @ dose).
COMPOUND_COLUMNS = ("Metadata_Compound", "Metadata_pert_iname", "Metadata_broad_sample", "Metadata_JCP2022")
CONCENTRATION_COLUMNS = ("Metadata_Concentration", "Metadata_mmoles_per_liter", "Metadata_pert_dose", "Metadata_Dose")
ProfileKind = Literal["measured", "deep", "both"]
ALL_PROFILE_KINDS: tuple[ProfileKind, ...] = ("measured", "deep", "both")
SelectionOperation = Literal["variance_threshold", "drop_na_columns", "correlation_threshold", "blocklist"]
DEFAULT_SELECTION: tuple[SelectionOperation, ...] = ("variance_threshold", "drop_na_columns", "correlation_threshold")

# The treatment of an image with no compound column: its well (each well its own treatment).
WELL_TREATMENT = ["Metadata_Plate", "Metadata_Well"]


class ProfilesConfig(_Section):
    """Well and treatment profiles (`cellresponse profile`) and the profile-level benchmarks."""

    kinds: list[ProfileKind] = Field(default_factory=lambda: list(ALL_PROFILE_KINDS))
    treatment: list[str] = Field(
        default_factory=list,
        description="Columns whose values together name a treatment (e.g. compound and concentration); [] = auto: "
        "the compound column with the first of " + ", ".join(CONCENTRATION_COLUMNS) + " the metadata has; the "
        "well where there is no compound column.",
    )
    compound: str | None = Field(
        "auto",
        description="Compound column (not-same-compound tests, leave-one-compound-out); auto = the first of "
        + ", ".join(COMPOUND_COLUMNS)
        + " that the metadata has, else the label unless it is the mechanism column.",
    )
    moa: str = Field(
        "auto",
        description="Mechanism column (MoA retrieval and NSC accuracy); auto = the first of "
        + ", ".join(MOA_COLUMNS)
        + " that the metadata has.",
    )
    batch: str | None = Field(
        None,
        description="Batch column: NSCB (not same compound, not same batch) and batch correction (there, null = "
        "Metadata_Batch where the metadata has it, else the plate).",
    )
    batch_correction: Literal["none", "spherize", "harmony"] = Field(
        "none",
        description="After normalisation: spherize (pycytominer, ZCA-cor on the negative controls) or harmony "
        "(harmonypy on principal components); skipped where batches are confounded with compounds.",
    )
    aggregate: Literal["mean", "median"] = Field("mean", description="Cells → well, and wells → treatment.")
    normalize: Literal["auto", "plate", "experiment", "none"] = Field(
        "auto",
        description="auto: per plate unless plates are confounded with treatments (then across the experiment).",
    )


class ReferencesConfig(_Section):
    """What a new compound resembles (`predict`'s treatment calls): the bundle's reference profiles, their
    leave-one-compound-out calibration and the activity test."""

    kind: Literal["auto", "measured", "deep", "both"] = Field(
        "auto",
        description="Profile kind of the references; auto = the kind whose mechanism calls were right most often "
        "on the references' own fields, leave-one-compound-out.",
    )
    neighbours: int = Field(5, ge=1, le=50, description="Nearest reference treatments listed per query.")
    feature_selection: list[SelectionOperation] = Field(
        default_factory=lambda: list(DEFAULT_SELECTION),
        description="pycytominer feature_select operations on the normalised reference wells; "
        "correlation_threshold (0.9) drops near-copies, which otherwise outvote the rest in a cosine "
        "(chosen on BBBC021-moa, references replicate 1 → queries 2; docs/results.md).",
    )
    novelty_quantile: float = Field(
        0.1,
        gt=0.0,
        lt=0.5,
        description="A query is novel below this quantile of the similarity known compounds reach to the other "
        "compounds of their mechanism (leave-one-compound-out).",
    )
    moa_space: Literal["auto", "discriminant", "profile"] = Field(
        "auto",
        description="Where moa_call is made: profile = the nearest reference by the profiles' cosine; discriminant = "
        "the nearest in the references' mechanism-discriminant space (shrinkage LDA); auto = discriminant where its "
        "leave-one-compound-out calls on the references' own fields are right more often (chosen on BBBC021-moa, "
        "references replicate 1 → queries 2; docs/results.md).",
    )
    activity_fdr: float = Field(0.05, gt=0.0, lt=1.0, description="A treatment is active where its q < this.")
    query_normalization: Literal["auto", "controls", "references", "self"] = Field(
        "auto",
        description="auto: a new plate is normalised to its own negative controls where the references were and "
        "it has some, else with the references' parameters; self: to all its own wells (a batch of many treatments).",
    )


class EvaluationConfig(_Section):
    vote: Literal["soft", "majority"] = Field("soft", description="Headline vote of cells into images/wells.")
    top_k: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=1, description="Cells per batch when the network predicts (evaluate, predict).")


class RuntimeConfig(_Section):
    workers: int = Field(2, ge=0, description="Dask worker processes for per-image stages (0 = in this process).")
    scheduler: str | None = Field(None, description="Address of an existing Dask scheduler.")
    on_error: Literal["stop", "skip"] = "stop"


class Config(_Section):
    seed: int = 42
    input: InputConfig = Field(default_factory=InputConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    measurement: MeasurementConfig = Field(default_factory=MeasurementConfig)
    crops: CropConfig = Field(default_factory=CropConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    references: ReferencesConfig = Field(default_factory=ReferencesConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("seed")
    @classmethod
    def _non_negative_seed(cls, value: int) -> int:
        if value < 0:
            raise ValueError("seed must be >= 0")
        return value

    def compound_column(self, columns: Iterable[str]) -> str | None:
        """``profiles.compound``; for ``auto`` (or null, as earlier configs wrote it) the first of
        :data:`COMPOUND_COLUMNS` among ``columns``, else the label where it is there and is not the mechanism
        column; None where there is none (each well is then its own treatment)."""
        if self.profiles.compound not in (None, "auto"):
            return self.profiles.compound
        present = list(columns)
        found = next((column for column in COMPOUND_COLUMNS if column in present), None)
        if found is not None:
            return found
        label = self.input.label
        return label if label in present and label != self.moa_column(present) else None

    def treatment_columns(self, columns: Iterable[str]) -> list[str]:
        """The columns naming a treatment: ``profiles.treatment``; for ``[]`` the compound column with the first
        concentration column among ``columns`` (:data:`CONCENTRATION_COLUMNS`), or the plate and well where there
        is no compound column."""
        if self.profiles.treatment:
            return list(self.profiles.treatment)
        present = list(columns)
        compound = self.compound_column(present)
        if compound is None:
            return list(WELL_TREATMENT)
        concentration = next((column for column in CONCENTRATION_COLUMNS if column in present), None)
        return [compound] + ([concentration] if concentration and concentration != compound else [])

    def moa_column(self, columns: Iterable[str]) -> str | None:
        """``profiles.moa``; for ``auto`` the first of :data:`MOA_COLUMNS` among ``columns``, None if none is."""
        if self.profiles.moa != "auto":
            return self.profiles.moa
        present = set(columns)
        return next((column for column in MOA_COLUMNS if column in present), None)

    def grouping_columns(self, columns: Iterable[str]) -> tuple[str | None, str | None]:
        """The columns that may group the labels, in the order they are tried: the MoA column
        (:meth:`moa_column`), then the gene target column (``input.target_column``)."""
        return self.moa_column(columns), self.input.target_column

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Presets change only what differs from the study (the defaults above).
PRESETS: dict[str, dict[str, Any]] = {
    # The study's protocol: per-image split, validation = test side, majority vote.
    "study": {
        "split": {"by": "image", "validation_fraction": 0.0},
        "evaluation": {"vote": "majority"},
        "measurement": {"intensity_channels": [], "extended": False},
    },
    # Small and fast for 2 CPU cores; each value measured on the shared sets (docs/design.md "Defaults and why").
    "cpu": {
        "crops": {"store_size": 32, "size": 32, "padding": 0.5},
        # From scratch on a CPU: 1e-3 reached 0.60 validation accuracy in 8 epochs where 1e-4 reached 0.38
        # (demo plates, 48 px, same split and seed); 4 epochs, rate halved every 2: a run fits in 20 minutes.
        "training": {
            "batch_size": 64,
            "max_epochs": 4,
            "patience": 3,
            "learning_rate": 1e-3,
            "step_size": 2,
            "augment": True,
            # A whole plate on a CPU: 112 cells a field bring one epoch of the study's plate (2,255 training fields
            # of ~190 cells) to a projected 27.5 min at the measured 153 cells/s (benchmarks/plate_scale.py; 149-166
            # in three runs, so 128 gave 29.0-32.3 min), where all cells would take ~47. Sparse fields keep all
            # their cells (BBBC021-moa: median 102 cells a field, 86 % of its cells kept).
            "max_cells_per_image": 112,
        },
    },
}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# The network fine-tuned from ImageNet on the fluorescence (issue 15): the cpu preset, but crops that show the
# stains to an ImageNet-initialised Lite0, upsampled to 48 px, at a lower rate. Chosen on the validation side of
# BBBC021-moa, train replicate 1 (one run each): validation cell accuracy 0.799 after 3 epochs vs 0.671 for the
# cpu preset's from-scratch mask_flow network after 4 (docs/results.md). Its frozen embeddings show
# each channel as its own grey image: chosen on the direction train replicate 1 → test replicate 2 (compound per
# field: deep 0.773 vs 0.718 with rgb, both 0.768 vs 0.709; MoA both 1.000 vs 0.986) at three times rgb's embedding
# time (414 vs 180 s for 46,849 cells), which this preset can afford and the defaults (300 cells/s) cannot.
PRESETS["finetune"] = _deep_merge(
    PRESETS["cpu"],
    {
        "crops": {"recipe": "fluorescence", "size": 48},
        "model": {"backbone": "efficientnet-lite0", "pretrained": "imagenet"},
        "embedding": {"mode": "per_channel"},
        # measured on BBBC021-moa without the cpu preset's cell cap (its numbers in docs/results.md), so none here
        "training": {"learning_rate": 3e-4, "max_epochs": 3, "max_cells_per_image": None},
    },
)


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``training.max_epochs=3`` into ``{"training": {"max_epochs": 3}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise InputError(f"override {text!r} is not KEY=VALUE (e.g. training.max_epochs=3)")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise InputError(f"override {text!r} has an empty key")
    value: Any = yaml.safe_load(raw) if raw.strip() else None
    for key in reversed(keys):
        value = {key: value}
    return value


# Keys of earlier versions, so an old config.yaml fails with the new name in its message.
RENAMED_KEYS = {"training.pretrained_weights": "model.pretrained (a path, or imagenet)"}


def config_keys() -> list[str]:
    """Every dotted key of the config (``training.max_epochs``, …)."""
    return sorted(_flatten(Config().to_dict()))


def _format_validation_error(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            renamed = RENAMED_KEYS.get(where)
            near = difflib.get_close_matches(where, config_keys(), n=1)
            hint = f" (renamed: {renamed})" if renamed else (f" — did you mean {near[0]}?" if near else "")
            problems.append(f"unknown key '{where}'" + hint)
        else:
            problems.append(f"'{where}': {item['msg']} (got {item.get('input')!r})")
    return f"invalid config ({source}): " + "; ".join(problems) + " — see `cellresponse config show`"


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Resolve the config: study defaults, then ``preset``, then the YAML file, then overrides."""
    data: dict[str, Any] = {}
    sources = ["defaults"]
    if preset:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        data = _deep_merge(data, PRESETS[preset])
        sources.append(f"preset {preset}")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InputError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
        data = _deep_merge(data, loaded)
        sources.append(str(path))
    for text in overrides or []:
        data = _deep_merge(data, parse_override(text))
        sources.append(f"--set {text}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise InputError(_format_validation_error(exc, ", ".join(sources))) from None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def preset_overrides(name: str) -> list[str]:
    """A preset as ``key=value`` overrides, so a stage verb can lay it over a run's config.yaml."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return [f"{key}={json.dumps(value)}" for key, value in _flatten(PRESETS[name]).items()]


def differences(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs (``{key: (a's, b's)}``), except keys starting with
    one of the ``ignore`` prefixes."""
    flat_a, flat_b = _flatten(a.to_dict()), _flatten(b.to_dict())
    return {
        key: (flat_a.get(key), flat_b.get(key))
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key) and not key.startswith(ignore)
    }


def apply_overrides(config: Config, overrides: list[str], source: str = "run config") -> Config:
    """``config`` with ``--set key=value`` overrides on top, checked like :func:`load_config` (one clear error)."""
    data = config.to_dict()
    for text in overrides:
        data = _deep_merge(data, parse_override(text))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise InputError(
            _format_validation_error(exc, f"{source}, " + ", ".join(f"--set {t}" for t in overrides))
        ) from None
