"""Pre-registrations: one module per experiment, committed before the experiment's final run.

Each module states the design, the arms, the pre-named primary metric, the seeds, the minimum effect that would
count and the thresholds of its controls as constants, and holds the function that turns the experiment's stored
results into its verdict (with :mod:`trl_ext.compare.evidence`). The experiment script imports it, so the verdict in
the results JSON is computed by the code that was committed first; ``git log --follow`` on a module shows that its
commit precedes the results commit. A threshold changed after a result was seen is recorded in ``AMENDMENTS``.
"""
