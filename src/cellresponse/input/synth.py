"""Synthetic CPJUMP1-shaped plates for demos, scale and edge-case tests.

Never evidence that anything works on real cells — only a deterministic generator whose ground
truth is known. Each compound has a hidden phenotype (cell size, elongation, intensity, texture,
cell count, nucleus size) scaled by its effect size; effect 0 makes it indistinguishable from DMSO.
Replicate plates get their own intensity gain and illumination gradient.

Layout written under ``OUT``::

    OUT/<plate>/Images/r01c01f01p01-ch1sk1fk1fl1.tiff   channels: ch1 Mito, ch2 AGP, ch3 RNA, ch4 ER, ch5 DNA
    OUT/platemap.tsv                 well_position, broad_sample, solvent       (JUMP platemap format)
    OUT/compound_metadata.tsv        broad_sample, pert_iname, target           (JUMP compound format)
    OUT/metadata.csv                 the study's format (FileName_OrigRNA, Metadata_Plate/Well/Site, ...)
    OUT/load_data.csv                CellProfiler format, one row per field, all plates
    OUT/truth.csv                    per image: true cell count and the compound's effect size
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage as ndi

from cellresponse.input.plate import core_file_name, well_name

CHANNELS = {1: "Mito", 2: "AGP", 3: "RNA", 4: "ER", 5: "DNA"}
SYNTHETIC_COLUMN = "Metadata_Synthetic"


def _spec(default: float, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SynthSpec:
    """What the synthetic plates hold; ``cellresponse synth`` has one flag per field (help from ``metadata``)."""

    n_compounds: int = _spec(6, "compounds besides DMSO")
    wells_per_compound: int = _spec(2, "wells of each compound per plate")
    control_wells: int = _spec(4, "DMSO wells per plate")
    sites: int = _spec(3, "fields per well")
    plates: int = _spec(2, "plates")
    size: int = _spec(256, "field side in px")
    cells_per_image: int = _spec(22, "cells per field")
    cell_radius: float = _spec(14.0, "cell radius in px")
    effect: float = _spec(1.0, "phenotype strength of the compounds")
    null_compounds: int = _spec(1, "compounds with no effect at all")
    # A per-well phenotype offset (seeding density, edge effects, pipetting): what makes sites of one well
    # near-duplicates, and an image-level split leak. 0 = wells of one compound are alike.
    well_effect: float = _spec(0.0, "per-well phenotype offset (makes sites of a well alike)")
    seed: int = _spec(0, "random seed")


def compound_table(spec: SynthSpec) -> pd.DataFrame:
    """Compounds with their hidden phenotype vectors; the last ``null_compounds`` have effect 0."""
    rng = np.random.default_rng(spec.seed)
    rows = []
    for i in range(spec.n_compounds):
        direction = rng.normal(size=6)
        direction /= np.linalg.norm(direction)
        effect = 0.0 if i >= spec.n_compounds - spec.null_compounds else spec.effect * rng.uniform(1.0, 2.0)
        rows.append(
            {
                "broad_sample": f"BRD-SYN{i:05d}",
                "pert_iname": f"compound-{i:02d}",
                "target": f"GENE{i % max(1, spec.n_compounds // 2)}",
                "effect": effect,
                "phenotype": direction * effect,
            }
        )
    return pd.DataFrame(rows)


def _layout(spec: SynthSpec, compounds: pd.DataFrame) -> pd.DataFrame:
    assignments = [("", "DMSO", "")] * spec.control_wells
    for _, c in compounds.iterrows():
        assignments += [(c["broad_sample"], c["pert_iname"], c["target"])] * spec.wells_per_compound
    rng = np.random.default_rng(spec.seed + 1)
    order = rng.permutation(len(assignments))
    n_cols = 12
    rows = []
    for slot, index in enumerate(order):
        broad, name, target = assignments[index]
        rows.append(
            {
                "row": slot // n_cols + 1,
                "col": slot % n_cols + 1,
                "broad_sample": broad,
                "pert_iname": name,
                "target": target,
            }
        )
    return pd.DataFrame(rows)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = ndi.gaussian_filter(rng.normal(size=shape), sigma)
    return noise / (noise.std() + 1e-8)


def render_field(
    rng: np.random.Generator, spec: SynthSpec, phenotype: np.ndarray, gain: float, gradient: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One field: a ``(5, H, W)`` uint16 stack and its ground-truth cell labels."""
    size = spec.size
    size_f = np.exp(0.18 * phenotype[0])
    elong = 1.0 + 0.35 * abs(phenotype[1])
    intensity_f = np.exp(0.35 * phenotype[2])
    texture_sigma = 1.5 * np.exp(0.4 * phenotype[3])
    count = max(3, round(spec.cells_per_image * np.exp(0.25 * phenotype[4]) * rng.uniform(0.85, 1.15)))
    nucleus_ratio = 0.45 * np.exp(0.15 * phenotype[5])

    radius = spec.cell_radius * size_f
    centres: list[np.ndarray] = []
    for _ in range(count * 30):
        if len(centres) >= count:
            break
        c = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
        if all(np.linalg.norm(c - o) > 1.6 * radius for o in centres):
            centres.append(c)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.zeros((size, size), np.int32)
    cyto = np.zeros((size, size), np.float32)
    nuclei = np.zeros((size, size), np.float32)
    er = np.zeros((size, size), np.float32)
    best = np.full((size, size), np.inf, np.float32)
    for label, (cy, cx) in enumerate(centres, start=1):
        r = radius * rng.uniform(0.85, 1.15)
        theta = rng.uniform(0, np.pi)
        a, b = r * np.sqrt(elong), r / np.sqrt(elong)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        wobble = 1 + 0.08 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi))
        dist = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wobble
        inside = (dist < 1.0) & (dist < best)
        best[inside] = dist[inside]
        labels[inside] = label
        cell_gain = intensity_f * rng.uniform(0.8, 1.2)
        cyto[inside] = cell_gain * (1.0 - 0.4 * dist[inside])
        er[inside] = cell_gain * np.exp(-((dist[inside] - 0.75) ** 2) / 0.02)
        nuc = dist < nucleus_ratio
        nuclei[nuc] = rng.uniform(0.8, 1.2) * (1.0 - 0.3 * (dist[nuc] / nucleus_ratio) ** 2)
    texture = 1 + 0.35 * _smooth_noise(rng, (size, size), texture_sigma)
    background = 0.04
    stack = np.empty((5, size, size), np.float32)
    stack[0] = cyto * texture * 0.9 + background  # Mito
    stack[1] = cyto * (1 + 0.25 * _smooth_noise(rng, (size, size), 3.0)) + background  # AGP
    stack[2] = cyto * 0.8 * texture + nuclei * 0.3 + background  # RNA
    stack[3] = er + background  # ER
    stack[4] = nuclei * 1.2 + background * 0.5  # DNA
    stack *= gain * gradient[None]
    stack = ndi.gaussian_filter(stack, sigma=(0, 0.8, 0.8))
    counts = rng.poisson(np.clip(stack, 0, None) * 2000.0)
    return np.clip(counts + 100, 0, 65535).astype(np.uint16), labels


