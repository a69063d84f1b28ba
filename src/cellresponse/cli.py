"""The ``cellresponse`` command line: it parses and dispatches; the work is in ``stages/``.

One flag vocabulary across verbs (the flag groups below); each verb is a row of :data:`VERBS`. Errors the user can
fix (bad input, bad config, missing weights) print one line, ``error: ...``, and exit with status 2; earlier
outputs in the run folder are left as they were. A stage that finished with failed images exits with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cellresponse import __version__
from cellresponse.config import PRESETS, Config, apply_overrides, load_config, preset_overrides
from cellresponse.errors import CellResponseError, StageError, disk_full_message
from cellresponse.evaluation.prediction_tables import write_csv_copies
from cellresponse.input.locks import folder_lock
from cellresponse.input.plate import ImageSource
from cellresponse.input.runfolder import RunFolder
from cellresponse.input.synth import SynthSpec, make_plates
from cellresponse.parallel import is_main_process
from cellresponse.stages import PIPELINE, run_pipeline, run_stage

log = logging.getLogger("cellresponse")

QUIET_LOGGERS = ("distributed", "cellpose", "matplotlib", "PIL", "numba", "fsspec", "lightning", "copairs")


def setup_logging(verbose: bool, run: RunFolder | None = None) -> None:
    """Messages to stderr (debug with -v); with a run folder, also to ``RUN/logs/cellresponse.log``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    level = logging.DEBUG if verbose else logging.INFO
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(level)
    root.addHandler(console)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # tifffile warns about the very damage that read_tiff turns into one clear error line
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    if run is not None and run.root.exists():
        run.logs.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(run.log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(file_handler)


# --------------------------------------------------------------------------------------------------
# flag groups
# --------------------------------------------------------------------------------------------------


def _set_flag(
    group: argparse._ActionsContainer,
    text: str = "override one config value, e.g. --set training.max_epochs=3 (repeatable)",
) -> None:
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text)


def config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config")
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="study (the paper's numbers), cpu (small, fast) or finetune (cpu, network from ImageNet on the stains)",
    )
    group.add_argument("--config", type=Path, help="YAML config file (see `cellresponse config show`)")
    _set_flag(group)
    group.add_argument("--label", help="metadata column to predict (default Metadata_pert_iname)")


def runtime_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument("--workers", type=int, help="Dask worker processes (0 = in this process)")
    group.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786)")
    group.add_argument("--on-error", choices=["stop", "skip"], help="stop at the first bad image, or skip and list it")
    group.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def model_flags(parser: argparse.ArgumentParser) -> None:
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


def input_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
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


def optional_input_flags(parser: argparse.ArgumentParser) -> None:
    """`run`: an image source is needed when the run starts at the images stage (the default), not with --from."""
    input_flags(parser, required=False)
    parser.epilog = "--images DIR or --load-data CSV is required unless --from names a later stage."


def run_folder_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder (made by `cellresponse images`)")


def verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def synth_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of :class:`SynthSpec` (``--compounds`` for ``n_compounds``), defaults from it."""
    parser.add_argument("out", type=Path, metavar="OUT", help="folder for the plates and load_data.csv")
    for spec_field in dataclasses.fields(SynthSpec):
        flag = "--" + spec_field.name.removeprefix("n_").replace("_", "-")
        parser.add_argument(
            flag,
            dest=spec_field.name,
            type=type(spec_field.default),
            default=spec_field.default,
            help=f"{spec_field.metadata['help']} (default {spec_field.default})",
        )


# Flags that are shorthands for config keys.
FLAG_KEYS = (
    ("split_by", "split.by"),
    ("epochs", "training.max_epochs"),
    ("accelerator", "training.accelerator"),
    ("devices", "training.devices"),
    ("num_nodes", "training.num_nodes"),
    ("workers", "runtime.workers"),
    ("scheduler", "runtime.scheduler"),
    ("on_error", "runtime.on_error"),
)


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values plus the shorthand flags, as ``key=value`` overrides."""
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "label", None):
        overrides.append(f"input.label={args.label}")
    if getattr(args, "split_column", None):
        overrides += ["split.by=column", f"split.column={args.split_column}"]
    if getattr(args, "test_values", None):
        overrides.append("split.test_values=[" + ",".join(f"'{v}'" for v in args.test_values) + "]")
    for flag, key in FLAG_KEYS:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def new_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.preset, cli_overrides(args))


