"""The config groups whose keys are the same whatever option is chosen: data, finetune,
trainer, deploy, evaluate, study, tracking and paths (backbone and pretext options differ
in their keys: `options.py`). Ranges and single-group rules live in `__post_init__`;
rules that need another group (what the data source gives, which backbone) in `check`,
which `Config` runs once every group is built.

This module must not import TensorFlow or Keras (`pretrainer --help` stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional
from urllib.parse import urlparse

from pretrainer.errors import ConfigError


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}='{value}' is not valid. Choose from: {', '.join(choices)}")


def check_range(name: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"Expected {name} in {bracket}{lo}, {hi}]. Received: {name}={value}")


@dataclass
class PathsConfig:
    data: str = "data"  # root of dataset stores: <data>/<dataset>/
    runs: str = "runs"  # root of run directories: <runs>/<experiment>/<stage>-<stamp>/

    def __post_init__(self) -> None:
        if "://" in self.runs:
            raise ConfigError(f"paths.runs={self.runs}: run directories are local (they rely "
                              f"on file locks and atomic renames); dataset stores can live "
                              f"there (paths.data={self.runs.rsplit('/', 1)[0]}/data). Sync "
                              f"finished runs to the bucket afterwards (gsutil rsync)")


def parse_address(url: str) -> tuple[str, int]:
    """(host, port) of 'grpc://HOST:PORT'; a ConfigError in one line otherwise."""
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "grpc" or not parsed.hostname or port is None:
        raise ConfigError(f"data.service={url}: expected grpc://HOST:PORT, the address of a "
                          f"tf.data service dispatcher (`pretrainer data-service dispatcher`)")
    return parsed.hostname, port


# What each data source gives (`data.source` -> modality), known before anything is
# loaded so that compose can check the backbone, pretext and finetune options against it;
# collect checks the loaded data against it (pretrainer.data.sources.SOURCES has the same
# keys, tests/test_config.py holds them together)
SOURCE_MODALITY = {"bundled": "image", "keras": "image", "idx": "image", "sklearn": "image",
                   "image_folder": "image", "text_files": "text", "bundled_text": "text",
                   "csv": "tabular"}
KERAS_TEXT_DATASETS = ("imdb",)  # data.source=keras datasets of texts (the rest: images)


@dataclass
class DataConfig:
    name: str = "fashion_mnist_small"  # store directory under paths.data
    source: str = "bundled"  # key of pretrainer.data.sources.SOURCES
    dataset: str = "fashion_mnist_small"  # which dataset the source loads
    path: Optional[str] = None  # image_folder: the root folder
    image_size: Optional[List[int]] = None  # image_folder: [height, width]; null: 64x64
    color: str = "auto"  # image_folder: auto | rgb | grayscale
    extra_unlabeled: Optional[str] = None  # folder of images added to the unlabeled split only
    text_split: str = "file"  # text_files: file | line | a regex separating documents
    target: Optional[str] = None  # csv: the target column; null = unlabeled rows
    task: str = "auto"  # csv: auto | classification | regression
    labeled_fraction: float = 0.01  # share of the labeled pool whose labels are kept
    labels_per_class: Optional[int] = None  # overrides labeled_fraction when set
    val_fraction: float = 0.1  # held out of the labeled pool for validation
    test_fraction: float = 0.2  # held out only when the source has no test split
    max_samples: Optional[int] = None  # cap on the source's training pool (tiny runs)
    max_test: Optional[int] = None  # cap on the test split (tiny runs)
    dedupe: bool = False  # drop pool/train examples that duplicate a test example exactly
    label_seed: Optional[int] = None  # draws the labeled subset only (study seeds); null: seed
    split_seed: Optional[int] = None  # draws test/val/pool and the stored order; null: seed
    encoding: str = "auto"  # text files, CSV: auto (UTF-8, else cp1252/latin-1), or a codec
    shard_size: int = 4096  # examples per TFRecord shard
    # stratified: seeded per-class draws over all records (exact shares, the default);
    # hash: keyed hashes of each record's content (streams; collect on Beam keeps its
    # launcher's memory flat; shards hold shard_size on average). docs/data.md
    split_rule: str = "stratified"
    cache: bool = True  # cache decoded splits in memory when they are small (< 512 MB)
    shuffle_buffer: int = 10_000  # records permuted together when a split streams from disk
    service: Optional[str] = None  # grpc://HOST:PORT: training streams read by tf.data service

    @property
    def modality(self) -> str:
        """image | text | tabular: what this source gives."""
        if self.source == "keras" and self.dataset in KERAS_TEXT_DATASETS:
            return "text"
        return SOURCE_MODALITY[self.source]

    def __post_init__(self) -> None:
        check_choice("data.source", self.source, tuple(SOURCE_MODALITY))
        if self.extra_unlabeled and self.modality != "image":
            raise ConfigError(f"data.extra_unlabeled adds image folders; data source "
                              f"'{self.source}' gives {self.modality} data")
        check_choice("data.color", self.color, ("auto", "rgb", "grayscale"))
        check_choice("data.task", self.task, ("auto", "classification", "regression"))
        check_choice("data.split_rule", self.split_rule, ("stratified", "hash"))
        if self.service:
            parse_address(self.service)
        import codecs

        if self.shuffle_buffer < 1:
            raise ConfigError(f"Expected data.shuffle_buffer >= 1. Received: "
                              f"{self.shuffle_buffer}")
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(f"Unknown data.encoding '{self.encoding}'. Use auto, utf-8, "
                                  f"latin-1, cp1252 or another Python codec name") from None
        if self.image_size is not None and (len(self.image_size) != 2
                                            or min(self.image_size) < 4):
            raise ConfigError(f"Expected data.image_size as [height, width], each >= 4. "
                              f"Received: {self.image_size}")
        check_range("data.labeled_fraction", self.labeled_fraction, 0.0, 1.0, lo_open=True)
        check_range("data.val_fraction", self.val_fraction, 0.0, 0.5)
        check_range("data.test_fraction", self.test_fraction, 0.0, 0.5, lo_open=True)
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise ConfigError(
                f"Expected data.labels_per_class >= 1. Received: {self.labels_per_class}"
            )
        for key in ("max_samples", "max_test"):
            value = getattr(self, key)
            if value is not None and value < 10:
                raise ConfigError(f"Expected data.{key} >= 10 or null. Received: {value}")
        if self.shard_size < 1:
            raise ConfigError(f"Expected data.shard_size >= 1. Received: {self.shard_size}")


@dataclass
class FinetuneConfig:
    init: str = "pretrained"  # pretrained | scratch | public (ImageNet weights: resnet, mobilenet)
    mode: str = "full"  # full | linear_probe | gradual (unfreeze one block from the top per N epochs)
    unfreeze_every: int = 1  # gradual: epochs between unfreezing the next backbone block
    epochs: Optional[int] = None  # null: trainer.epochs
    batch_size: Optional[int] = None  # null: trainer.batch_size (few labels want small batches)
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    head_units: List[int] = field(default_factory=list)  # hidden Dense layers of the head
    dropout: float = 0.0
    feature_norm: str = "none"  # image classifiers: none | batch | layer, on the embedding
    loss: str = "sparse_categorical_crossentropy"  # or categorical_crossentropy (one-hot)
    augment: str = "none"  # none | shift (random +-10% translation) | shift_flip (+ mirror)
    backbone_lr_multiplier: float = 1.0  # full mode: the backbone's updates are scaled by this
    label_smoothing: float = 0.0  # classification: soften one-hot targets
    class_weight: str = "none"  # none | balanced (inverse class frequency of the labeled split)
    schedule: str = "constant"  # constant | cosine (decay to 0 over the run)
    warmup_epochs: int = 0  # linear warm-up before the schedule
    steps_per_epoch: Optional[int] = None  # null: one pass over the labeled split
    # Semi-supervised use of the unlabeled split while finetuning (images, classification):
    # none | fixmatch (confident predictions on a weak view train a strong view)
    semi_supervised: str = "none"
    unlabeled_ratio: int = 3  # fixmatch: unlabeled images per labeled image in a step
    confidence: float = 0.95  # fixmatch: pseudo-labels need this max probability
    unlabeled_weight: float = 1.0  # fixmatch: weight of the unlabeled loss
    distribution_alignment: bool = False  # fixmatch: push pseudo-labels towards balanced classes
    # fixmatch: weight of DoubleMatch's self-supervised term (every unlabeled image's strong
    # view pulled towards its weak view in feature space, through a projection); 0 = off
    self_supervised_weight: float = 0.0
    # fixmatch from a pretrained backbone: prior pseudo-labels from the pretrained features.
    # none | propagation (the labels spread over a kNN graph of the frozen embedding of the
    # pool, as a frozen classifier whose distribution multiplies the model's on each weak
    # view: AS3L-style). Scratch runs have no pretrained features and train without it.
    prior: str = "none"
    prior_weight: float = 1.0  # propagation: the prior's exponent in the product (0 = off)
    # propagation: the share of the run over which the exponent decays linearly to 0
    # (0: it stays prior_weight throughout)
    prior_decay: float = 0.0
    # propagation: the backbone layer whose output is the graph's features (a layer name,
    # e.g. flatten: conv_ae's trunk before its embedding Dense); empty: the backbone's output
    prior_layer: str = ""
    # keep an exponential moving average of the weights and end with it (Keras' use_ema);
    # null: off. FixMatch evaluates such an average.
    ema_momentum: Optional[float] = None
    # which weights the run keeps: those of the best validation epoch (val_accuracy, or
    # val_loss for regression) when there is a val split, or the last epoch's
    keep: str = "best"
    # text: a wide part beside the transformer (Wide & Deep): none | ngrams (TF-IDF of word
    # 1-2-grams and character 2-5-grams of the labeled texts, L2-normalised, fed with the
    # pooled embedding to the one softmax layer)
    wide: str = "none"
    wide_max_tokens: int = 50_000  # ngrams: the most frequent n-grams kept, per kind
    head_l2: float = 0.0  # L2 penalty on the softmax layer's kernel (a logistic regression's 1/C)

    def __post_init__(self) -> None:
        check_choice("finetune.init", self.init, ("pretrained", "scratch", "public"))
        check_choice("finetune.wide", self.wide, ("none", "ngrams"))
        if self.wide_max_tokens < 1:
            raise ConfigError(f"Expected finetune.wide_max_tokens >= 1. Received: "
                              f"{self.wide_max_tokens}")
        check_range("finetune.head_l2", self.head_l2, 0.0, 1.0)
        check_choice("finetune.keep", self.keep, ("best", "last"))
        check_choice("finetune.mode", self.mode, ("full", "linear_probe", "gradual"))
        check_choice("finetune.feature_norm", self.feature_norm, ("none", "batch", "layer"))
        check_choice("finetune.semi_supervised", self.semi_supervised, ("none", "fixmatch"))
        check_choice("finetune.prior", self.prior, ("none", "propagation"))
        check_range("finetune.prior_weight", self.prior_weight, 0.0, 10.0)
        check_range("finetune.prior_decay", self.prior_decay, 0.0, 1.0)
        if self.prior != "none" and self.semi_supervised == "none":
            raise ConfigError("finetune.prior=propagation guides the pseudo-labels of "
                              "finetune.semi_supervised=fixmatch; set that too, or prior=none")
        check_range("finetune.confidence", self.confidence, 0.0, 1.0)
        check_range("finetune.unlabeled_weight", self.unlabeled_weight, 0.0, 100.0)
        check_range("finetune.self_supervised_weight", self.self_supervised_weight, 0.0, 100.0)
        if self.ema_momentum is not None:
            check_range("finetune.ema_momentum", self.ema_momentum, 0.0, 1.0, lo_open=True)
        for key in ("unfreeze_every", "unlabeled_ratio"):
            if getattr(self, key) < 1:
                raise ConfigError(f"Expected finetune.{key} >= 1. Received: {getattr(self, key)}")
        check_choice("finetune.optimizer", self.optimizer, ("adam", "sgd"))
        check_choice(
            "finetune.loss", self.loss,
            ("sparse_categorical_crossentropy", "categorical_crossentropy", "mse"),
        )
        check_range("finetune.learning_rate", self.learning_rate, 0.0, 10.0, lo_open=True)
        check_choice("finetune.augment", self.augment, ("none", "shift", "shift_flip"))
        check_range("finetune.label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_range("finetune.backbone_lr_multiplier", self.backbone_lr_multiplier, 0.0, 10.0)
        check_choice("finetune.class_weight", self.class_weight, ("none", "balanced"))
        check_choice("finetune.schedule", self.schedule, ("constant", "cosine"))
        if self.warmup_epochs < 0:
            raise ConfigError(f"Expected finetune.warmup_epochs >= 0. Received: {self.warmup_epochs}")
        check_range("finetune.dropout", self.dropout, 0.0, 0.95)
        for key in ("epochs", "batch_size", "steps_per_epoch"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"Expected finetune.{key} >= 1 or null. Received: {value}")

    def check(self, cfg) -> None:
        """The rules that need the data's modality (cfg: the whole Config)."""
        modality = cfg.data.modality
        if self.wide != "none" and modality != "text":
            raise ConfigError(f"finetune.wide={self.wide} is for text classifiers; data source "
                              f"'{cfg.data.source}' gives {modality} data. Set finetune.wide=none")
        if self.semi_supervised != "none" and (modality != "image" or cfg.data.task == "regression"):
            raise ConfigError(f"finetune.semi_supervised={self.semi_supervised} needs image "
                              f"classification data; data source '{cfg.data.source}' gives "
                              f"{modality} data. Set finetune.semi_supervised=none")


