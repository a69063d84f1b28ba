"""Run a per-image function over many images with Dask, a progress bar and clear failures.

Each task is a module-level function applied to one image-table row; it writes its own outputs
atomically, so a killed run leaves only whole files and a rerun skips what is done (the caller
filters finished images before calling :func:`map_images`).

``runtime.workers = 0`` runs in this process (no Dask; handy for debugging); ``>= 1`` starts a
local Dask cluster of that many single-threaded worker processes; ``runtime.scheduler`` connects to
an existing cluster instead.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tqdm.auto import tqdm

from cellresponse.config import RuntimeConfig
from cellresponse.errors import CellResponseError, InputError, disk_full_message

log = logging.getLogger(__name__)
Item = TypeVar("Item")
Loaded = TypeVar("Loaded")

# One image per worker at a time, and no oversubscription: each worker gets one BLAS/OpenMP thread
# (torch reads OMP_NUM_THREADS when the Cellpose backend first imports it in a worker).
# This replaces Dask's own list, whose MALLOC_TRIM_THRESHOLD_=65536 hands freed memory back to the system at once:
# every full-field array then page-faults afresh, which cost 27-70 % more time per field in segment, measure and
# crops on 1080-px CPJUMP1 fields (0.25-0.38 s of system time a field, 2026-11-26); glibc's default keeps it.
_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


@dataclass
class TaskResult:
    image_id: str
    ok: bool
    info: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def restore_environment(saved: dict[str, str]) -> None:
    """Make ``os.environ`` equal to ``saved`` again (variables added since are removed)."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def run_task(func: Callable[[dict], dict], row: dict) -> TaskResult:
    """Call ``func(row)`` and turn any exception into a failed result (so one bad image is reported,
    not a crashed worker). Clear errors keep their message; others get type and last frame."""
    image_id = str(row.get("image_id", "?"))
    try:
        return TaskResult(image_id, True, func(row) or {})
    except CellResponseError as exc:
        return TaskResult(image_id, False, error=str(exc))
    except Exception as exc:
        if (message := disk_full_message(exc)) is not None:
            return TaskResult(image_id, False, error=message)
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
        return TaskResult(image_id, False, error=f"{type(exc).__name__}: {exc} (at {where})")


def run_chunk(func: Callable[[dict], dict], rows: list[dict]) -> list[TaskResult]:
    return [run_task(func, row) for row in rows]