def run_config(run: RunFolder, args: argparse.Namespace) -> Config:
    """A stage verb's config: the run's own config.yaml plus this call's overrides (saved back once a stage has
    succeeded, so a failed call leaves config.yaml as it was)."""
    config = run.load_config()
    overrides = cli_overrides(args)
    if getattr(args, "preset", None):  # a preset given to a stage verb applies too, below this call's --set
        overrides = [*preset_overrides(args.preset), *overrides]
    if overrides:
        config = apply_overrides(config, overrides, str(run.config))
        log.info("config with %s", ", ".join(overrides))
    return config


def image_source(args: argparse.Namespace) -> ImageSource:
    return ImageSource(args.images, args.load_data, tuple(args.metadata), args.plate)


# --------------------------------------------------------------------------------------------------
# verbs
# --------------------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    spec = SynthSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SynthSpec)})
    truth = make_plates(args.out, spec)
    print(f"wrote {len(truth)} images ({spec.plates} plates, {spec.n_compounds} compounds + DMSO) to {args.out}")
    print(f"next: cellresponse images --load-data {Path(args.out) / 'load_data.csv'} --out RUN")
    return 0


@contextlib.contextmanager
def new_run_folder(run: RunFolder) -> Iterator[RunFolder]:
    """Create ``run``; when the command is refused (bad input, before any image work) and the folder did not
    exist before, remove it again — a refused command leaves nothing behind."""
    existed = run.root.exists()
    run.create()
    try:
        yield run
    except CellResponseError as exc:
        if not existed and not isinstance(exc, StageError):
            logging.shutdown()  # close RUN/logs/cellresponse.log before the folder goes
            for handler in list(logging.getLogger().handlers):
                logging.getLogger().removeHandler(handler)
            shutil.rmtree(run.root, ignore_errors=True)
        raise


def cmd_images(args: argparse.Namespace) -> int:
    config = new_config(args)
    run = RunFolder(args.out)
    with new_run_folder(run):
        setup_logging(args.verbose, run)
        run_stage(
            "images", run, config, source=image_source(args), overwrite=args.overwrite, progress=not args.no_progress
        )
    print(f"wrote {run.images}")
    return 0


