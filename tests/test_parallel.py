"""The pipeline helpers of parallel.py: read-ahead and gathering into batches in one process, and what a worker of
a real local Dask cluster knows of its place (its number, and so its GPU)."""

from __future__ import annotations

import threading

from cellresponse.parallel import gathered, prefetched


def test_prefetched_keeps_the_order_and_reads_at_most_ahead_of_the_consumer():
    loaded: list[int] = []
    lock = threading.Lock()

    def load(item: int) -> int:
        with lock:
            loaded.append(item)
        return item * 10

    items = list(range(7))
    results = []
    for consumed, value in enumerate(prefetched(load, items, ahead=2), start=1):
        results.append(value)
        with lock:  # at the consumer's n-th item, items up to n + 2 may be loading, never more
            assert len(loaded) <= consumed + 2, (consumed, loaded)
    assert results == [i * 10 for i in items]
    assert sorted(loaded) == items  # each item loaded once
    assert list(prefetched(load, [], ahead=3)) == []


def test_gathered_fills_each_group_to_the_size_and_keeps_the_rest_for_the_last():
    parts = [("a", 3), ("b", 2), ("c", 6), ("d", 1), ("e", 1)]
    groups = list(gathered(parts, 5, count=lambda part: part[1]))
    assert [[name for name, _ in group] for group in groups] == [["a", "b"], ["c"], ["d", "e"]]
    assert list(gathered([], 5, count=len)) == []


def _device_of_this_worker() -> str:
    import torch

    from cellresponse.devices import worker_device
    from cellresponse.parallel import worker_number

    return str(worker_device(torch.device("cuda"), worker_number(), 2))  # as embed picks it on a 2-GPU machine


def test_each_worker_of_a_local_cluster_knows_its_number_and_takes_its_own_gpu():
    from dask.distributed import Client, LocalCluster

    from cellresponse.parallel import worker_number

    assert worker_number() is None  # this process is no worker
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        workers = list(client.scheduler_info()["workers"])  # a task on each, as embed's tasks run there
        numbers = [client.submit(worker_number, workers=[w], pure=False).result() for w in workers]
        devices = [client.submit(_device_of_this_worker, workers=[w], pure=False).result() for w in workers]
    assert sorted(numbers) == [0, 1]
    assert sorted(devices) == ["cuda:0", "cuda:1"]
    assert worker_number() is None
