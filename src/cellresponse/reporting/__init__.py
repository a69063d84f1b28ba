"""Reports: figures (Figure 1, curves, confusion matrix, treatment map, similarity heat map, cell strips), the pieces
of the self-contained HTML pages (``htmlpage``) and the prediction report of new treatments (``treatment_report``).

May import: ``profiling``, ``features``, ``input``, ``config``, ``errors``.
"""
