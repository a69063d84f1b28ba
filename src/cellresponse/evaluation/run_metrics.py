"""``RUN/metrics.json``, typed: what ``evaluate`` writes and the report reads — one record, so that a reader names
fields instead of guessing at the keys of a ``dict``. :class:`RunMetrics` is the file; :class:`Scores` one set of
calls scored, :class:`VotedScores` a level's two votes, :class:`ModelScores` a baseline or profile model,
:class:`SanityCheck` the study's control-vs-compound check, :class:`SplitReport` the split, :class:`ModelChoice`
which model predicts, :class:`WrongCallsByModel` where wrong calls go, :class:`ProfileMetrics` the profile stage's
benchmarks (:class:`ProfileKindScores`, :class:`NscScores`, :class:`RetrievalScores`; also its own file). Each
block reads its JSON with ``from_json`` and writes it back with ``to_json``, key for key (absent fields left out),
so the file's layout is the one readers of earlier versions know."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Self, cast

from cellresponse.errors import InputError

LEVEL_FIELDS = ("cell", "image", "well", "plate")
VOTES = ("majority", "soft")


def _json(value: Any) -> Any:
    """A field's value as JSON keeps it: a record by its own ``to_json``, any other dataclass field by field (None
    kept: a WrongCalls' ``share_within_group`` is null where nothing was wrong), a dict entry by entry."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _present(record: Any) -> dict[str, Any]:
    """A record's fields as JSON keeps them: the ones that are set, nested records as theirs."""
    return {f.name: _json(value) for f in fields(record) if (value := getattr(record, f.name)) is not None}


class FlatRecord:
    """A record whose JSON is its own fields, the ones that are set (keys a newer writer added are ignored on
    reading; records that nest others read them with their own ``from_json``)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cast(Any, cls))}  # the subclasses are dataclasses
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return _present(self)


@dataclass(frozen=True)
class ClassScores:
    """One class's precision and recall (0 where undefined, as scikit-learn gives them) and its true examples."""

    precision: float
    recall: float
    support: int


@dataclass(frozen=True)
class Confusion:
    """A confusion matrix: ``matrix[i][j]`` examples of true ``labels[i]`` called ``labels[j]``."""

    labels: list[str]
    matrix: list[list[int]]

    def per_class(self) -> dict[str, ClassScores]:
        """Each class's precision, recall and support read off the matrix (the profile models keep only this)."""
        rows = [sum(row) for row in self.matrix]
        columns = [sum(column) for column in zip(*self.matrix, strict=True)] if self.matrix else []
        return {
            label: ClassScores(
                precision=float(self.matrix[i][i] / columns[i]) if columns[i] else 0.0,
                recall=float(self.matrix[i][i] / rows[i]) if rows[i] else 0.0,
                support=int(rows[i]),
            )
            for i, label in enumerate(self.labels)
        }


@dataclass(frozen=True)
class Scores:
    """One set of calls scored (:func:`cellresponse.evaluation.classification.classification_metrics`): accuracy,
    balanced accuracy, macro F1 and the rates to read them against, the top-k accuracy where scores were given
    (``top<k>`` in the file: ``top5`` by default, ``evaluation.top_k``), the mean probability of the calls (the soft
    vote and the tempered models), per-class scores and the confusion matrix where details were kept."""

    n: int
    accuracy: float
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    chance_rate: float | None = None  # 1 / the model's classes
    majority_rate: float | None = None  # always answering the most frequent true class
    top_k: int | None = None
    top_k_accuracy: float | None = None
    mean_probability: float | None = None
    per_class: dict[str, ClassScores] | None = None
    confusion: Confusion | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scores:
        top = next((key for key in data if re.fullmatch(r"top\d+", key)), None)
        confusion = data.get("confusion")
        per_class = data.get("per_class")
        return cls(
            n=int(data["n"]),
            accuracy=data["accuracy"],
            balanced_accuracy=data.get("balanced_accuracy"),
            macro_f1=data.get("macro_f1"),
            chance_rate=data.get("chance_rate"),
            majority_rate=data.get("majority_rate"),
            top_k=int(top[3:]) if top else None,
            top_k_accuracy=data[top] if top else None,
            mean_probability=data.get("mean_probability"),
            per_class={k: ClassScores(**v) for k, v in per_class.items()} if per_class is not None else None,
            confusion=Confusion(list(confusion["labels"]), confusion["matrix"]) if confusion else None,
        )

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in _present(self).items() if k not in ("top_k", "top_k_accuracy")}
        if self.top_k is not None:  # the file's key names k
            out[f"top{self.top_k}"] = self.top_k_accuracy
        return out

    def class_scores(self) -> dict[str, ClassScores]:
        """Per-class scores as kept, else read off the confusion matrix; empty without either."""
        if self.per_class:
            return self.per_class
        return self.confusion.per_class() if self.confusion else {}


