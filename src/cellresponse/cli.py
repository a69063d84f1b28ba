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
from cellresponse.config import PRESETS, Config, apply_overrides, load_config
from cellresponse.errors import CellResponseError, StageError
from cellresponse.io import RunFolder

log = logging.getLogger("cellresponse")

STAGES = ("images", "segment", "measure", "crops", "train", "evaluate", "report")


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


def _model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("split and training")
    group.add_argument("--split-by", choices=["image", "well", "plate", "column"], help="grouping of the split")
    group.add_argument("--split-column", help="column naming each image's side (implies --split-by column)")
    group.add_argument(
        "--test-values", nargs="+", metavar="VALUE", help="values of --split-column forming the test side"
    )
    group.add_argument("--epochs", type=int, help="maximum training epochs")
    group.add_argument("--accelerator", help="cpu, gpu or auto")
    group.add_argument("--devices", help="devices per node (e.g. 2 for 2-GPU DDP)")
    group.add_argument("--num-nodes", type=int, help="nodes for multi-node DDP")


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
    if getattr(args, "split_column", None):
        overrides += ["split.by=column", f"split.column={args.split_column}"]
    if getattr(args, "test_values", None):
        overrides.append("split.test_values=[" + ",".join(f"'{v}'" for v in args.test_values) + "]")
    for flag, key in (
        ("split_by", "split.by"),
        ("epochs", "training.max_epochs"),
        ("accelerator", "training.accelerator"),
        ("devices", "training.devices"),
        ("num_nodes", "training.num_nodes"),
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
    """A stage verb's config: the run's own config.yaml plus this call's overrides (saved back by
    :func:`run_stage` once a stage has succeeded, so a failed call leaves config.yaml as it was)."""
    from cellresponse.pipeline import load_run_config

    config = load_run_config(run)
    overrides = _cli_overrides(args)
    if overrides:
        config = apply_overrides(config, overrides, str(run.config))
        log.info("config with %s", ", ".join(overrides))
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
        well_effect=args.well_effect,
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
        if stage == "measure":
            pipeline.stage_measure(run, config, overwrite=args.overwrite, csv=args.csv, progress=progress)
            pipeline.save_config(run, config)
        else:
            run_stage(stage, run, config, overwrite=args.overwrite, progress=progress)
        return 0

    return command


def run_stage(stage: str, run: RunFolder, config: Config, overwrite: bool = False, progress: bool = True) -> None:
    """One stage of the pipeline on a run folder (the verbs and `run` share this)."""
    from cellresponse import pipeline
    from cellresponse.training import is_main_process

    _run_stage(stage, run, config, overwrite, progress)
    if is_main_process() and stage != "report":
        pipeline.save_config(run, config)


def _run_stage(stage: str, run: RunFolder, config: Config, overwrite: bool, progress: bool) -> None:
    from cellresponse import pipeline

    if stage == "segment":
        pipeline.stage_segment(run, config, overwrite=overwrite, progress=progress)
    elif stage == "measure":
        pipeline.stage_measure(run, config, overwrite=overwrite, progress=progress)
    elif stage == "crops":
        pipeline.stage_crops(run, config, overwrite=overwrite, progress=progress)
    elif stage == "train":
        from cellresponse.training import stage_train

        stage_train(run, config, overwrite=overwrite, progress=progress)
    elif stage == "evaluate":
        from cellresponse.evaluation import stage_evaluate

        stage_evaluate(run, config, progress=progress)
    elif stage == "report":
        from cellresponse.report import stage_report

        path = stage_report(run, config)
        print(f"report: {path}")
    else:
        raise CellResponseError(f"unknown stage {stage!r}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.features is not None:
        from cellresponse.evaluation import evaluate_feature_table

        if args.out is None:
            raise CellResponseError("--features needs --out DIR for its metrics.json")
        _setup_logging(args.verbose)
        config = _new_config(args)
        metrics = evaluate_feature_table(args.features, config, args.out)
        print(f"wrote {Path(args.out) / 'metrics.json'} (image accuracy {metrics['image']['accuracy']:.3f})")
        return 0
    if args.run is None:
        raise CellResponseError("give a run folder (cellresponse evaluate RUN) or --features TABLE --out DIR")
    run = RunFolder(args.run)
    _setup_logging(args.verbose, run)
    config = _run_config(run, args)
    run_stage("evaluate", run, config, progress=not args.no_progress)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cellresponse.pipeline import load_run_config

    run = RunFolder(args.run)
    _setup_logging(args.verbose, run)
    run_stage("report", run, load_run_config(run))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cellresponse.predict import predict_plates

    out = RunFolder(args.out)
    _setup_logging(args.verbose, out.create())
    paths = predict_plates(
        args.bundle,
        out,
        images_dir=args.images,
        load_data=args.load_data,
        metadata=args.metadata,
        plate=args.plate,
        overrides=_cli_overrides(args),
        overwrite=args.overwrite,
        progress=not args.no_progress,
        model=args.model,
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Every stage in order, each resumable; --from/--until choose a slice."""
    from cellresponse import pipeline
    from cellresponse.training import is_main_process

    run = RunFolder(args.out)
    start = STAGES.index(args.from_stage)
    stop = STAGES.index(args.until_stage)
    if start > stop:
        raise CellResponseError(f"--from {args.from_stage} comes after --until {args.until_stage}")
    if not is_main_process():  # a DDP worker started by Lightning reruns this command: train only
        start = stop = STAGES.index("train")
    if start == 0:
        if args.images is None and args.load_data is None:
            raise CellResponseError("give --images DIR or --load-data CSV (or --from a later stage)")
        config = _new_config(args)
        _setup_logging(args.verbose, run.create())
        began = time.perf_counter()
        pipeline.stage_images(run, config, args.images, args.load_data, args.metadata, args.plate)
        timings = {"images": round(time.perf_counter() - began, 2)}
    else:
        _setup_logging(args.verbose, run)
        timings = {}
    config = _run_config(run, args)
    for stage in STAGES[max(start, 1) : stop + 1]:
        began = time.perf_counter()
        run_stage(stage, run, config, overwrite=args.overwrite, progress=not args.no_progress)
        timings[stage] = round(time.perf_counter() - began, 2)
        if not is_main_process():
            return 0
    log.info("stage timings (s): %s", timings)
    print(f"run folder: {run.root}")
    if (run.report / "index.html").exists():
        print(f"report: {run.report / 'index.html'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic plates (or --data CSV) through the whole pipeline with the CPU preset."""
    from cellresponse import pipeline
    from cellresponse.synth import SynthSpec, make_plates
    from cellresponse.training import is_main_process

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
    config = load_config(None, "cpu", _cli_overrides(args))
    _setup_logging(args.verbose, run.create())
    started = time.perf_counter()
    if is_main_process():
        pipeline.stage_images(run, config, load_data=load_data)
        for stage in STAGES[1:]:
            run_stage(stage, run, config, progress=not args.no_progress)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; run folder: {run.root}")
    print(f"open the report: {run.report / 'index.html'}")
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
    p.add_argument(
        "--well-effect", type=float, default=0.0, help="per-well phenotype offset (makes sites of a well alike)"
    )
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

    p = verbs.add_parser("crops", help="cut mask/flow crops of every cell into RUN/crops")
    p.add_argument("run", type=Path, metavar="RUN")
    _config_flags(p)
    _runtime_flags(p)
    p.set_defaults(func=_stage_verb("crops"))

    p = verbs.add_parser("train", help="train the multi-input network: RUN/model (bundle, checkpoints, history)")
    p.add_argument("run", type=Path, metavar="RUN")
    _config_flags(p)
    _model_flags(p)
    _runtime_flags(p)
    p.set_defaults(func=_stage_verb("train"))

    p = verbs.add_parser(
        "evaluate", help="predictions, votes, metrics, baselines: RUN/metrics.json (or --features TABLE)"
    )
    p.add_argument("run", type=Path, metavar="RUN", nargs="?")
    p.add_argument("--features", type=Path, metavar="TABLE", help="evaluate a per-image feature table instead")
    p.add_argument("--out", type=Path, metavar="DIR", help="with --features: where metrics.json goes")
    _config_flags(p)
    _model_flags(p)
    _runtime_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser("report", help="the HTML report: RUN/report/index.html")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_report)

    p = verbs.add_parser("predict", help="predict new plates with a model bundle")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="RUN/model/bundle of a trained run")
    p.add_argument(
        "--model",
        choices=["cnn", "features"],
        default="cnn",
        help="the network, or the bundle's features-only model where `evaluate` found it better",
    )
    _input_flags(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    _runtime_flags(p)
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser("run", help="every stage in order, each resumable")
    _input_flags(p, required=False)
    _config_flags(p)
    _model_flags(p)
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
    _model_flags(p)
    p.add_argument("--workers", type=int, help="Dask worker processes (0 = in this process)")
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
