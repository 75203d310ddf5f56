"""The Python API, for notebooks and scripts: the CLI's verbs as functions.

    import pretrainer.api as pt

    cfg = pt.config("fashion_ae", ["trainer.epochs=3", "data.labeled_fraction=0.05"])
    pre = pt.run("pretrain", cfg)                   # -> the run directory (a Path)
    ft = pt.run("finetune", cfg, run=pre)
    ev = pt.run("evaluate", cfg, run=ft)
    result = pt.run("pipeline", "fashion_ae", ["trainer.epochs=1"])   # a name works too

Configs compose exactly as on the command line (same files, overrides and checks);
a bad override raises `pretrainer.errors.ConfigError` with the CLI's one-line message.
TensorFlow is imported with its start-up chatter muted, as the CLI does; set
PRETRAINER_VERBOSE_TF=1 to see it.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional, Sequence, Union

from pretrainer.config import DEFAULT_EXPERIMENT, Config, compose

STAGES = ("collect", "pretrain", "finetune", "evaluate", "deploy", "pipeline", "study",
          "predict", "embed")


def config(name: str = DEFAULT_EXPERIMENT, overrides: Sequence[str] = (),
           config_dir: Optional[str] = None) -> Config:
    """The resolved, validated config of experiment `name` with Hydra `overrides`."""
    return compose(name, list(overrides), config_dir)


def run(stage: str, cfg: Union[Config, str] = DEFAULT_EXPERIMENT, overrides: Sequence[str] = (),
        **kwargs):
    """Run one stage (`pretrainer <stage>`) and return what it returns: the run directory
    for most; pipeline returns a dict of its runs and the comparison. `kwargs` are the
    stage's own arguments (run=..., or predict's input_path=..., output=...)."""
    from pretrainer.errors import ConfigError

    if stage not in STAGES:
        raise ConfigError(f"Unknown stage '{stage}'. Choose from: {', '.join(STAGES)}")
    if isinstance(cfg, str):
        cfg = config(cfg, overrides)
    elif overrides:
        raise ConfigError("pass overrides with a config name, or compose them with "
                          "pretrainer.api.config(name, overrides)")
    quiet_tensorflow()
    module = importlib.import_module(f"pretrainer.stages.{stage}")
    return module.run(cfg, **kwargs)


def quiet_tensorflow() -> None:
    """Import TensorFlow with its start-up lines (oneDNN, CUDA probing) muted."""
    if os.environ.get("PRETRAINER_VERBOSE_TF") == "1":
        return
    from pretrainer.console import quiet_tensorflow

    quiet_tensorflow()
