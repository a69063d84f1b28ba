"""The model bundle: a folder with everything ``predict`` needs for new plates, nothing pickled.

bundle/weights.safetensors   the network's weights (safetensors: tensors only, no code runs on load)
bundle/bundle.json           format version, classes (label encoder), label → target map,
                             scaler (feature columns, mean, std), the resolved config,
                             crop settings and the image channel names the model was trained on
bundle/profile_<kind>.json   a profile model per kind (measured, deep, both: profile_models.py), fitted on the same
                             non-test images
bundle/choice.json           which model ``predict`` uses by default (auto) and the validation scores that chose it
bundle/references.parquet    the training treatments' normalised per-field profiles (references.py): what a new
bundle/references.json       compound is compared with; their normalisation, kind and leave-one-compound-out
                             calibration (temperature and novelty threshold per level)
bundle/references_<kind>/    the same for each other profile kind ``train`` built and chose from (``predict
                             --set references.kind=KIND`` uses one: e.g. ``measured``, which needs no embeddings)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.input.io import atomic_path, write_json
from cellresponse.learning.encoders import LabelEncoder, Scaler
from cellresponse.profiling.profile_models import PROFILE_KINDS
from cellresponse.profiling.references import References, load_references, save_references
from cellresponse.provenance import made_by

# torch, MONAI and safetensors are imported where the weights are read or written, so that the run report, which
# only names the bundle's models, and a prediction without the network start without them (3 s of a 9 s
# `cellresponse report`; load_bundle with the network 7.4 s, of which 5.3 s the imports).
if TYPE_CHECKING:
    from cellresponse.networks.model import CellResponseNet

BUNDLE_VERSION = 1
# The models a bundle can predict with (its ``choice``). Ties go to the model that costs least to run on a new
# plate: measured profiles need no network at all, deep ones the frozen embedding network, the trained network its
# crops too.
NETWORK = "network"
CANDIDATES = (*PROFILE_KINDS, NETWORK)
MODEL_CHOICES = ("auto", *CANDIDATES)


@dataclass
class Bundle:
    """Everything ``predict`` needs of a trained run, as :func:`save_bundle` writes it and :func:`load_bundle` reads
    it: the network, its label encoder and table scaler, the config and crops it was trained with, the profile
    models, the references and the recorded choice. ``meta`` is ``bundle.json``: loaded, the whole file; to be
    saved, the entries beside those the other fields give (the validation side, the best epoch, the labels'
    grouping, the embedding settings)."""

    model: CellResponseNet | None  # None where loaded without the network (load_bundle(..., network=False))
    encoder: LabelEncoder
    scaler: Scaler
    config: Config
    crop_settings: dict[str, Any]
    channels: list[str]
    label_to_target: dict[str, str]
    meta: dict[str, Any]
    profile_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    choice: dict[str, Any] | None = None
    references: References | None = None
    # the other profile kinds train built references of (by kind), besides the one it chose
    reference_kinds: dict[str, References] = field(default_factory=dict)

    @property
    def label_grouping(self) -> tuple[str, dict[str, str]] | None:
        """The column that groups the labels (MoA or gene target) and each label's group, where training found one
        (``None`` for a bundle of an earlier version or labels without one)."""
        stored = self.meta.get("label_grouping")
        return (stored["column"], stored["groups"]) if stored else None

    def references_of(self, kind: str) -> References | None:
        """The references of profile ``kind`` (``auto``: the kind train chose); a kind the bundle did not keep is
        an :class:`InputError` naming the kinds it has."""
        if kind == "auto" or self.references is None or kind == self.references.kind:
            return self.references
        if kind in self.reference_kinds:
            return self.reference_kinds[kind]
        kept = ", ".join([self.references.kind, *self.reference_kinds])
        raise InputError(
            f"references.kind={kind}: this bundle keeps {kept} references — retrain it (cellresponse train RUN "
            f"--overwrite) to keep every kind, or predict with one of these"
        )


def save_bundle(folder: str | Path, bundle: Bundle) -> Path:
    """Write ``bundle`` as :func:`load_bundle` reads it back: the network's weights, ``bundle.json`` (what the
    network was trained on and with, and ``bundle.meta``'s entries — the validation side, the label grouping …),
    the profile models, the chosen references and those of the other kinds. Its ``choice`` is written afterwards
    (:func:`save_choice`), once the saved network has been scored."""
    from safetensors.torch import save_file

    if bundle.model is None:
        raise ValueError("a bundle is saved with its network")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # channels_last parameters are strided views; safetensors stores plain contiguous tensors
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    with atomic_path(folder / "weights.safetensors") as tmp:
        save_file(state, str(tmp))
    scaler = bundle.scaler
    meta = {
        "format": "cellresponse-bundle",
        "made_by": made_by(),
        "version": BUNDLE_VERSION,
        "n_features": bundle.model.n_features,
        "classes": bundle.encoder.classes,
        "label": bundle.config.input.label,
        "label_to_target": bundle.label_to_target,
        "scaler": {"columns": scaler.columns, "mean": scaler.mean, "std": scaler.std},
        "config": bundle.config.to_dict(),
        "crop_settings": bundle.crop_settings,
        "channels": bundle.channels,
        **bundle.meta,
    }
    write_json(folder / "bundle.json", meta)
    for stale in folder.glob("profile_*.json"):
        stale.unlink()
    for kind, profile_model in bundle.profile_models.items():
        write_json(folder / f"profile_{kind}.json", profile_model)
    (folder / "choice.json").unlink(missing_ok=True)
    clear_references(folder)
    if bundle.references is not None:
        save_references(folder, bundle.references)
        for kind, other in bundle.reference_kinds.items():
            if kind != bundle.references.kind:
                save_references(folder / f"references_{kind}", other)  # the writers make the folder
    return folder


def clear_references(folder: Path) -> None:
    """Remove every reference profile a bundle folder keeps (``references.*``, ``references_sphere.npz`` and the
    ``references_<kind>/`` folders): a bundle saved again keeps none of an earlier training's."""
    for stale in folder.glob("references*"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def read_reference_kinds(folder: Path) -> dict[str, References]:
    """The references of the kinds train did not choose, by kind (none in a bundle made before they were kept)."""
    kinds = {}
    for path in sorted(folder.glob("references_*")):
        if path.is_dir() and (references := load_references(path)) is not None:
            kinds[path.name.removeprefix("references_")] = references
    return kinds


def save_choice(folder: str | Path, choice: dict[str, Any]) -> None:
    """Record which model predicts by default (``choice["auto"]``) and the scores that chose it."""
    write_json(Path(folder) / "choice.json", choice)


def read_profile_models(folder: Path) -> dict[str, dict[str, Any]]:
    """The bundle's profile models by kind (a bundle of an earlier version kept one, measured, in
    features_model.json)."""
    models = {
        path.stem.removeprefix("profile_"): json.loads(path.read_text()) for path in folder.glob("profile_*.json")
    }
    legacy = folder / "features_model.json"
    if not models and legacy.is_file():
        models["measured"] = json.loads(legacy.read_text())
    return models


def find_bundle(path: str | Path) -> Path:
    """The bundle folder for a trained run folder, its ``model`` folder or the bundle itself."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist — name a trained run folder or its model bundle")
    for candidate in (path, path / "bundle", path / "model" / "bundle"):
        if (candidate / "bundle.json").is_file():
            return candidate
    raise InputError(
        f"{path} holds no model bundle (looked for bundle.json in it, in bundle/ and in model/bundle/) — "
        f"train one with `cellresponse train RUN`"
    )


def load_bundle(folder: str | Path, network: bool = True) -> Bundle:
    """Load a bundle (the JSON checked for format and version; with ``network``, the trained network's weights
    through safetensors — without, ``model`` is None and torch is not imported); ``folder`` may be the bundle, a
    run's ``model`` folder or the run folder."""
    folder = find_bundle(folder)
    meta_path, weights_path = folder / "bundle.json", folder / "weights.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise InputError(f"{folder} is not a model bundle (needs bundle.json and weights.safetensors)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{meta_path} is not valid JSON: {exc}") from None
    if meta.get("format") != "cellresponse-bundle" or meta.get("version") != BUNDLE_VERSION:
        raise InputError(f"{folder}: unsupported bundle format {meta.get('format')} v{meta.get('version')}")
    config = Config.model_validate(meta["config"])
    model = load_network(folder, meta, config) if network else None
    scaler = Scaler(**meta["scaler"])
    choice_path = folder / "choice.json"
    return Bundle(
        model=model,
        encoder=LabelEncoder(meta["classes"]),
        scaler=scaler,
        config=config,
        crop_settings=meta["crop_settings"],
        channels=meta["channels"],
        label_to_target=meta.get("label_to_target", {}),
        meta=meta,
        profile_models=read_profile_models(folder),
        choice=json.loads(choice_path.read_text()) if choice_path.is_file() else None,
        references=load_references(folder),
        reference_kinds=read_reference_kinds(folder),
    )


def load_network(folder: str | Path, meta: dict[str, Any], config: Config) -> CellResponseNet:
    """The bundle's trained network in eval mode, from ``weights.safetensors`` in the bundle ``folder`` (as
    :func:`find_bundle` finds it), shaped by its ``meta`` (bundle.json) and ``config``."""
    from safetensors.torch import load_file

    from cellresponse.networks.model import CellResponseNet

    weights_path = find_bundle(folder) / "weights.safetensors"
    # The bundle's weights replace any initialisation: no ImageNet file is needed to load it.
    model = CellResponseNet.from_config(
        meta["n_features"], len(meta["classes"]), config.training, config.model, pretrained=False
    )
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except Exception as exc:
        described = weights_path.parent / "bundle.json"
        raise InputError(f"{weights_path} does not fit the network described in {described}: {exc}") from None
    return model.eval()
