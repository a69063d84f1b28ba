"""The ``cellresponse`` command line: one verb per pipeline stage, one flag vocabulary across verbs.

Errors the user can fix (bad input, bad config, missing weights) print one line, ``error: ...``,
and exit with status 2; earlier outputs in the run folder are left as they were.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cellresponse import __version__
from cellresponse.config import PRESETS, Config, load_config, parse_override
from cellresponse.errors import CellResponseError, StageError
from cellresponse.io import RunFolder

log = logging.getLogger("cellresponse")

STAGES = ("images", "segment", "measure", "crops", "train", "evaluate", "report")
NOT_BUILT_EXIT = 3


def _setup_logging(verbose: bool, run: RunFolder | None = None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(console)
    for noisy in ("distributed", "cellpose", "matplotlib", "PIL", "numba", "fsspec", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # tifffile warns about the very damage that read_tiff turns into one clear error line
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    if run is not None and run.root.exists():
        run.logs.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(run.logs / "cellresponse.log")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(file_handler)


# --------------------------------------------------------------------------------------------------
# shared flags
# --------------------------------------------------------------------------------------------------


def _config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config")
    group.add_argument("--preset", choices=sorted(PRESETS), help="study (the paper's numbers) or cpu (small, fast)")
    group.add_argument("--config", type=Path, help="YAML config file (see `cellresponse config show`)")
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set training.max_epochs=3 (repeatable)",
    )
    group.add_argument("--label", help="metadata column to predict (default Metadata_pert_iname)")


def _runtime_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument("--workers", type=int, help="Dask worker processes (0 = in this process)")
    group.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786)")
    group.add_argument("--on-error", choices=["stop", "skip"], help="stop at the first bad image, or skip and list it")
    group.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")
    group.add_argument("-v", "--verbose", action="store_true")


def _input_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("input")
    source = group.add_mutually_exclusive_group(required=required)
    source.add_argument("--images", type=Path, metavar="DIR", help="folder of Phenix-named TIFFs")
    source.add_argument("--load-data", type=Path, metavar="CSV", help="CellProfiler load_data.csv")
    group.add_argument(
        "--metadata",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="treatment metadata CSV/TSV (repeat for a JUMP platemap + compound tables)",
    )
    group.add_argument("--plate", help="plate name for a Phenix folder (default: from the folder name)")


def _cli_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "label", None):
        overrides.append(f"input.label={args.label}")
    for flag, key in (
        ("workers", "runtime.workers"),
        ("scheduler", "runtime.scheduler"),
        ("on_error", "runtime.on_error"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def _new_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.preset, _cli_overrides(args))


def _run_config(run: RunFolder, args: argparse.Namespace) -> Config:
    """A stage verb's config: the run's own config.yaml plus this call's overrides (saved back)."""
    from cellresponse.pipeline import load_run_config, save_config

    config = load_run_config(run)
    overrides = _cli_overrides(args)
    if overrides:
        data = config.to_dict()
        from cellresponse.config import _deep_merge

        for text in overrides:
            data = _deep_merge(data, parse_override(text))
        config = Config.model_validate(data)
        save_config(run, config)
        log.info("config updated with %s", ", ".join(overrides))
    return config


# --------------------------------------------------------------------------------------------------
# verbs
# --------------------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from cellresponse.synth import SynthSpec, make_plates

    spec = SynthSpec(
        n_compounds=args.compounds,
        wells_per_compound=args.wells_per_compound,
        control_wells=args.control_wells,
        sites=args.sites,
        plates=args.plates,
        size=args.size,
        effect=args.effect,
        null_compounds=args.null_compounds,
        seed=args.seed,
    )
    truth = make_plates(args.out, spec)
    print(f"wrote {len(truth)} images ({spec.plates} plates, {spec.n_compounds} compounds + DMSO) to {args.out}")
    print(f"next: cellresponse images --load-data {Path(args.out) / 'load_data.csv'} --out RUN")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from cellresponse.pipeline import stage_images

    config = _new_config(args)
    run = RunFolder(args.out)
    _setup_logging(args.verbose, run.create())
    stage_images(run, config, args.images, args.load_data, args.metadata, args.plate)
    print(f"wrote {run.images}")
    return 0


def _stage_verb(stage: str):
    def command(args: argparse.Namespace) -> int:
        from cellresponse import pipeline

        run = RunFolder(args.run)
        _setup_logging(args.verbose, run)
        config = _run_config(run, args)
        progress = not args.no_progress
        if stage == "segment":
            pipeline.stage_segment(run, config, overwrite=args.overwrite, progress=progress)
        elif stage == "measure":
            pipeline.stage_measure(run, config, overwrite=args.overwrite, csv=args.csv, progress=progress)
        return 0

    return command


def cmd_not_built(name: str):
    def command(args: argparse.Namespace) -> int:
        print(f"cellresponse {name}: not built yet", file=sys.stderr)
        return NOT_BUILT_EXIT

    return command


