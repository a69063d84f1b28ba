"""Reports: the report of a run (``run_report``: what ran, every accuracy beside its baselines, where the
predicting model errs, the split, training, illumination and segmentation), the prediction report of new treatments
(``treatment_report``), the figures both draw (``figures``: Figure 1, curves, confusion matrix, treatment map,
similarity heat map, cell strips) and the pieces of their self-contained HTML pages (``htmlpage``).

May import: ``learning``, ``evaluation``, ``profiling``, ``segmentation``, ``features``, ``input``, ``config``,
``errors``.
"""
