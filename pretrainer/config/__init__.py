"""Typed configuration: Hydra structured configs extended by YAML.

One dataclass per config group whose keys do not depend on the option chosen (data,
finetune, trainer, deploy, ...: `groups.py`) and one per backbone and pretext option
(`options.py`), plus the top-level `Config`. The schema is stored in Hydra's ConfigStore
as `pretrainer_schema`; every experiment YAML lists it first in its `defaults:` so Hydra
checks keys and types at compose time. Ranges and single-group rules live in each
class's `__post_init__`; `Config.__post_init__` then gives the backbone and pretext
their option's class and runs every rule that needs two groups (`check`), so a config
that cannot work fails when it is composed, before any data is collected.

This module must not import TensorFlow or Keras (`pretrainer --help` stays fast).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pretrainer.config.groups import (  # noqa: F401  (the package's public names)
    BEAM_SOURCES,
    KERAS_TEXT_DATASETS,
    SOURCE_MODALITY,
    CollectConfig,
    DataConfig,
    DeployConfig,
    EvaluateConfig,
    FinetuneConfig,
    PathsConfig,
    StudyConfig,
    TrackingConfig,
    TrainerConfig,
)
from pretrainer.config.options import (  # noqa: F401
    ApplicationConfig,
    BackboneConfig,
    ConvConfig,
    DCGANConfig,
    LanguageModelConfig,
    MLPConfig,
    PretextConfig,
    ReconstructionConfig,
    SimCLRConfig,
    TransformerConfig,
    keys_of,
    option_class,
    typed,
)
from pretrainer.errors import ConfigError

DEFAULT_EXPERIMENT = "fashion_ae"


@dataclass
class Config:
    experiment: str = ""  # names runs/<experiment>/; empty: the config's file name
    description: str = ""  # one line, shown by `pretrainer configs`
    seed: int = 42
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    # the backbone's and the pretext's keys depend on the option (options.py): untyped in
    # the Hydra schema, given their option's class by __post_init__
    backbone: Any = field(default_factory=lambda: {"name": "conv_ae"})
    pretext: Any = field(default_factory=lambda: {"name": "autoencoder"})
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        self.backbone = typed("backbone", self.backbone, "conv_ae")
        self.pretext = typed("pretext", self.pretext, "autoencoder")
        for group in (self.backbone, self.pretext, self.finetune):
            group.check(self)
        if self.collect.beam and self.data.source not in BEAM_SOURCES:
            raise ConfigError(f"collect.runner={self.collect.runner} reads files: data.source "
                              f"must be one of {', '.join(BEAM_SOURCES)}. Received: "
                              f"{self.data.source} (collect it with collect.runner=inprocess)")
        if (self.collect.beam and self.data.extra_unlabeled
                and self.data.split_rule != "hash"):
            raise ConfigError("collect.runner=beam reads data.extra_unlabeled with "
                              "data.split_rule=hash only (or collect with "
                              "collect.runner=inprocess)")


_GROUPS = ("data", "backbone", "pretext", "finetune", "trainer", "deploy")
_OPTION_GROUPS = {"backbone": "conv_ae", "pretext": "autoencoder"}  # group -> default option
SCHEMA_NAME = "pretrainer_schema"
_STORED = False


def _store_schema() -> None:
    global _STORED
    if _STORED:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)
    _STORED = True


def builtin_config_dir() -> Path:
    """configs/ at the repository root in a checkout, or packaged in the wheel."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "configs"  # the wheel maps configs/ to pretrainer/configs/
    if installed.is_dir():
        return installed
    return package.parent / "configs"


USER_CONFIG_DIR = "experiments"  # in the working directory: where `pretrainer init` writes


def config_dirs(extra: Optional[str] = None) -> list[Path]:
    """The search path, first match wins: --config-dir, $PRETRAINER_CONFIG_DIR,
    ./experiments (what `pretrainer init` writes) when it exists, the built-in configs."""
    import os

    dirs = []
    for given, what in ((extra, "--config-dir"),
                        (os.environ.get("PRETRAINER_CONFIG_DIR"), "PRETRAINER_CONFIG_DIR")):
        if given:
            user = Path(given).expanduser().resolve()
            if not user.is_dir():
                raise ConfigError(f"{what} {given} is not a directory")
            dirs.append(user)
    local = Path(USER_CONFIG_DIR).resolve()
    if local.is_dir() and local not in dirs:
        dirs.append(local)
    dirs.append(builtin_config_dir())
    return dirs



def list_experiments(extra: Optional[str] = None) -> dict[str, tuple[str, Path]]:
    """Experiment name -> (one-line description, file) for the top-level YAMLs."""
    import yaml

    found: dict[str, tuple[str, Path]] = {}
    for d in reversed(config_dirs(extra)):  # user files shadow built-in ones
        for path in sorted(d.glob("*.yaml")):
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError):
                doc = {"description": "(unreadable YAML)"}
            desc = str(doc.get("description", "")) if isinstance(doc, dict) else ""
            found[path.stem] = (desc, path)
    return dict(sorted(found.items()))


def _schema_node(dotted: str) -> tuple[Optional[type], str]:
    """Walk the dataclass schema along `a.b.c`; return (parent class, last key) if invalid."""
    node: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            return None, ""
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return node, ".".join(parts[: i + 1])
        ftype = node.__annotations__.get(part)
        node = globals().get(ftype) if isinstance(ftype, str) else ftype
    return None, ""


