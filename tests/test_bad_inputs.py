"""Bad inputs handled badly before (issue 27): each is reproduced here and must fail with a message naming the input
(before training where it can be checked then), or warn where the input is legal."""

from __future__ import annotations

import pytest
import yaml

from trl_ext.training import TrainScriptArguments, make_train_parser, resolve_reward_funcs


# -- reward_funcs written as one name ----------------------------------------------------------------------------------
def test_a_single_reward_name_in_yaml_is_a_list_of_one(tmp_path):
    # Before, the string was iterated: "reward_funcs: cannot resolve 't'".
    from trl.rewards import think_format_reward

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"trainer": "grpo", "output_dir": str(tmp_path), "use_cpu": True, "reward_funcs": "think_format_reward"}
        )
    )
    script_args, *_ = make_train_parser("grpo").parse_args_and_config(["--config", str(recipe)])
    assert script_args.reward_funcs == "think_format_reward"  # what TRL's parser hands over
    assert resolve_reward_funcs(script_args, None) == [think_format_reward]


def test_reward_funcs_of_another_type_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"^reward_funcs: expected a name or a list of names .* got 3"):
        resolve_reward_funcs(TrainScriptArguments(reward_funcs=3), None)
