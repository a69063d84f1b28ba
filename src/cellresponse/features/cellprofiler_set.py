"""CellProfiler's per-object measurements through ``cp_measure`` (CellProfiler's own measurement code as a library),
under CellProfiler's column names: ``measurement.set: cellprofiler`` adds them to the default set, for profiles that
compare with JUMP's.

Per cell (the segmented object; the nucleus is not a second CellProfiler object here):

* ``AreaShape_*`` — MeasureObjectSizeShape with Zernike shape moments and Feret diameters (positions left out);
* per channel ``Intensity_*_<Ch>`` (MeasureObjectIntensity; the default set's six are kept from there, equal to these),
  ``Texture_<Measure>_<Ch>_3_<dd>_256`` (MeasureTexture, scale 3, 256 grey levels, four directions),
  ``Granularity_<k>_<Ch>`` (MeasureGranularity), ``RadialDistribution_{FracAtD,MeanFrac,RadialCV}_<Ch>_<k>of4``
  and ``RadialDistribution_Zernike{Magnitude,Phase}_<Ch>_<n>_<m>`` (MeasureObjectIntensityDistribution);
* per pair of channels ``Correlation_{Correlation,Slope}_<A>_<B>`` and ``Correlation_{Manders,RWC}_<A>_<B>`` /
  ``_<B>_<A>`` (MeasureColocalization; Costes' thresholds are left out: they need the bit depth per channel and
  take longer than everything else together).

Images on CellProfiler's 0-1 scale (illumination.unit_scale).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cellresponse.features.cell_features import CELLPROFILER_INTENSITY
from cellresponse.input.illumination import unit_scale

# positions, not phenotypes: a profile must not learn where in the field a cell sat
POSITIONAL = ("Center_", "BoundingBox", "Location_", "SpatialMoment_", "CentralMoment_0_", "NormalizedMoment_0_")


def per_channel_name(key: str, channel: str) -> str:
    """cp_measure's key for one image → CellProfiler's column name for channel ``channel``."""
    if key.startswith("RadialDistribution_"):
        module, measure, rest = key.split("_", 2)
        return f"{module}_{measure}_{channel}_{rest}"
    if key.startswith(("Intensity_", "Granularity_")):
        return f"{key}_{channel}"
    measure, rest = key.split("_", 1)  # texture: Contrast_3_00_256
    return f"Texture_{measure}_{channel}_{rest}"


def pair_names(key: str, first: str, second: str) -> str:
    """cp_measure's colocalisation key → CellProfiler's (``_1`` is the first image's, ``_2`` the second's)."""
    measure = key.removeprefix("Correlation_")
    if measure == "Pearson":
        return f"Correlation_Correlation_{first}_{second}"
    if measure.endswith(("_1", "_2")):
        name, which = measure.rsplit("_", 1)
        return f"Correlation_{name}_{first}_{second}" if which == "1" else f"Correlation_{name}_{second}_{first}"
    return f"Correlation_{measure}_{first}_{second}"


def cellprofiler_measurements(labels: np.ndarray, channels: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per label present (column ``label``), CellProfiler's measurements (module docstring)."""
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    core, pairs = get_core_measurements(), get_correlation_measurements()
    labels = labels.astype(np.int32, copy=False)
    with warnings.catch_warnings():
        # a ring with no pixel in a small cell divides 0 by 0: NaN, as in CellProfiler, said once per field otherwise
        warnings.simplefilter("ignore", RuntimeWarning)
        return measured_table(labels, channels, core, pairs)


def measured_table(labels: np.ndarray, channels: Mapping[str, np.ndarray], core: dict, pairs: dict) -> pd.DataFrame:
    """:func:`cellprofiler_measurements` with cp_measure's functions given."""
    columns: dict[str, np.ndarray] = {}
    for name in ("sizeshape", "zernike", "feret"):
        for key, values in core[name](labels, None).items():
            if not any(p in key for p in POSITIONAL):
                columns[f"AreaShape_{key}"] = np.asarray(values, np.float64)
    scaled = {name: unit_scale(image).astype(np.float64) for name, image in channels.items()}
    for channel, image in scaled.items():
        kept_from_default = {f"{m}_{channel}" for m in CELLPROFILER_INTENSITY}
        for name in ("intensity", "texture", "granularity", "radial_distribution", "radial_zernikes"):
            for key, values in core[name](labels, image).items():
                column = per_channel_name(key, channel)
                if not key.startswith("Location_") and column not in kept_from_default:
                    columns[column] = np.asarray(values, np.float64)
    names = list(scaled)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            for name in ("pearson", "manders_fold", "rwc"):
                for key, values in pairs[name](scaled[first], scaled[second], labels).items():
                    columns[pair_names(key, first, second)] = np.asarray(values, np.float64)
    present = np.unique(labels[labels > 0])
    return pd.DataFrame({"label": present, **columns})