def _explain_override_error(overrides: list[str], exc: Exception) -> str:
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or "=" not in ov or key in _GROUPS:
            continue
        parent, bad = _schema_node(key)
        if parent is not None:
            valid = ", ".join(f.name for f in dataclasses.fields(parent))
            where = bad.rsplit(".", 1)[0] if "." in bad else "the config"
            return f"Unknown key '{bad}'. Valid keys in {where}: {valid}"
    syntax = _yaml_problem(exc)
    if syntax:
        return syntax
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if any(line.startswith("Available options") for line in lines):  # unknown group option
        i = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        opts = [line for line in lines[i + 1:] if " " not in line]
        return f"{lines[0]}. Choose from: {', '.join(opts)}"
    msg = " ".join(lines[:2])
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        msg += " " + str(cause).strip().splitlines()[0]
    return msg


def _yaml_problem(exc: BaseException) -> str:
    """A YAML syntax error in the exception's chain, said where the fault is: PyYAML's
    first line names where the enclosing block began ("while parsing a block mapping ...
    line 1, column 1"), its problem and problem_mark the line that broke it."""
    import yaml

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            mark = exc.problem_mark
            return (f"YAML syntax error in {mark.name}, line {mark.line + 1}, column "
                    f"{mark.column + 1}: {exc.problem}"
                    + (f" ({exc.context} from line {exc.context_mark.line + 1})"
                       if exc.context and exc.context_mark is not None else ""))
        exc = exc.__cause__ or exc.__context__
    return ""


def _reject_hydra_only(override: str) -> None:
    """Hydra accepts `+key=v` (add a key), `~key` (delete one) and `hydra.*` on a structured
    config and they change nothing we read: a typo would be silently ignored."""
    key = override.split("=", 1)[0]
    bare = key.lstrip("+~")
    if key.startswith(("+", "~")):
        parent, bad = _schema_node(bare)
        where = (bad.rsplit(".", 1)[0] if "." in bad else "the config") if parent else ""
        valid = (f" Valid keys in {where}: {', '.join(f.name for f in dataclasses.fields(parent))}"
                 if parent is not None else "")
        raise ConfigError(f"'{override}': adding or deleting keys ({key[0]}) is not supported; "
                          f"set an existing key as key=value.{valid}")
    if bare == "hydra" or bare.startswith("hydra."):
        raise ConfigError(f"'{override}': hydra.* settings are not read by pretrainer (runs go "
                          f"to paths.runs, stores to paths.data)")


def _forced(overrides: list[str]) -> list[str]:
    """`backbone.KEY=V` and `pretext.KEY=V` as Hydra's `++` (set, adding the key when the
    option's YAML leaves it at its default): their nodes are untyped in the schema, and
    the option's class (options.typed) then refuses a key the option does not have,
    naming the ones it has."""
    out = []
    for ov in overrides:
        key = ov.split("=", 1)[0]
        group = key.split(".", 1)[0]
        out.append(f"++{ov}" if "=" in ov and "." in key and group in _OPTION_GROUPS else ov)
    return out


def compose(name: str = DEFAULT_EXPERIMENT, overrides: Optional[list[str]] = None,
            config_dir: Optional[str] = None) -> Config:
    """Compose configs/<name>.yaml with overrides into a validated `Config`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    overrides = list(overrides or [])
    experiments = list_experiments(config_dir)
    if name not in experiments:
        raise ConfigError(f"Unknown config '{name}'. Choose from: {', '.join(experiments)}")
    # `tracking=mlflow` reads like a config group (as in Hydra apps) but is one field here:
    # no experiment config has to list a tracking default for it to work
    overrides = [f"tracking.backend={ov.split('=', 1)[1]}" if ov.split("=", 1)[0] == "tracking"
                 and "=" in ov else ov for ov in overrides]
    for ov in overrides:
        _reject_hydra_only(ov)
    dirs = config_dirs(config_dir)
    _store_schema()
    GlobalHydra.instance().clear()
    search = ",".join(f"file://{d}" for d in dirs[1:])
    extra = [f"hydra.searchpath=[{search}]"] if search else []
    try:
        with initialize_config_dir(config_dir=str(dirs[0]), version_base=None):
            raw = hydra_compose(config_name=name, overrides=_forced(overrides) + extra)
    except Exception as exc:  # Hydra raises several types; all are user errors here
        raise ConfigError(_explain_override_error(overrides, exc)) from exc
    finally:
        GlobalHydra.instance().clear()
    try:
        cfg: Config = OmegaConf.to_object(raw)  # runs every __post_init__
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from exc
    if not cfg.experiment:
        cfg.experiment = name
    if not cfg.deploy.name:
        cfg.deploy.name = cfg.experiment
    return cfg


def to_yaml(cfg: Config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> Config:
    """Rebuild a Config from a run's config.yaml (validated like a fresh compose)."""
    from omegaconf import OmegaConf

    doc = OmegaConf.to_container(OmegaConf.create(text))
    for group, default in _OPTION_GROUPS.items():
        # runs written before each option had a class of its own record every option's
        # keys: the option's own are kept (the one place old records are upgraded)
        node = doc.get(group) or {}
        keys = keys_of(group, str(node.get("name") or default))
        doc[group] = {k: v for k, v in node.items() if k in keys}
    merged = OmegaConf.merge(OmegaConf.structured(Config), doc)
    return OmegaConf.to_object(merged)
