"""Recording reviewed fingerprints and checking the installed TRL against them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl_ext.drift.ast_tools import (
    _sha256,
)
from trl_ext.drift.constants import (
    BATCH_METHOD,
    CATEGORIES,
    FINGERPRINTS_DIR,
    RECORD_COMMAND,
    TRAINER,
    TRL_CLASSES,
)
from trl_ext.drift.inventory import (
    Inventory,
    load_fingerprint_files,
    scan_inventory,
)
from trl_ext.drift.trl_source import (
    TrlSource,
)


# ----------------------------------------------------------------------------------------------------------------
# Recording and checking
# ----------------------------------------------------------------------------------------------------------------
def build_record(inventory: Inventory, source: TrlSource, version: str) -> dict[str, Any]:
    """The fingerprint file content for ``inventory`` against ``source`` (see :func:`record`): ``symbols`` (the
    fingerprint of each override, call, import and write), ``attributes`` (the attribute reads reviewed), ``batch_keys``
    (every key TRL's batch dict has) and ``attribute_sets`` (every attribute each TRL class assigns; informational)."""
    current_attributes = {f"{cls}.{a}" for cls in TRL_CLASSES for a in source.attributes(cls)}
    symbols = {}
    for symbol in sorted(inventory.symbols()):
        symbols[symbol] = dict(sorted(source.fingerprint(symbol).items()))
    attribute_sets = {}
    for cls in sorted(TRL_CLASSES):
        names = sorted(source.attributes(cls))
        attribute_sets[cls] = {"names": names, "sha256": _sha256(names)}
    return {
        "trl_version": version,
        "generated_by": RECORD_COMMAND,
        "symbols": symbols,
        "attributes": sorted(a for a in inventory.touches["attributes"] if a in current_attributes),
        "batch_keys": sorted(source.batch_key_values()),
        "attribute_sets": attribute_sets,
    }


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def nearest_version(version: str, available: Iterable[str]) -> str | None:
    """The stored version to compare an unrecorded one against: the newest at or below it, else the oldest."""
    ordered = sorted(available, key=_version_key)
    below = [v for v in ordered if _version_key(v) <= _version_key(version)]
    return below[-1] if below else (ordered[0] if ordered else None)


@dataclass
class Finding:
    """One difference between the stored fingerprints and the TRL being checked."""

    kind: str  # changed | not reviewed | gone | attribute | batch keys | version
    symbol: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.upper()}: {self.symbol}: {self.detail}"