def chunk_size(n_rows: int, n_workers: int) -> int:
    """Images per Dask task: enough to hide the scheduler's per-task cost (~20 ms on 2 cores), few
    enough that every worker gets several tasks (load balance) and the progress bar moves."""
    return max(1, min(8, n_rows // max(1, 4 * n_workers)))


def _iterate_local(func: Callable[[dict], dict], rows: list[dict]) -> Generator[TaskResult]:
    for row in rows:
        yield run_task(func, row)


def _quiet_dask() -> None:
    # Dask sets its own logger levels at import; its start/stop chatter is not news for a user.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("distributed", "tornado", "bokeh")):
            logging.getLogger(name).setLevel(logging.ERROR)


class _DaskPool:
    def __init__(self, runtime: RuntimeConfig):
        # Imported here because start-up time needs it: dask.distributed costs ~1 s, and --workers 0 and the
        # CLI's argument parsing never use it.
        import dask
        from dask.distributed import Client, LocalCluster

        _quiet_dask()
        self.cluster = None
        if runtime.scheduler:
            self.client = Client(runtime.scheduler)
        else:
            # The nanny applies pre-spawn-environ to os.environ of *this* process too: left there, OMP_NUM_THREADS=1
            # made torch (imported later, by train in the same `run`) train on one thread. It is meant for the
            # workers only, so this process's environment is put back once they are started.
            environment = dict(os.environ)
            try:
                with dask.config.set({"distributed.nanny.pre-spawn-environ": _THREAD_ENV}):
                    self.cluster = LocalCluster(
                        n_workers=runtime.workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        # CRITICAL, not ERROR: a worker whose heartbeat meets the scheduler closing (a stage ending on a
                        # failed image) logs a CommClosedError traceback at ERROR; a task's own error reaches the user
                        # through its result (run_task), and a lost worker through its futures, never through these.
                        silence_logs=logging.CRITICAL,
                    )
            finally:
                restore_environment(environment)
            self.client = Client(self.cluster)

    def iterate(self, func: Callable[[dict], dict], rows: list[dict]) -> Generator[TaskResult]:
        from dask.distributed import as_completed  # see __init__ for why it is imported here

        workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        size = chunk_size(len(rows), workers)
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        futures = [self.client.submit(run_chunk, func, chunk, pure=False) for chunk in chunks]
        try:
            for future in as_completed(futures):
                yield from future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        _quiet_dask()
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def worker_number() -> int | None:
    """This process's number among a local cluster's workers (the name ``LocalCluster`` gives them: 0, 1, …); None
    outside a Dask worker or for a worker named otherwise."""
    if "distributed" not in sys.modules:  # never imported: not a worker (and no second of import to pay to know it)
        return None
    from distributed import get_worker

    try:
        name = get_worker().name
    except ValueError:  # not inside a worker's task
        return None
    return name if isinstance(name, int) else None


def is_main_process() -> bool:
    """False inside the extra processes Lightning's DDP launcher starts (they rerun the command and must only
    train). Read from the launcher's environment variables, so asking costs no torch import."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def map_images(
    func: Callable[[dict], dict],
    rows: list[dict],
    runtime: RuntimeConfig,
    desc: str,
    progress: bool = True,
) -> tuple[list[TaskResult], list[TaskResult]]:
    """Apply ``func`` to every row; returns (done, failed).

    With ``runtime.on_error == "stop"`` the first failure cancels the rest and raises its message;
    with ``"skip"`` every image is tried and the failures are returned for the caller to record.
    """
    if not rows:
        return [], []
    done: list[TaskResult] = []
    failed: list[TaskResult] = []
    pool = _DaskPool(runtime) if (runtime.workers > 0 or runtime.scheduler) else None
    results = pool.iterate(func, rows) if pool else _iterate_local(func, rows)
    bar = tqdm(total=len(rows), desc=desc, unit="image", disable=not progress, leave=True)
    try:
        for result in results:
            bar.update(1)
            if result.ok:
                done.append(result)
                continue
            failed.append(result)
            if runtime.on_error == "stop":
                raise InputError(f"{desc} failed on image {result.image_id}: {result.error}")
            log.warning("%s failed on %s: %s", desc, result.image_id, result.error)
    finally:
        bar.close()
        # Close the generator here, while the client is alive: left to the garbage collector, its cleanup (cancel
        # the remaining futures) ran after the client had closed and printed "Exception ignored … IOLoop is closed"
        # under the one error line.
        results.close()
        if pool:
            pool.close()
    return done, failed


def prefetched(load: Callable[[Item], Loaded], items: Sequence[Item], ahead: int) -> Iterator[Loaded]:
    """``load`` of each item in order, a background thread loading up to ``ahead`` items before they are asked for
    (reading and cutting images while this process runs the network on the previous ones). A queue, not a list of
    futures: a finished future holds its result, and keeping them all grew the process by ~10 MB an image."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = deque(pool.submit(load, item) for item in items[:ahead])
        for i in range(len(items)):
            if i + ahead < len(items):
                futures.append(pool.submit(load, items[i + ahead]))
            yield futures.popleft().result()


def gathered(parts: Iterable[Item], size: int, count: Callable[[Item], int]) -> Iterator[list[Item]]:
    """Consecutive ``parts`` grouped until a group counts at least ``size`` (``count`` of each part), the last
    group whatever it holds — images gathered into full network batches across images."""
    group: list[Item] = []
    total = 0
    for part in parts:
        group.append(part)
        total += count(part)
        if total >= size:
            yield group
            group, total = [], 0
    if group:
        yield group