@dataclass
class TrainerConfig:
    epochs: int = 5  # pretraining epochs, and finetuning epochs unless finetune.epochs is set
    batch_size: int = 128  # global batch: split across replicas by the strategy
    strategy: str = "auto"  # auto | cpu | gpu | mirrored | multi_worker | tpu
    tpu: str = ""  # tpu: a TPU name, local (on a TPU VM) or grpc://host:port
    connect_timeout: float = 30.0  # seconds to reach a TPU before giving up
    devices: List[str] = field(default_factory=list)  # mirrored: e.g. ["/gpu:0", "/gpu:1"]
    # where a multi-worker cluster is described: tf_config (TF_CONFIG), slurm (an srun
    # job step: SLURM_PROCID, SLURM_STEP_*), or auto (TF_CONFIG when set, else a SLURM
    # step of several tasks)
    cluster: str = "auto"
    cluster_port: int = 8888  # slurm: the first port of the workers on each node
    # float32 | mixed_float16 | mixed_bfloat16 | auto (the policy measured fastest for the
    # model here: mixed_bfloat16 for conv image models on a CPU with AMX-BF16 or
    # AVX512-BF16 and no GPU, else float32; see pretrainer/precision.py)
    precision: str = "auto"
    # training steps per tf.function call (fewer Python round trips); lowered to divide
    # the epoch's steps, the checkpoint interval rounded to a multiple (exact resume)
    steps_per_execution: int = 16
    # XLA: null = auto (on with a GPU; off on CPU, where it ran small CNNs at 0.59x)
    jit_compile: Optional[bool] = None
    # every training and validation batch of one size (the last partial one of a pass is
    # dropped), as TPUs need static shapes; null = on when the strategy is a TPU
    static_batches: Optional[bool] = None
    early_stopping_patience: int = 0  # 0 disables early stopping
    checkpoint_every: int = 100  # steps between checkpoints (a kill loses at most this many)
    verbose: bool = True  # Rich progress bars

    def __post_init__(self) -> None:
        check_choice("trainer.strategy", self.strategy,
                      ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu"))
        check_choice("trainer.cluster", self.cluster, ("auto", "tf_config", "slurm"))
        if not 1 <= self.cluster_port <= 65535:
            raise ConfigError(f"trainer.cluster_port {self.cluster_port} is not a TCP port")

        check_choice(
            "trainer.precision", self.precision,
            ("float32", "mixed_float16", "mixed_bfloat16", "auto")
        )
        for key in ("epochs", "batch_size", "steps_per_execution", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"Expected trainer.{key} >= 1. Received: {getattr(self, key)}")
        if self.early_stopping_patience < 0:
            raise ConfigError(
                f"Expected trainer.early_stopping_patience >= 0. "
                f"Received: {self.early_stopping_patience}"
            )


@dataclass
class DeployConfig:
    name: str = ""  # model name in export/<name>/<version>/; empty: the experiment name
    formats: List[str] = field(default_factory=lambda: ["saved_model"])  # + litert, onnx
    quantize: str = "none"  # litert only: none | dynamic | float16 | int8
    parity_samples: int = 256  # test examples compared between Keras and the export
    parity_atol: float = 1e-4  # float formats: max abs difference of probabilities allowed
    max_accuracy_drop: float = 0.01  # quantized formats: accuracy may fall by at most this
    prune_sparsity: float = 0.0  # > 0: magnitude-prune kernels to this sparsity, then finetune
    prune_epochs: int = 2  # finetuning epochs after pruning (train split, pruned weights fixed)
    allow_chance: bool = False  # publish to serving/ even when no better than chance

    def __post_init__(self) -> None:
        if not self.formats:
            raise ConfigError("deploy.formats is empty. Choose from: saved_model, litert, onnx")
        for fmt in self.formats:
            check_choice("deploy.formats[]", fmt, ("saved_model", "litert", "onnx"))
        check_choice("deploy.quantize", self.quantize, ("none", "dynamic", "float16", "int8"))
        check_range("deploy.prune_sparsity", self.prune_sparsity, 0.0, 0.99)
        if self.prune_epochs < 0:
            raise ConfigError(f"Expected deploy.prune_epochs >= 0. Received: {self.prune_epochs}")
        if self.parity_samples < 1:
            raise ConfigError(f"Expected deploy.parity_samples >= 1. Received: {self.parity_samples}")


@dataclass
class EvaluateConfig:
    split: str = "test"
    explain: int = 0  # images: write attribution maps for this many examples (0 = off)
    explain_method: str = "integrated_gradients"  # integrated_gradients | saliency

    def __post_init__(self) -> None:
        check_choice("evaluate.split", self.split, ("test", "val", "train"))
        check_choice("evaluate.explain_method", self.explain_method,
                      ("integrated_gradients", "saliency"))
        if not 0 <= self.explain <= 256:
            raise ConfigError(f"Expected evaluate.explain in [0, 256]. Received: {self.explain}")


BEAM_SOURCES = ("image_folder", "text_files", "csv")


@dataclass
class CollectConfig:
    """How `collect` runs. `inprocess`: this process (forked image decoders). `beam`: an
    Apache Beam pipeline on Beam's local runner (pip install 'pretrainer[beam]'); any
    other value names a Beam runner (DataflowRunner, FlinkRunner, SparkRunner, ...), its
    pipeline options in `options`. Every runner writes the same store: the runner is not
    part of the store's config key."""
    runner: str = "inprocess"
    options: List[str] = field(default_factory=list)  # e.g. ["--project=p", "--region=r"]
    workers: int = 0  # Beam's local runner: worker processes (0: the CPUs this process has)

    def __post_init__(self) -> None:
        if not self.runner or not self.runner.replace("_", "").isalnum():
            raise ConfigError(f"collect.runner='{self.runner}' is not valid. Choose from: "
                              f"inprocess, beam, or a Beam runner's name (DataflowRunner, ...)")
        bad = [o for o in self.options if not str(o).startswith("--")]
        if bad:
            raise ConfigError(f"collect.options takes Beam pipeline flags (--name=value). "
                              f"Received: {bad[0]}")
        if any(str(o).split("=")[0] == "--runner" for o in self.options):
            raise ConfigError("collect.options: give the runner as collect.runner=NAME")
        if self.workers < 0:
            raise ConfigError(f"Expected collect.workers >= 0. Received: {self.workers}")

    @property
    def beam(self) -> bool:
        return self.runner != "inprocess"


@dataclass
class StudyConfig:
    fractions: List[float] = field(default_factory=lambda: [0.01, 0.1])  # labeled fractions
    seeds: int = 1  # label draws (and finetune seeds) per fraction
    linear_probe: bool = False  # also finetune the pretrained backbone frozen
    # also fit the classical baseline (pretrainer.baselines) on each cell's labels
    classical: bool = True
    # also score the frozen pretrained embedding (pretrainer.frozen: kNN, logistic
    # regression, label spreading) on each cell's labels
    frozen: bool = True

    def __post_init__(self) -> None:
        if not self.fractions:
            raise ConfigError("study.fractions is empty")
        for f in self.fractions:
            check_range("study.fractions[]", f, 0.0, 1.0, lo_open=True)
        if self.seeds < 1:
            raise ConfigError(f"Expected study.seeds >= 1. Received: {self.seeds}")


@dataclass
class TrackingConfig:
    """Experiment tracking (`tracking=mlflow`, or tracking.backend=mlflow)."""
    backend: str = "none"  # none | mlflow (pip install 'pretrainer[mlflow]')
    uri: str = ""  # an MLflow server (http://host:5000) or store; empty: <paths.runs>/mlruns
    experiment: str = ""  # MLflow experiment name; empty: the pretrainer experiment

    def __post_init__(self) -> None:
        check_choice("tracking.backend", self.backend, ("none", "mlflow"))
