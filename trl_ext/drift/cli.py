"""``python -m trl_ext.drift {inventory,check,report,record}``."""

from __future__ import annotations

import argparse
import json
import sys

from trl_ext.drift.checking import (
    check,
    record,
)
from trl_ext.drift.inventory import (
    Inventory,
    scan_inventory,
)
from trl_ext.drift.trl_source import (
    TrlSource,
)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def format_inventory(inventory: Inventory, max_sites: int = 3) -> str:
    """The inventory grouped by category with counts (what the docs quote as the size of the contact surface)."""
    counts = inventory.counts()
    lines = [
        f"trl-ext contact surface with TRL, generated from {inventory.root}: {sum(counts.values())} touches",
    ]
    for category, symbols in inventory.sorted().items():
        lines.append(f"\n{category} ({counts[category]})")
        width = max((len(s) for s in symbols), default=0)
        for symbol, sites in symbols.items():
            more = f" (+{len(sites) - max_sites} more)" if len(sites) > max_sites else ""
            lines.append(f"  {symbol:<{width}}  {', '.join(sites[:max_sites])}{more}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trl_ext.drift",
        description="Inventory of the TRL internals trl-ext touches, and a check of their fingerprints.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--trl-root", help="TRL's package directory (default: the installed trl, not imported)")
        sub.add_argument("--package-root", help=argparse.SUPPRESS)
        sub.add_argument("--fingerprints-dir", help=argparse.SUPPRESS)

    sub = commands.add_parser("inventory", help="list what trl-ext touches in TRL, by category, with counts")
    common(sub)
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("check", "compare TRL with the stored fingerprints; exit 1 on any difference"),
        ("report", "as check, but always exit 0 (informational probe of a newer TRL)"),
    ):
        sub = commands.add_parser(name, help=text)
        common(sub)
        sub.add_argument("--version", help="TRL version to compare as (default: read from TRL's files)")
    sub = commands.add_parser("record", help="write the fingerprints of the current inventory for this TRL version")
    common(sub)
    sub.add_argument("--version", help="TRL version to record as (default: read from TRL's files)")
    sub.add_argument("--out", help="output file (default: trl_ext/trl_fingerprints/<version>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m trl_ext.drift``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "inventory":
            inventory = scan_inventory(args.package_root, TrlSource(args.trl_root), args.fingerprints_dir)
            if args.json:
                payload = {"counts": inventory.counts(), "touches": inventory.sorted()}
                print(json.dumps(payload, indent=2))
            else:
                print(format_inventory(inventory))
            return 0
        if args.command in ("check", "report"):
            result = check(args.trl_root, args.version, args.package_root, args.fingerprints_dir)
            print(result.format())
            return 0 if result.ok or args.command == "report" else 1
        path, data = record(args.trl_root, args.version, args.out, args.package_root, args.fingerprints_dir)
        missing = sorted(s for s, fp in data["symbols"].items() if fp.get("kind") == "missing")
        print(f"wrote {path}: {len(data['symbols'])} symbols, TRL {data['trl_version']}")
        for symbol in missing:
            print(f"warning: {symbol} does not exist in this TRL (recorded as missing)")
        return 0
    except (FileNotFoundError, ValueError, SyntaxError) as exc:
        print(f"trl-ext drift: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