@dataclass(frozen=True)
class VotedScores(FlatRecord):
    """A level's votes (images, wells, plates): the majority and soft votes scored, with the level's rates — or
    only ``skipped``, why the level was not voted (groups holding several classes)."""

    majority_vote: Scores | None = None
    soft_vote: Scores | None = None
    chance_rate: float | None = None
    majority_rate: float | None = None
    skipped: str | None = None

    def vote(self, name: str) -> Scores | None:
        """The ``majority`` or ``soft`` vote's scores (None where the level was skipped)."""
        if name not in VOTES:
            raise ValueError(f"no vote {name!r}; votes: {', '.join(VOTES)}")
        return self.majority_vote if name == "majority" else self.soft_vote

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VotedScores:
        given: dict[str, Any] = {k: data[k] for k in ("chance_rate", "majority_rate", "skipped") if k in data}
        given |= {f"{v}_vote": Scores.from_json(data[f"{v}_vote"]) for v in VOTES if data.get(f"{v}_vote")}
        return cls(**given)


@dataclass(frozen=True)
class ModelScores(FlatRecord):
    """A features-only or profile model on the test side — what it is, its temperature, its soft vote per level
    (the single-cell baseline also per cell) — or only ``skipped`` and why."""

    model: str | None = None
    temperature: float | None = None  # its probabilities' temperature, fitted on held-out non-test images
    cell: Scores | None = None
    image: Scores | None = None
    well: Scores | None = None
    skipped: str | None = None

    def level(self, name: str) -> Scores | None:
        """The scores at ``cell``, ``image`` or ``well`` (None where it was not scored there)."""
        return {"cell": self.cell, "image": self.image, "well": self.well}.get(name)

    def accuracy(self, level: str) -> float | None:
        scores = self.level(level)
        return None if scores is None else scores.accuracy

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelScores:
        given: dict[str, Any] = {k: data[k] for k in ("model", "temperature", "skipped") if k in data}
        given |= {k: Scores.from_json(data[k]) for k in ("cell", "image", "well") if data.get(k)}
        return cls(**given)


@dataclass(frozen=True)
class SanityCheck(FlatRecord):
    """The study's check: control cells told from treated ones by the measured features — or ``skipped`` and why."""

    task: str | None = None
    n: int | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    majority_rate: float | None = None
    skipped: str | None = None


@dataclass
class SplitReport(FlatRecord):
    """The split told (:func:`cellresponse.learning.splits.describe_split`, ``RUN/model/split.json``): images per
    side, classes tested, the ways its accuracy could flatter — classes with a well on both sides (``leaky``),
    classes never tested, test images whose plate gives their class away — the controls' down-sampling, and the
    settings it was made with (``train`` records them, so a changed split is not resumed)."""

    by: str
    images: dict[str, int] = field(default_factory=dict)
    classes_in_test: int = 0
    classes: int = 0
    leaky_classes: int = 0
    leaky_examples: list[str] = field(default_factory=list)
    untestable_classes: int = 0
    untestable_examples: list[str] = field(default_factory=list)
    single_image_classes: list[str] = field(default_factory=list)
    plate_confounded_images: int = 0
    plate_confounded_examples: list[str] = field(default_factory=list)
    downsampling: dict[str, Any] = field(default_factory=dict)  # {"applied", "control", cells before / after}
    settings: dict[str, Any] | None = None


@dataclass(frozen=True)
class LabelGrouping:
    """Each label's coarser group (its mechanism or gene target) and the column that names the groups."""

    column: str
    groups: dict[str, str]


@dataclass(frozen=True)
class WrongPair:
    """A true label called as another, how often, and whether the two share a group."""

    true: str
    predicted: str
    n: int
    same_group: bool


