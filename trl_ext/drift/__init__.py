"""Drift detector for the TRL internals that trl-ext touches.

trl-ext subclasses ``trl.GRPOTrainer`` and reaches into its private methods, attributes and batch dict. TRL changes
those between minor releases without notice, and a changed body that we wrap or re-implement breaks us silently
(parity drifts, a patch stops applying). This module makes that contact surface explicit and checkable:

* :func:`scan_inventory` **generates** the inventory from trl-ext's own source (``ast``, nothing hand-kept), so a new
  override, call, import, attribute read, batch-key read or patch shows up without anyone remembering to list it.
* :class:`TrlSource` **fingerprints** each touched TRL symbol from TRL's source files (never importing TRL): a
  method's signature and a hash of its normalised body (docstrings, comments and formatting do not count).
* ``trl_ext/trl_fingerprints/<version>.json`` stores the fingerprints that were reviewed for each supported TRL
  version; :func:`check` compares the installed (or a given) TRL against them.

CLI: ``python -m trl_ext.drift {inventory,check,report,record}``; see ``docs/maintaining.md``.

Only the standard library is imported here: the check runs before (and without) torch and TRL being importable.
"""

from trl_ext.drift.checking import CheckResult, Finding, check, nearest_version, record
from trl_ext.drift.cli import format_inventory, main
from trl_ext.drift.constants import CATEGORIES, FINGERPRINTS_DIR, PACKAGE_ROOT
from trl_ext.drift.inventory import Inventory, load_fingerprint_files, scan_inventory
from trl_ext.drift.trl_source import TrlSource, default_trl_root

__all__ = [
    "CATEGORIES",
    "FINGERPRINTS_DIR",
    "PACKAGE_ROOT",
    "CheckResult",
    "Finding",
    "Inventory",
    "TrlSource",
    "check",
    "default_trl_root",
    "format_inventory",
    "load_fingerprint_files",
    "main",
    "nearest_version",
    "record",
    "scan_inventory",
]
