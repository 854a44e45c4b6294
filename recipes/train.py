"""One training script for every trl-ext trainer.

    accelerate launch recipes/train.py --config recipes/<trainer>/<task>.yaml
    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml recipes/train.py --config ...

The YAML names the trainer (``trainer: bnpo``); ``--trainer NAME`` overrides it. Every field of the trainer's
config, of TRL's ``ModelConfig`` (``--use_peft``, ``--load_in_4bit``, ...) and of ``TrainScriptArguments`` can be
set in the YAML or on the command line; ``--help`` after ``--trainer NAME`` lists them.
"""

import sys

from trl_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