def cmd_run(args: argparse.Namespace) -> int:
    """Every stage in order, each resumable; --from/--until choose a slice."""
    from cellresponse import pipeline

    run = RunFolder(args.out)
    start = STAGES.index(args.from_stage)
    stop = STAGES.index(args.until_stage)
    if start > stop:
        raise CellResponseError(f"--from {args.from_stage} comes after --until {args.until_stage}")
    if start == 0:
        if args.images is None and args.load_data is None:
            raise CellResponseError("give --images DIR or --load-data CSV (or --from a later stage)")
        config = _new_config(args)
        _setup_logging(args.verbose, run.create())
        pipeline.stage_images(run, config, args.images, args.load_data, args.metadata, args.plate)
    else:
        _setup_logging(args.verbose, run)
    config = _run_config(run, args)
    progress = not args.no_progress
    timings = {}
    for stage in STAGES[max(start, 1) : stop + 1]:
        began = time.perf_counter()
        if stage == "segment":
            pipeline.stage_segment(run, config, overwrite=args.overwrite, progress=progress)
        elif stage == "measure":
            pipeline.stage_measure(run, config, overwrite=args.overwrite, progress=progress)
        else:
            log.warning("stage %s is not built yet; stopping after the stages that are", stage)
            break
        timings[stage] = round(time.perf_counter() - began, 2)
    log.info("stage timings (s): %s", timings)
    print(f"run folder: {run.root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic plates (or --data CSV) through every built stage with the CPU preset."""
    from cellresponse import pipeline
    from cellresponse.synth import SynthSpec, make_plates

    out = Path(args.out)
    run = RunFolder(out / "run")
    if args.data is None:
        data_dir = out / "plates"
        if not (data_dir / "load_data.csv").exists():
            print(f"generating synthetic plates in {data_dir} ...")
            make_plates(data_dir, SynthSpec(seed=args.seed))
        load_data = data_dir / "load_data.csv"
    else:
        load_data = args.data
    overrides = list(args.overrides)
    if args.label:
        overrides.append(f"input.label={args.label}")
    config = load_config(None, "cpu", overrides)
    _setup_logging(args.verbose, run.create())
    pipeline.stage_images(run, config, load_data=load_data)
    pipeline.stage_segment(run, config, progress=not args.no_progress)
    pipeline.stage_measure(run, config, progress=not args.no_progress)
    print(f"demo run folder: {run.root} (figures in {run.figures}, cells in {run.cells})")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.run is not None:
        config = load_config(RunFolder(args.run).config, None, args.overrides)
    else:
        config = load_config(args.config, args.preset, args.overrides)
    print(config.to_yaml(), end="")
    return 0


# --------------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellresponse",
        description="Predict which compound treated the cells in a Cell Painting image.",
    )
    parser.add_argument("--version", action="version", version=f"cellresponse {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("synth", help="write synthetic CPJUMP1-shaped plates (demo and tests only)")
    p.add_argument("out", type=Path)
    p.add_argument("--compounds", type=int, default=6)
    p.add_argument("--wells-per-compound", type=int, default=2)
    p.add_argument("--control-wells", type=int, default=4)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--plates", type=int, default=2)
    p.add_argument("--size", type=int, default=256, help="field side in px")
    p.add_argument("--effect", type=float, default=1.0, help="phenotype strength of the compounds")
    p.add_argument("--null-compounds", type=int, default=1, help="compounds with no effect at all")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = verbs.add_parser("images", help="build RUN/images.parquet from a Phenix folder or a load_data.csv")
    _input_flags(p)
    _config_flags(p)
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_images)

    p = verbs.add_parser("segment", help="segment every image: RUN/masks, RUN/flows, RUN/figures")
    p.add_argument("run", type=Path, metavar="RUN")
    _config_flags(p)
    _runtime_flags(p)
    p.set_defaults(func=_stage_verb("segment"))

    p = verbs.add_parser("measure", help="measure every cell: RUN/cells.parquet")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--csv", action="store_true", help="also write RUN/cells.csv")
    _config_flags(p)
    _runtime_flags(p)
    p.set_defaults(func=_stage_verb("measure"))

    for name, text in (
        ("crops", "cut mask/flow crops into RUN/crops"),
        ("train", "train the multi-input network: RUN/model"),
        ("evaluate", "predictions, votes, metrics and baselines: RUN/metrics.json"),
        ("report", "the HTML report: RUN/report/index.html"),
    ):
        p = verbs.add_parser(name, help=f"{text} (not built yet)")
        p.add_argument("run", type=Path, metavar="RUN", nargs="?")
        p.set_defaults(func=cmd_not_built(name))

    p = verbs.add_parser("predict", help="predict new plates with a model bundle (not built yet)")
    p.add_argument("bundle", type=Path, nargs="?")
    p.set_defaults(func=cmd_not_built("predict"))

    p = verbs.add_parser("run", help="every stage in order, each resumable")
    _input_flags(p, required=False)
    _config_flags(p)
    _runtime_flags(p)
    p.add_argument("--out", type=Path, required=True, metavar="RUN")
    p.add_argument("--from", dest="from_stage", choices=STAGES, default="images")
    p.add_argument("--until", dest="until_stage", choices=STAGES, default="report")
    p.set_defaults(func=cmd_run)

    p = verbs.add_parser("demo", help="synthetic plates (or --data) through the pipeline with the CPU preset")
    p.add_argument("--out", type=Path, default=Path("demo-run"))
    p.add_argument("--data", type=Path, metavar="CSV", help="run on a real load_data.csv instead")
    p.add_argument("--label", help="label column (default Metadata_pert_iname)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = verbs.add_parser("config", help="config tools")
    config_verbs = p.add_subparsers(dest="config_verb", metavar="ACTION")
    config_verbs.required = True
    show = config_verbs.add_parser("show", help="print the resolved config (YAML)")
    show.add_argument("run", type=Path, nargs="?", metavar="RUN", help="show a run folder's config")
    show.add_argument("--preset", choices=sorted(PRESETS))
    show.add_argument("--config", type=Path)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except CellResponseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished images are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
