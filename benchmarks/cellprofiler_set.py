"""What ``measurement.set: cellprofiler`` costs and what it gives.

    python benchmarks/cellprofiler_set.py [--run MOA_RUN]

1. Seconds per real 1080×1080 CPJUMP1 field (the two six-channel fields of ../shared/data/cpjump1, first five
   channels), offline segmentation: the default set (``measurement.extended``) against the default plus
   CellProfiler's set (cp_measure), in one process on this machine.
2. With ``--run`` (bbbc021-moa through ``measure``, see unseen_compounds.py): the run copied (images and masks),
   measured again with ``measurement.set: cellprofiler`` and profiled (measured kind); NSC MoA accuracy and replicate
   mAP of the measured profiles against the run's own (default set).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from cellresponse.config import Config
from cellresponse.features.cell_features import measure_cells
from cellresponse.features.cellprofiler_set import cellprofiler_measurements
from cellresponse.input.channels import apply_recipe, load_stack
from cellresponse.input.plate import ImageSource, build_image_table, channel_names
from cellresponse.input.runfolder import RunFolder
from cellresponse.segmentation.offline import Segmenter
from cellresponse.stages import measure, profile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def field_seconds() -> None:
    config = Config()
    for folder in sorted((SHARED / "cpjump1" / "fields").iterdir()):
        table, _ = build_image_table(ImageSource(images_dir=folder))
        names = channel_names(table)
        if len(names) < 5:
            continue
        stack = load_stack(table.iloc[0].to_dict(), names)[:5]
        names = names[:5]
        seg_input = apply_recipe(stack, config.segmentation.input, names)
        labels = Segmenter(config.segmentation, backend="offline")(seg_input, stack[-1]).labels
        channels = {n: stack[i] for i, n in enumerate(names)}
        started = time.perf_counter()
        table, _ = measure_cells(labels, seg_input, channels=channels, nuclear_channel=names[-1], extended=True)
        default = time.perf_counter() - started
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            extra = cellprofiler_measurements(labels, channels)
        added = time.perf_counter() - started
        print(
            f"{folder.name}: {stack.shape[1]}×{stack.shape[2]} px, {len(names)} channels, {len(table)} cells — "
            f"default set {default:.1f} s ({table.shape[1]} columns); CellProfiler's set adds {added:.1f} s "
            f"({extra.shape[1] - 1} columns): ×{(default + added) / default:.1f} the default measurement time"
        )


def nsc_of(run: RunFolder, config: Config) -> tuple[float, float, int]:
    config = config.model_copy(update={"profiles": config.profiles.model_copy(update={"kinds": ["measured"]})})
    block = profile.run(run, config, progress=False).kinds["measured"]
    return block.nsc.accuracy, block.map_replicates.mean_average_precision, block.features


def profiles_with_cellprofiler_set(source: RunFolder) -> None:
    config = source.load_config()
    nsc, mean_ap, features = nsc_of(source, config)
    print(
        f"{source.root}: default set: measured profiles {features} features, NSC {nsc:.3f}, replicate mAP {mean_ap:.3f}"
    )
    with tempfile.TemporaryDirectory() as folder:
        run = RunFolder(Path(folder) / "run")
        run.root.mkdir()
        for name in ("images.parquet", "segmentation.parquet", "config.yaml"):
            shutil.copy(source.root / name, run.root / name)
        shutil.copytree(source.masks, run.masks)
        shutil.copytree(source.flows, run.flows)
        config = config.model_copy(
            update={"measurement": config.measurement.model_copy(update={"set": "cellprofiler"}),
                    "runtime": config.runtime.model_copy(update={"workers": 2})}
        )  # fmt: skip
        started = time.perf_counter()
        summary = measure.run(run, config, progress=False)
        seconds = time.perf_counter() - started
        nsc, mean_ap, features = nsc_of(run, config)
        print(
            f"  with measurement.set: cellprofiler: measure {seconds:.0f} s for {summary.get('cells')} cells; "
            f"measured profiles {features} features, NSC {nsc:.3f}, replicate mAP {mean_ap:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="bbbc021-moa run folder through measure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    field_seconds()
    if args.run:
        profiles_with_cellprofiler_set(RunFolder(args.run))


if __name__ == "__main__":
    main()
