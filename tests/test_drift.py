"""The TRL drift detector (trl_ext.drift): the stored fingerprints match the installed TRL, and each kind of drift
is caught and named. Source parsing only: no model, no torch, a few seconds."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_ext import drift

STORED = drift.load_fingerprint_files()


@pytest.fixture(scope="module")
def source() -> drift.TrlSource:
    return drift.TrlSource()


@pytest.fixture(scope="module")
def inventory(source) -> drift.Inventory:
    return drift.scan_inventory(source=source)


@pytest.fixture()
def trl_copy(tmp_path, source) -> Path:
    """A copy of the installed TRL package to edit: what a new TRL release would be."""
    root = tmp_path / "trl"
    shutil.copytree(source.root, root, ignore=shutil.ignore_patterns("__pycache__", "experimental"))
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"expected one {old!r} in {path}"
    path.write_text(text.replace(old, new))


def _named(result: drift.CheckResult) -> set[str]:
    return {finding.symbol for finding in result.findings}


# (a) THE drift test ------------------------------------------------------------------------------------------------
def test_installed_trl_matches_stored_fingerprints():
    """Fails naming each TRL symbol trl-ext touches whose fingerprint differs from the reviewed one.

    If this fails after a TRL upgrade: follow docs/maintaining.md (review each named symbol's diff in TRL, adapt
    trl-ext, then `python -m trl_ext.drift record`)."""
    result = drift.check()
    assert result.trl_version in STORED, f"no fingerprints recorded for TRL {result.trl_version}"
    assert result.ok, "TRL drifted from the reviewed fingerprints:\n" + result.format()


# (b) a changed stored fingerprint is named ------------------------------------------------------------------------
def test_altered_stored_fingerprint_names_exactly_that_symbol(tmp_path, source, inventory):
    version = source.version()
    data = json.loads((drift.FINGERPRINTS_DIR / f"{version}.json").read_text())
    data["symbols"]["GRPOTrainer._compute_loss"]["body_hash"] = "0" * 64
    (tmp_path / f"{version}.json").write_text(json.dumps(data))

    result = drift.check(fingerprints_dir=tmp_path, inventory=inventory)

    assert _named(result) == {"GRPOTrainer._compute_loss"}
    (finding,) = result.findings
    assert finding.kind == "changed" and "body changed: yes" in finding.detail
    assert "signature unchanged" in finding.detail


# (c) a changed TRL source is named ---------------------------------------------------------------------------------
def test_edited_compute_loss_body_is_named(trl_copy, source, capsys):
    _edit(
        trl_copy / "trainer" / "grpo_trainer.py",
        "    def _compute_loss(self, model, inputs):\n",
        "    def _compute_loss(self, model, inputs):\n        inputs = dict(inputs)\n",
    )
    status = drift.main(["check", "--trl-root", str(trl_copy), "--version", source.version()])
    lines = capsys.readouterr().out.splitlines()

    assert status == 1
    named = [line for line in lines if line.split(":")[0] in ("CHANGED", "NOT REVIEWED", "GONE", "ATTRIBUTE")]
    assert named == [
        "CHANGED: GRPOTrainer._compute_loss: signature unchanged (self, model, inputs); body changed: yes"
    ]
    assert any(line.strip().startswith("overrides at trl_ext/trainers/base.py:") for line in lines)
    assert lines[-1].startswith("1 difference(s).")


def test_new_positional_parameter_is_named(trl_copy, source, inventory):
    _edit(
        trl_copy / "trainer" / "grpo_trainer.py",
        "def _generate_single_turn(self, prompt_ids, images,",
        "def _generate_single_turn(self, prompt_ids, prompt_mask, images,",
    )
    result = drift.check(trl_copy, source.version(), inventory=inventory)

    assert _named(result) == {"GRPOTrainer._generate_single_turn"}
    detail = result.findings[0].detail
    assert (
        "signature (self, prompt_ids, images, " in detail and "-> (self, prompt_ids, prompt_mask, images, " in detail
    )
    assert "body changed: no" in detail


def test_comments_and_formatting_do_not_count(trl_copy, source, inventory):
    """Only the AST counts: a comment, a docstring edit and re-wrapping leave the fingerprint alone."""
    path = trl_copy / "trainer" / "grpo_trainer.py"
    _edit(
        path,
        "    def _compute_loss(self, model, inputs):\n",
        "    def _compute_loss(\n        self, model, inputs\n    ):  # re-wrapped\n        # a comment\n",
    )
    _edit(path, "    def get_high_entropy_mask(", "    # drift test\n    def get_high_entropy_mask(")
    result = drift.check(trl_copy, source.version(), inventory=inventory)
    assert result.ok, result.format()


def test_removed_batch_key_and_attribute_are_named(trl_copy, source, inventory):
    # TRL stops setting `top_entropy_quantile` (trl-ext reads it) and stops returning `num_items_in_batch`.
    path = trl_copy / "trainer" / "grpo_trainer.py"
    _edit(path, "self.top_entropy_quantile = ", "top_entropy_quantile = ")
    _edit(path, '"num_items_in_batch":', '"items_in_batch":')
    result = drift.check(trl_copy, source.version(), inventory=inventory)
    kinds = {(f.kind, f.symbol) for f in result.findings}
    assert ("attribute", "GRPOTrainer.top_entropy_quantile") in kinds
    assert ("batch keys", "num_items_in_batch") in kinds
    assert "GRPOTrainer._generate_and_score_completions" in _named(result)  # its body changed as well


def test_unrecorded_version_is_compared_with_nearest(capsys):
    """A TRL version without stored fingerprints fails `check` (here via `report`, which always exits 0)."""
    assert drift.main(["report", "--version", "99.0.0"]) == 0
    out = capsys.readouterr().out
    newest = max(STORED, key=drift.checking._version_key)
    assert "VERSION: TRL 99.0.0: fingerprints for TRL 99.0.0 are not recorded; compared against the nearest " in out
    assert f"recorded version {newest}" in out
    if importlib.metadata.version("trl") == newest:  # the installed TRL is the newest recorded: nothing else differs
        assert "\n1 difference(s)." in out
    assert drift.nearest_version("1.15.3", ["1.15.0", "1.16.0"]) == "1.15.0"
    assert drift.nearest_version("1.14.0", ["1.15.0", "1.16.0"]) == "1.15.0"


# (d) the inventory is generated from the code ---------------------------------------------------------------------
def test_inventory_picks_up_a_new_touch(tmp_path, source, inventory):
    package = tmp_path / "trl_ext"
    shutil.copytree(drift.PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__", "trl_fingerprints"))
    (package / "trainers" / "extra.py").write_text(
        "from trl.trainer.utils import selective_log_softmax\n"
        "from trl_ext.trainers.bnpo import BNPOTrainer\n\n\n"
        "class ExtraTrainer(BNPOTrainer):\n"
        "    def _prepare_inputs(self, generation_batch):\n"
        "        self._tool_call_loop(None, None, None, None, None, None, None)\n"
        "        return super()._prepare_inputs(generation_batch)\n"
        "\n"
        "    def helper(self):\n"
        "        self.rollout_func = None\n"
        "        return self.temperature, self._tokenize_prompts([])\n"
    )
    before = inventory
    after = drift.scan_inventory(package, source)
    site = "trl_ext/trainers/extra.py"

    assert after.touches["overrides"]["GRPOTrainer._prepare_inputs"] == [f"{site}:6"]
    assert set(after.touches["calls"]["GRPOTrainer._tool_call_loop"]) == {f"{site}:7"}
    assert after.touches["calls"]["GRPOTrainer._prepare_inputs"] == [f"{site}:8"]
    assert after.touches["calls"]["GRPOTrainer._tokenize_prompts"] == [f"{site}:12"]
    assert after.touches["imports"]["trl.trainer.utils:selective_log_softmax"] == [f"{site}:1"]
    assert f"{site}:11" in after.touches["writes"]["write:GRPOTrainer.rollout_func"]
    assert after.touches["attributes"]["GRPOTrainer.temperature"] == [f"{site}:12"]
    new = after.symbols() - before.symbols()
    assert new == {
        "GRPOTrainer._prepare_inputs",
        "GRPOTrainer._tool_call_loop",
        "GRPOTrainer._tokenize_prompts",
        "trl.trainer.utils:selective_log_softmax",
    }
    # ... and the check refuses them until they are reviewed and recorded.
    result = drift.check(package_root=package)
    assert {f.symbol for f in result.findings if f.kind == "not reviewed"} == new | {"GRPOTrainer.temperature"}


def test_inventory_sees_mixins_method_references_and_compat_reads(tmp_path, source):
    # The touches that do not look like `self.method(...)` in a GRPOTrainer subclass: a mixin's override, a TRL method
    # passed as a value (compat.call_accepted), a method taken by getattr, and an attribute read via trainer_attr.
    package = tmp_path / "trl_ext"
    shutil.copytree(drift.PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__", "trl_fingerprints"))
    (package / "trainers" / "mixed.py").write_text(
        "from trl_ext import compat\n"
        "from trl_ext.trainers.bnpo import BNPOTrainer\n\n\n"
        "class SomeMixin:\n"
        "    def _tokenize_prompts(self, prompts):\n"
        "        compat.call_accepted(self._tool_call_loop, None)\n"
        "        return getattr(self, '_get_tool_suffix_ids', None), compat.trainer_attr(self, 'temperature', 1.0)\n"
        "\n\n"
        "class MixedTrainer(SomeMixin, BNPOTrainer):\n"
        "    pass\n"
    )
    after = drift.scan_inventory(package, source)
    site = "trl_ext/trainers/mixed.py"
    assert after.touches["overrides"]["GRPOTrainer._tokenize_prompts"] == [f"{site}:6"]
    assert after.touches["calls"]["GRPOTrainer._tool_call_loop"] == [f"{site}:7"]
    assert after.touches["calls"]["GRPOTrainer._get_tool_suffix_ids"] == [f"{site}:8"]
    assert f"{site}:8" in after.touches["attributes"]["GRPOTrainer.temperature"]


def test_inventory_cli(capsys, inventory):
    assert drift.main(["inventory", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["counts"] == inventory.counts()
    assert payload["touches"] == inventory.sorted()
    assert "GRPOTrainer._compute_loss" in payload["touches"]["overrides"]
    text = drift.format_inventory(inventory)
    for category, count in inventory.counts().items():
        assert f"\n{category} ({count})\n" in text


# (e) no touch slips past a stored file ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", sorted(STORED))
def test_every_inventory_touch_is_in_every_stored_file(version, inventory):
    data = STORED[version]
    assert data["trl_version"] == version
    missing = sorted(inventory.symbols() - set(data["symbols"]))
    missing += sorted(set(inventory.touches["attributes"]) - set(data["attributes"]))
    missing += sorted(set(inventory.touches["batch_keys"]) - set(data["batch_keys"]))
    assert not missing, f"not reviewed for TRL {version}: {missing}; run `python -m trl_ext.drift record` for it"


def test_supported_versions_are_recorded():
    assert {"1.15.0", "1.16.0"} <= set(STORED)


def test_record_is_reproducible(tmp_path, source):
    """`record` rewrites the stored file byte for byte: the JSON is generated, never hand-edited."""
    version = source.version()
    path, _ = drift.record(version=version, out=tmp_path / "out.json")
    assert path.read_text() == (drift.FINGERPRINTS_DIR / f"{version}.json").read_text()


def test_import_does_not_load_torch_or_trl():
    code = "import sys, trl_ext.drift; print(sorted({'torch', 'trl'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