@dataclass(frozen=True)
class WrongCalls:
    """Where a model's wrong calls at one level go (:func:`cellresponse.evaluation.label_groups.wrong_calls`): how
    many name another label of the true label's group, the accuracy read at the group level, the most frequent
    wrong pairs. ``share_within_group`` is None without wrong calls, ``group_accuracy`` without calls."""

    n: int
    wrong: int
    wrong_within_group: int
    share_within_group: float | None
    group_accuracy: float | None
    pairs: list[WrongPair]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WrongCalls:
        return cls(**{**data, "pairs": [WrongPair(**pair) for pair in data["pairs"]]})


@dataclass(frozen=True)
class WrongCallsByModel(FlatRecord):
    """:class:`WrongCalls` per candidate model (the network by its headline vote, each profile model) and level
    (``image``, ``well``), against the groups of ``column``."""

    column: str
    models: dict[str, dict[str, WrongCalls]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WrongCallsByModel:
        models = {
            name: {level: WrongCalls.from_json(block) for level, block in levels.items()}
            for name, levels in data["models"].items()
        }
        return cls(column=data["column"], models=models)


@dataclass(frozen=True)
class ModelChoice(FlatRecord):
    """Which model ``predict`` uses (``auto``, :func:`cellresponse.learning.model_choice.auto_summary`): what
    chose it, each candidate's held-out accuracy and images, and the chosen model's test accuracy per level (read
    after the choice, never by it)."""

    model: str
    scored_on: str | None = None  # the validation side, or cross-validation over the training side
    validation: dict[str, float | None] | None = None
    validation_images: dict[str, int | None] | None = None
    calibration_images: dict[str, int | None] | None = None  # the held-out images that tempered each
    test: dict[str, float] | None = None
    sentence: str | None = None


@dataclass(frozen=True)
class NscScores(FlatRecord):
    """NSC (or, across batches, NSCB) MoA accuracy of one profile kind (Ljosa et al. 2013): the share of the ``n``
    treatments whose nearest treatment among other compounds shares their mechanism, and what chance gives.
    ``skipped`` is how many treatments had no such candidate — or, as text, why the benchmark did not run."""

    accuracy: float | None = None
    chance_rate: float | None = None
    n: int | None = None
    skipped: int | str | None = None

    @property
    def not_computed(self) -> str | None:
        """Why these scores hold no accuracy; None when they hold one."""
        if isinstance(self.skipped, str):
            return self.skipped
        if not self.n:
            return "no treatment has another compound of the same MoA"
        return None

    def summary(self) -> str:
        """``NSC MoA accuracy 0.927 (chance 0.210)``, or why it was not computed — a bare dash tells a user
        nothing."""
        if why := self.not_computed:
            return f"NSC MoA accuracy not computed: {why}"
        return f"NSC MoA accuracy {self.accuracy:.3f} (chance {self.chance_rate:.3f})"


@dataclass(frozen=True)
class RetrievalScores(FlatRecord):
    """copairs' mean average precision of retrieving ``groups`` (a treatment's wells, or a mechanism's treatments)
    among ``profiles``, and the share of groups retrieved at FDR 0.05; or only ``skipped`` and why."""

    mean_average_precision: float | None = None
    fraction_retrieved: float | None = None
    groups: int | None = None
    profiles: int | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class ProfileKindScores(FlatRecord):
    """One profile kind's benchmarks: its size, NSC (and NSCB where there are batches), replicate and MoA
    retrieval, and the columns that named mechanism and compound."""

    features: int | None = None
    wells: int | None = None
    treatments: int | None = None
    nsc: NscScores | None = None
    nscb: NscScores | None = None
    map_replicates: RetrievalScores | None = None
    map_moa: RetrievalScores | None = None
    moa_column: str | None = None
    compound_column: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProfileKindScores:
        nested: dict[str, Any] = {k: NscScores.from_json(data[k]) for k in ("nsc", "nscb") if k in data}
        nested |= {k: RetrievalScores.from_json(data[k]) for k in ("map_replicates", "map_moa") if k in data}
        plain = {k: data[k] for k in ("features", "wells", "treatments", "moa_column", "compound_column") if k in data}
        return cls(**plain, **nested)


@dataclass(frozen=True)
class ProfileMetrics(FlatRecord):
    """``RUN/profiles/metrics.json`` (the ``profiles`` block of ``metrics.json``): how the profiles were
    normalised, each kind's benchmarks, the stage's time and what made it."""

    normalization: list[str] = field(default_factory=list)
    kinds: dict[str, ProfileKindScores] = field(default_factory=dict)
    seconds: float | None = None
    made_by: dict[str, Any] | None = None

    def not_computed(self) -> list[str]:
        """Why NSC did not run, once per reason over the kinds."""
        return sorted({why for kind in self.kinds.values() if kind.nsc and (why := kind.nsc.not_computed)})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProfileMetrics:
        kinds = {kind: ProfileKindScores.from_json(block) for kind, block in data.get("kinds", {}).items()}
        rest = {k: data[k] for k in ("normalization", "seconds", "made_by") if k in data}
        return cls(kinds=kinds, **rest)

    @classmethod
    def read(cls, path: str | Path) -> ProfileMetrics | None:
        """The file at ``path``, or None before ``profile`` ran."""
        path = Path(path)
        return cls.from_json(json.loads(path.read_text())) if path.exists() else None


@dataclass
class RunMetrics:
    """The test side's scores of one run: the network's per cell (``cell``) and voted per image, well and plate;
    each profile model's (``profile_models``, the measured one also ``baseline_features``), the single-cell
    baseline's and the sanity check, against chance and always answering the majority class; the split, the
    verdicts, and which model ``predict`` uses (``auto``). The optional fields are absent where the run has no such
    thing."""

    label: str
    classes: int
    headline_vote: str
    cell: Scores | None
    image: VotedScores
    well: VotedScores
    plate: VotedScores
    chance_rate: float
    majority_rate: float
    split: SplitReport
    profile_models: dict[str, ModelScores]
    baseline_features: ModelScores
    baseline_cell_features: ModelScores
    sanity_check: SanityCheck
    verdict: str
    embeddings_verdict: str
    seconds: float = 0.0
    label_grouping: LabelGrouping | None = None
    target_cell_accuracy: float | None = None
    profiles: ProfileMetrics | None = None  # RUN/profiles/metrics.json, where `profile` ran
    auto: ModelChoice | None = None  # which model predicts
    wrong_calls: WrongCallsByModel | None = None
    made_by: dict[str, Any] | None = None

    def voted(self, level: str) -> VotedScores:
        """The network's votes at ``image``, ``well`` or ``plate``."""
        if level not in LEVEL_FIELDS[1:]:
            raise ValueError(f"no voted level {level!r}; levels: {', '.join(LEVEL_FIELDS[1:])}")
        return getattr(self, level)

    def network(self, level: str, vote: str) -> Scores | None:
        """The network's scores at ``level``: its cells for ``cell``, else the level's ``vote`` (majority or soft);
        None where there are none."""
        return self.cell if level == "cell" else self.voted(level).vote(vote)

    def to_json(self) -> dict[str, Any]:
        """The record as ``metrics.json`` holds it (absent optional fields left out)."""
        out = _present(self)
        # `cell` is a required key: an empty block where the network scored no cells
        return out if "cell" in out else {"cell": {}, **out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunMetrics:
        """The record of a ``metrics.json`` (keys it does not know — a newer writer's — are ignored)."""
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in data.items() if k in known}
        try:
            blocks = {
                "cell": Scores.from_json(given["cell"]) if given.get("cell") else None,
                **{level: VotedScores.from_json(given[level]) for level in LEVEL_FIELDS[1:]},
                "profile_models": {kind: ModelScores.from_json(b) for kind, b in given["profile_models"].items()},
                "baseline_features": ModelScores.from_json(given["baseline_features"]),
                "baseline_cell_features": ModelScores.from_json(given["baseline_cell_features"]),
                "sanity_check": SanityCheck.from_json(given["sanity_check"]),
                "split": SplitReport.from_json(given["split"]),
                "auto": ModelChoice.from_json(given["auto"]) if given.get("auto") else None,
                "label_grouping": LabelGrouping(**given["label_grouping"]) if given.get("label_grouping") else None,
                "wrong_calls": WrongCallsByModel.from_json(given["wrong_calls"]) if given.get("wrong_calls") else None,
                "profiles": ProfileMetrics.from_json(given["profiles"]) if given.get("profiles") else None,
            }
            return cls(**{**given, **blocks})
        except (KeyError, TypeError) as exc:  # a field missing: written by an older cellresponse
            raise InputError(
                f"metrics.json lacks fields this version reads ({exc}) — run `cellresponse evaluate RUN` again"
            ) from None

    @classmethod
    def read(cls, path: str | Path) -> RunMetrics | None:
        """``metrics.json`` at ``path``, or None before ``evaluate`` ran."""
        path = Path(path)
        return cls.from_json(json.loads(path.read_text())) if path.exists() else None
