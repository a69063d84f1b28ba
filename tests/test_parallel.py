"""The pipeline helpers of parallel.py that run in one process: read-ahead and gathering into batches."""

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