def make_plates(out: str | Path, spec: SynthSpec | None = None) -> pd.DataFrame:
    """Write synthetic plates under ``out``; returns the truth table (one row per image)."""
    spec = spec or SynthSpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    compounds = compound_table(spec)
    layout = _layout(spec, compounds)
    effect_by_sample = dict(zip(compounds["broad_sample"], compounds["effect"], strict=True))
    phenotype_by_sample = dict(zip(compounds["broad_sample"], compounds["phenotype"], strict=True))
    truth, load_rows, meta_rows = [], [], []
    yy, xx = np.mgrid[0 : spec.size, 0 : spec.size] / spec.size
    for p in range(spec.plates):
        plate = f"SYN{p + 1:04d}"
        images = out / plate / "Images"
        images.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([spec.seed, p])
        gain = float(rng.uniform(0.8, 1.25))
        tilt = rng.uniform(-0.25, 0.25, size=2)
        gradient = (1 + tilt[0] * (yy - 0.5) + tilt[1] * (xx - 0.5)).astype(np.float32)
        for _, well in layout.iterrows():
            phenotype = phenotype_by_sample.get(well["broad_sample"], np.zeros(6))
            if spec.well_effect:
                well_rng = np.random.default_rng([spec.seed, p, int(well["row"]), int(well["col"]), 7])
                phenotype = phenotype + spec.well_effect * well_rng.normal(size=6)
            for site in range(1, spec.sites + 1):
                core = core_file_name(int(well["row"]), int(well["col"]), site)
                field_rng = np.random.default_rng([spec.seed, p, int(well["row"]), int(well["col"]), site])
                stack, labels = render_field(field_rng, spec, phenotype, gain, gradient)
                load_row = {
                    "Metadata_Plate": plate,
                    "Metadata_Well": well_name(int(well["row"]), int(well["col"])),
                    "Metadata_Site": site,
                }
                for c, name in CHANNELS.items():
                    file_name = f"{core}p01-ch{c}sk1fk1fl1.tiff"
                    tifffile.imwrite(images / file_name, stack[c - 1], compression="zlib")
                    load_row[f"FileName_Orig{name}"] = file_name
                    load_row[f"PathName_Orig{name}"] = f"{plate}/Images"
                load_row["Metadata_pert_iname"] = well["pert_iname"]
                load_row["Metadata_target"] = well["target"]
                load_row[SYNTHETIC_COLUMN] = "yes"  # every report built on these plates says they are synthetic
                load_rows.append(load_row)
                meta_rows.append(
                    {
                        "FileName_OrigRNA": f"{core}_median_aggregated.tiff",
                        "Metadata_Plate": plate,
                        "Metadata_Well": load_row["Metadata_Well"],
                        "Metadata_Site": site,
                        "Metadata_target": well["target"] or np.nan,
                        "Metadata_pert_iname": well["pert_iname"],
                        "Metadata_cell_line": "SYNTH",
                    }
                )
                truth.append(
                    {
                        "plate": plate,
                        "well": load_row["Metadata_Well"],
                        "site": site,
                        "CoreFileName": core,
                        "pert_iname": well["pert_iname"],
                        "effect": effect_by_sample.get(well["broad_sample"], 0.0),
                        "true_cells": int(labels.max()),
                    }
                )
    platemap = pd.DataFrame(
        {
            "well_position": [well_name(int(r), int(c)) for r, c in zip(layout["row"], layout["col"], strict=True)],
            "broad_sample": layout["broad_sample"].replace("", np.nan),
            "solvent": "DMSO",
        }
    )
    platemap.to_csv(out / "platemap.tsv", sep="\t", index=False)
    compounds[["broad_sample", "pert_iname", "target"]].to_csv(out / "compound_metadata.tsv", sep="\t", index=False)
    pd.DataFrame(meta_rows).to_csv(out / "metadata.csv", index=False)
    pd.DataFrame(load_rows).to_csv(out / "load_data.csv", index=False)
    truth_table = pd.DataFrame(truth)
    truth_table.to_csv(out / "truth.csv", index=False)
    return truth_table
