"""Embedding throughput of `cellresponse embed` on real BBBC021-moa fields (goal: >= 300 cells/s on 2 cores at the
default 96 px input), and the network alone at several batch sizes (why embedding.batch_size is 16).

    python benchmarks/embed_throughput.py [--images 100] [--scale-out] [--max-cells 50 25]

``--scale-out``: the same images embedded in this process (``embedding.execution: process``, the default on one
machine) and on 1 and 2 local Dask workers (``workers``: a task per image, each worker loading the backbone once),
in one run: the workers' speed-up 1 → 2 and how they compare with this process. ``--max-cells N …``: the same
images embedded again with ``embedding.max_cells_per_image`` at each N, each stage's time against every cell's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import SHARED, prepared_run

from cellresponse.config import load_config
from cellresponse.networks.embeddings import Embedder
from cellresponse.stages import embed as embed_stage

DEFAULT_DATA = SHARED / "bbbc021-moa" / "load_data.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--scale-out", action="store_true")
    parser.add_argument("--max-cells", type=int, nargs="*", default=[])
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"data not found: {args.data} (needs ../shared/data)")
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, None, ["segmentation.backend=offline", "runtime.workers=0"])
        run = prepared_run(args.data, args.images, Path(tmp), config, ("segment", "measure"))
        summary = embed_stage.run(run, config, progress=False)
        print(
            f"embed stage: {summary['cells_embedded_now']} cells in {summary['seconds']:.1f} s -> "
            f"{summary['cells_per_second']:.0f} cells/s (goal >= 300; network {summary['network_seconds']:.1f} s; "
            f"window {summary['settings']['window']} px -> {config.embedding.input_size} px, torch threads "
            f"{torch.get_num_threads()})"
        )
        if args.scale_out:
            scale_out(run, config)
        if args.max_cells:
            capped(run, config, summary, args.max_cells)
    x = (torch.rand(512, 3, 48, 48) * 255).to(torch.uint8).numpy()
    for batch in (16, 32, 64, 256):
        embedder = Embedder(input_size=config.embedding.input_size, batch_size=batch)
        embedder(x[:batch])
        began = time.perf_counter()
        embedder(x)
        print(f"network alone, batch {batch:3d}: {len(x) / (time.perf_counter() - began):6.0f} windows/s")


def scale_out(run, config) -> None:
    """Embed the run's images again in this process and on 1 and 2 Dask workers; print cells/s and the ratios."""
    import shutil

    rates = {}
    for name, execution, workers in (("this process", "process", 0), ("1 worker", "workers", 1),
                                     ("2 workers", "workers", 2)):  # fmt: skip
        shutil.rmtree(run.embeddings, ignore_errors=True)
        run.embedding_means.unlink(missing_ok=True)
        chosen = config.model_copy(update={
            "embedding": config.embedding.model_copy(update={"execution": execution}),
            "runtime": config.runtime.model_copy(update={"workers": workers}),
        })  # fmt: skip
        summary = embed_stage.run(run, chosen, progress=False)
        rates[name] = summary["cells_embedded_now"] / summary["seconds"]
        print(f"  {name:>12}: {rates[name]:6.0f} cells/s ({summary['seconds']:.1f} s, start-up included)")
    print(f"  workers 1 → 2: ×{rates['2 workers'] / rates['1 worker']:.2f}; 2 workers against this process: "
          f"×{rates['2 workers'] / rates['this process']:.2f}")  # fmt: skip


def capped(run, config, every: dict, caps: list[int]) -> None:
    """Embed the run's images again with at most each of ``caps`` cells an image; print the stage's time against
    ``every`` (the summary of the run that embedded every cell)."""
    import shutil

    for cap in caps:
        shutil.rmtree(run.embeddings, ignore_errors=True)
        run.embedding_means.unlink(missing_ok=True)
        chosen = config.model_copy(
            update={"embedding": config.embedding.model_copy(update={"max_cells_per_image": cap})}
        )
        summary = embed_stage.run(run, chosen, progress=False)
        print(
            f"  max_cells_per_image {cap}: {summary['cells_embedded_now']} of {every['cells_embedded_now']} cells in "
            f"{summary['seconds']:.1f} s -> ×{every['seconds'] / summary['seconds']:.2f} the speed of every cell "
            f"({every['seconds']:.1f} s)"
        )


if __name__ == "__main__":
    main()
