"""Memory of dropping correlated features: pycytominer's ``correlation_threshold`` against
``well_profiles.correlated_features`` (the same rule, without pycytominer's long table of every pair).

    python benchmarks/feature_selection_memory.py [--features 1800 4000] [--wells 80]

Synthetic well profiles (``--wells`` rows; features in groups drawn from a few shared signals plus noise, so that
some pairs correlate above 0.9 as near-copies of a measure do in a real profile). Each way runs in a fresh process;
printed: its peak resident memory above the process's before the call (``VmHWM``), its seconds, whether both drop
the same features, and the ratio of the peaks. The ``both`` profile of BBBC021-moa has ~1,800 columns; with
``measurement.set: cellprofiler`` a profile has several thousand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time
import numpy as np, pandas as pd
def high_water():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
features, wells, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
signals = rng.normal(size=(wells, max(2, features // 10)))
values = signals[:, rng.integers(signals.shape[1], size=features)] + rng.normal(scale=0.3, size=(wells, features))
table = pd.DataFrame(values, columns=[f"Cells_Feature_{i:05d}" for i in range(features)])
names = list(table.columns)
if how == "pycytominer":
    from pycytominer.operations import correlation_threshold
else:
    from cellresponse.profiling.well_profiles import correlated_features
base, started = high_water(), time.perf_counter()
if how == "pycytominer":
    dropped = correlation_threshold(table, features=names, threshold=0.9)
else:
    dropped = correlated_features(table, names)
print(json.dumps({"peak": high_water() - base, "seconds": time.perf_counter() - started, "dropped": sorted(dropped)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, nargs="+", default=[1800, 4000])
    parser.add_argument("--wells", type=int, default=80)
    args = parser.parse_args()
    for features in args.features:
        results = {}
        for how in ("pycytominer", "cellresponse"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(features), str(args.wells), how], check=True,
                                 capture_output=True, text=True)  # fmt: skip
            results[how] = json.loads(out.stdout.splitlines()[-1])
        old, new = results["pycytominer"], results["cellresponse"]
        same = "same" if old["dropped"] == new["dropped"] else "DIFFERENT"
        ratio = old["peak"] / max(new["peak"], 1e-9)
        print(f"{features:5d} features × {args.wells} wells: pycytominer {old['peak']:7.1f} MB {old['seconds']:5.1f} s,"
              f" correlated_features {new['peak']:6.1f} MB {new['seconds']:5.1f} s — {same} {len(new['dropped'])}"
              f" features dropped; memory ×{ratio:.1f} less")  # fmt: skip


if __name__ == "__main__":
    main()