@dataclass
class CheckResult:
    """What :func:`check` found; ``ok`` when nothing differs."""

    trl_version: str
    trl_root: Path
    stored_version: str | None
    stored_path: Path | None
    inventory: Inventory
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def format(self) -> str:
        counts = self.inventory.counts()
        if self.ok:
            return (
                f"trl-ext drift: OK: TRL {self.trl_version} matches the fingerprints recorded in "
                f"{self.stored_path.name if self.stored_path else '?'} ({sum(counts.values())} touches: "
                + ", ".join(f"{counts[c]} {c}" for c in CATEGORIES)
                + ")"
                + "".join(f"\nnote: {note}" for note in self.notes)
            )
        lines = [f"trl-ext drift: TRL {self.trl_version} at {self.trl_root}"]
        lines.append(f"compared against: {self.stored_path if self.stored_path else 'no stored fingerprints'}")
        sites = self.inventory.sorted()
        for finding in self.findings:
            lines.append(str(finding))
            for category in CATEGORIES:
                if finding.symbol in sites[category]:
                    where = sites[category][finding.symbol]
                    more = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
                    lines.append(f"    {category} at {', '.join(where[:3])}{more}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(
            f"{len(self.findings)} difference(s). Review each in TRL's source (docs/maintaining.md), adapt trl-ext, "
            f"then record the reviewed fingerprints: {RECORD_COMMAND}"
        )
        return "\n".join(lines)


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A one-line account of how a fingerprint changed: signature old -> new, body changed yes/no, and so on."""
    if old.get("kind") != new.get("kind"):
        if new.get("kind") == "missing":
            return f"gone from TRL (was {old.get('kind')} in {old.get('defined_in', '?')})"
        return f"kind {old.get('kind')} -> {new.get('kind')}"
    parts = []
    if "signature" in old or "signature" in new:
        if old.get("signature") != new.get("signature"):
            parts.append(f"signature {old.get('signature')} -> {new.get('signature')}")
        else:
            parts.append(f"signature unchanged {new.get('signature')}")
    if "body_hash" in old or "body_hash" in new:
        parts.append(f"body changed: {'yes' if old.get('body_hash') != new.get('body_hash') else 'no'}")
    for key in sorted(set(old) | set(new)):
        if key in ("kind", "signature", "body_hash") or old.get(key) == new.get(key):
            continue
        before, after = old.get(key), new.get(key)
        if isinstance(before, list) and isinstance(after, list):
            added = sorted(set(after) - set(before))
            removed = sorted(set(before) - set(after))
            parts.append(f"{key}: " + " ".join([*(f"+{a}" for a in added), *(f"-{r}" for r in removed)]))
        else:
            parts.append(f"{key} {before!r} -> {after!r}")
    return "; ".join(parts)


def compare(inventory: Inventory, stored: dict[str, Any], source: TrlSource) -> tuple[list[Finding], list[str]]:
    """Findings (each fails the check) and notes (informational) for ``inventory`` against ``stored`` fingerprints
    and the TRL in ``source``."""
    findings: list[Finding] = []
    notes: list[str] = []
    symbols = stored.get("symbols", {})
    wanted = inventory.symbols()
    for symbol in sorted(wanted | set(symbols)):
        current = source.fingerprint(symbol)
        if symbol in wanted:
            if symbol not in symbols:
                findings.append(Finding("not reviewed", symbol, f"not in the stored fingerprints (now: {current})"))
            elif current != symbols[symbol]:
                findings.append(Finding("changed", symbol, describe_change(symbols[symbol], current)))
        elif current.get("kind") == "missing" and symbols[symbol].get("kind") != "missing":
            findings.append(Finding("gone", symbol, "a stored symbol that TRL no longer defines"))
        else:
            notes.append(f"{symbol} is stored but trl-ext no longer touches it ({RECORD_COMMAND} drops it)")
    current_attributes = {f"{cls}.{a}" for cls in TRL_CLASSES for a in source.attributes(cls)}
    reviewed_attributes = set(stored.get("attributes", []))
    for attribute in sorted(inventory.touches["attributes"]):
        if attribute not in current_attributes:
            findings.append(Finding("attribute", attribute, "read by trl-ext, no longer set by TRL"))
        elif attribute not in reviewed_attributes:
            findings.append(Finding("not reviewed", attribute, "attribute read not in the stored fingerprints"))
    current_keys = set(source.batch_key_values())
    stored_keys = set(stored.get("batch_keys", []))
    for key in sorted(inventory.touches["batch_keys"]):
        if key not in current_keys:
            findings.append(Finding("batch keys", key, "read by trl-ext, no longer in TRL's batch dict"))
    if current_keys != stored_keys:
        added, removed = sorted(current_keys - stored_keys), sorted(stored_keys - current_keys)
        change = " ".join([*(f"+{k}" for k in added), *(f"-{k}" for k in removed)])
        findings.append(Finding("batch keys", f"{TRAINER}.{BATCH_METHOD}", f"returned keys changed: {change}"))
    for cls, recorded in stored.get("attribute_sets", {}).items():
        now = set(source.attributes(cls)) if cls in TRL_CLASSES else set()
        before = set(recorded.get("names", []))
        if now != before:
            change = " ".join([*(f"+{a}" for a in sorted(now - before)), *(f"-{a}" for a in sorted(before - now))])
            notes.append(f"{cls} now assigns a different attribute set: {change}")
    return findings, notes


def _resolve_version(source: TrlSource, version: str | None) -> str:
    found = version or source.version()
    if not found:
        raise ValueError(f"cannot tell the TRL version of {source.root}; pass --version")
    return found


def check(
    trl_root: Path | str | None = None,
    version: str | None = None,
    package_root: Path | str | None = None,
    fingerprints_dir: Path | str | None = None,
    inventory: Inventory | None = None,
) -> CheckResult:
    """Compare the TRL under ``trl_root`` (default: the installed one) with the fingerprints stored for its version
    (or, when none are stored, for the nearest stored version, which is itself a finding).

    ``inventory``: one already scanned (:func:`scan_inventory`) to reuse; by default ``package_root`` is scanned.
    """
    source = TrlSource(trl_root)
    trl_version = _resolve_version(source, version)
    directory = Path(fingerprints_dir) if fingerprints_dir is not None else FINGERPRINTS_DIR
    if inventory is None:
        inventory = scan_inventory(package_root, source, directory)
    stored_files = load_fingerprint_files(directory)
    stored_version = trl_version if trl_version in stored_files else nearest_version(trl_version, stored_files)
    result = CheckResult(
        trl_version,
        source.root,
        stored_version,
        directory / f"{stored_version}.json" if stored_version else None,
        inventory,
    )
    if stored_version != trl_version:
        result.findings.append(
            Finding(
                "version",
                f"TRL {trl_version}",
                f"fingerprints for TRL {trl_version} are not recorded"
                + (f"; compared against the nearest recorded version {stored_version}" if stored_version else "")
                + f". Review the differences, then `{RECORD_COMMAND}`",
            )
        )
    stored = stored_files.get(stored_version, {}) if stored_version else {}
    findings, notes = compare(inventory, stored, source)
    result.findings.extend(findings)
    result.notes.extend(notes)
    return result


def record(
    trl_root: Path | str | None = None,
    version: str | None = None,
    out: Path | str | None = None,
    package_root: Path | str | None = None,
    fingerprints_dir: Path | str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the fingerprints of the current inventory for the TRL under ``trl_root``: the reviewed state that
    :func:`check` compares against. Returns the path and the content."""
    source = TrlSource(trl_root)
    trl_version = _resolve_version(source, version)
    directory = Path(fingerprints_dir) if fingerprints_dir is not None else FINGERPRINTS_DIR
    inventory = scan_inventory(package_root, source, directory)
    data = build_record(inventory, source, trl_version)
    path = Path(out) if out is not None else directory / f"{trl_version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump(data), encoding="utf-8")
    return path, data