def stage_verb(stage: str) -> Callable[[argparse.Namespace], int]:
    """The command of a stage verb on an existing run folder (segment, measure, crops, train, evaluate)."""

    def command(args: argparse.Namespace) -> int:
        run = RunFolder(args.run)
        setup_logging(args.verbose, run)
        options = {"csv": True} if getattr(args, "csv", False) else {}
        run_stage(stage, run, run_config(run, args), overwrite=args.overwrite, progress=not args.no_progress, **options)
        return 0

    return command


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.features is None:
        if args.run is None:
            raise CellResponseError("give a run folder (cellresponse evaluate RUN) or --features TABLE --out DIR")
        return stage_verb("evaluate")(args)
    # Imported here because start-up time needs it: the evaluate stage brings torch (see cmd_predict).
    from cellresponse.stages.evaluate import run_feature_table

    if args.out is None:
        raise CellResponseError("--features needs --out DIR for its metrics.json")
    setup_logging(args.verbose)
    metrics = run_feature_table(args.features, new_config(args), args.out)
    print(f"wrote {Path(args.out) / 'metrics.json'} (image accuracy {metrics['image']['accuracy']:.3f})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run = RunFolder(args.run)
    setup_logging(args.verbose, run)
    run_stage("report", run, run.load_config())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    # Imported here because start-up time needs it: predict brings torch, which the other verbs' parsing must not.
    from cellresponse.stages import predict

    out = RunFolder(args.out)
    with contextlib.ExitStack() as held:
        with new_run_folder(out):  # a refused bundle, model or set of channels leaves no output folder behind
            held.enter_context(folder_lock(out.root))  # one writer; held until the predictions are written
            setup_logging(args.verbose, out)
            plan = predict.prepare(
                args.bundle, out, image_source(args), overrides=cli_overrides(args), model=args.model,
                overwrite=args.overwrite,
            )  # fmt: skip
        paths = predict.predict_images(plan, out, overwrite=args.overwrite, progress=not args.no_progress)
    if args.csv:
        paths += write_csv_copies([p for p in paths if p != out.cell_predictions and p.suffix == ".parquet"])
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Every stage in order, each resumable; --from/--until choose a slice."""
    run = RunFolder(args.out)
    starts_with_images = args.from_stage == PIPELINE[0] and is_main_process()
    folder: contextlib.AbstractContextManager[RunFolder]
    if starts_with_images:
        if args.images is None and args.load_data is None:
            raise CellResponseError("give --images DIR or --load-data CSV (or --from a later stage)")
        config = new_config(args)
        folder = new_run_folder(run)
    else:
        config = run_config(run, args)
        folder = contextlib.nullcontext(run)
    with folder:
        setup_logging(args.verbose, run)
        run_pipeline(
            run,
            config,
            source=image_source(args) if starts_with_images else None,
            start=args.from_stage,
            stop=args.until_stage,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    if is_main_process():
        print(f"run folder: {run.root}")
        if run.report_index.exists():
            print(f"report: {run.report_index}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic plates (or --data CSV) through the whole pipeline with the CPU preset."""
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
    config = load_config(None, "cpu", cli_overrides(args))
    setup_logging(args.verbose, run.create())
    started = time.perf_counter()
    if is_main_process():
        run_pipeline(run, config, source=ImageSource(load_data=Path(load_data)), progress=not args.no_progress)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; run folder: {run.root}")
    print(f"open the report: {run.report_index}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.run is not None:
        config = load_config(RunFolder(args.run).config, None, args.overrides)
    else:
        config = load_config(args.config, args.preset, args.overrides)
    print(config.to_yaml(), end="")
    return 0


# --------------------------------------------------------------------------------------------------
# the parser: one row per verb
# --------------------------------------------------------------------------------------------------


def measure_extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", action="store_true", help="also write RUN/cells.csv")


def evaluate_extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN", nargs="?", help="run folder with a trained model")
    parser.add_argument("--features", type=Path, metavar="TABLE", help="evaluate a per-image feature table instead")
    parser.add_argument("--out", type=Path, metavar="DIR", help="with --features: where metrics.json goes")


def predict_extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="a trained run folder, its RUN/model or RUN/model/bundle"
    )
    parser.add_argument(
        "--model",
        choices=["auto", "network", "measured", "deep", "both", "cnn", "features"],
        default="auto",
        help="auto (default): the model that scored best on the validation side when the bundle was trained; "
        "network; or a profile model: measured, deep, both (cnn and features: old names of network and measured)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the predictions")
    parser.add_argument(
        "--csv", action="store_true", help="also write the image and well calls as CSV (for a spreadsheet)"
    )
    _set_flag(
        parser,
        "change how the bundle predicts, e.g. --set references.kind=measured (runtime.*, input.join, input.label, "
        "input.control_label, training.accelerator, references.kind / moa_space / novelty_quantile / "
        "query_normalization / activity_fdr / neighbours, profiles.treatment / compound; what the model sees is "
        "the bundle's and is refused)",
    )


def images_extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder to create")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the image table of a run that holds other images"
    )


def run_extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder (created or resumed)")
    parser.add_argument("--from", dest="from_stage", choices=PIPELINE, default=PIPELINE[0], help="first stage")
    parser.add_argument("--until", dest="until_stage", choices=PIPELINE, default=PIPELINE[-1], help="last stage")


def demo_extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-run"), help="folder for the plates and the run")
    parser.add_argument("--data", type=Path, metavar="CSV", help="run on a real load_data.csv instead")
    parser.add_argument("--label", help="label column (default Metadata_pert_iname)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic plates")
    _set_flag(parser)
    parser.add_argument("--workers", type=int, help="Dask worker processes (0 = in this process)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def no_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` on a verb that shows no bars (report, config show), so one flag works with every verb."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (accepted by every verb)")


def config_extra(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved config (YAML)")
    show.add_argument("run", type=Path, nargs="?", metavar="RUN", help="show a run folder's config")
    show.add_argument("--preset", choices=sorted(PRESETS), help="study, cpu or finetune")
    show.add_argument("--config", type=Path, help="YAML config file")
    _set_flag(show)
    no_progress_flag(show)
    show.set_defaults(func=cmd_config)


FlagGroup = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    flags: tuple[FlagGroup, ...]
    command: Callable[[argparse.Namespace], int] | None


STAGE_FLAGS = (run_folder_argument, config_flags, runtime_flags)
VERBS = (
    Verb("synth", "write synthetic CPJUMP1-shaped plates (demo and tests only)", (synth_flags,), cmd_synth),
    Verb(
        "images",
        "build RUN/images.parquet from a Phenix folder or a load_data.csv",
        (input_flags, config_flags, images_extra, no_progress_flag, verbose_flag),
        cmd_images,
    ),
    Verb("segment", "segment every image: RUN/masks, RUN/flows, RUN/figures", STAGE_FLAGS, stage_verb("segment")),
    Verb("measure", "measure every cell: RUN/cells.parquet", (*STAGE_FLAGS, measure_extra), stage_verb("measure")),
    Verb("crops", "cut mask/flow crops of every cell into RUN/crops", STAGE_FLAGS, stage_verb("crops")),
    Verb("embed", "per-cell embeddings from a pretrained network: RUN/embeddings", STAGE_FLAGS, stage_verb("embed")),
    Verb(
        "profile",
        "well and treatment profiles (measured, deep, both) and their benchmarks: RUN/profiles",
        STAGE_FLAGS,
        stage_verb("profile"),
    ),
    Verb(
        "train",
        "train the multi-input network: RUN/model (bundle, checkpoints, history)",
        (*STAGE_FLAGS, model_flags),
        stage_verb("train"),
    ),
    Verb(
        "evaluate",
        "predictions, votes, metrics, baselines: RUN/metrics.json (or --features TABLE)",
        (evaluate_extra, config_flags, model_flags, runtime_flags),
        cmd_evaluate,
    ),
    Verb(
        "report",
        "the HTML report: RUN/report/index.html",
        (run_folder_argument, verbose_flag, no_progress_flag),
        cmd_report,
    ),
    Verb(
        "predict",
        "predict new plates with a model bundle",
        (predict_extra, input_flags, runtime_flags),
        cmd_predict,
    ),
    Verb(
        "run",
        "every stage in order, each resumable",
        (optional_input_flags, config_flags, model_flags, runtime_flags, run_extra),
        cmd_run,
    ),
    Verb(
        "demo",
        "synthetic plates (or --data) through the pipeline with the CPU preset",
        (demo_extra, model_flags, verbose_flag),
        cmd_demo,
    ),
    Verb("config", "config tools", (config_extra,), None),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellresponse",
        description=(
            "From Cell Painting images: which treatment the cells received, and for a compound no model has seen "
            "whether it is active, which reference treatments it resembles, its mechanism with a calibrated "
            "probability, or that it is novel."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cellresponse {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        sub = verbs.add_parser(verb.name, help=verb.help, description=verb.help)
        for add_flags in verb.flags:
            add_flags(sub)
        if verb.command is not None:
            sub.set_defaults(func=verb.command)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A log line that cannot be written (a full disk) must not print a traceback beside the one error line.
    logging.raiseExceptions = False
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
    except OSError as exc:
        if (message := disk_full_message(exc)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted; finished work is kept (images, checkpoints), rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
