"""SimCLR: two augmented views of each image, a projection head, the NT-Xent loss."""

from __future__ import annotations

import keras
from keras import ops

from pretrainer.config import BackboneConfig, SimCLRConfig
from pretrainer.errors import ConfigError


def _global_views(z1, z2):
    """(all replicas' z1, all replicas' z2, where this replica's examples start in them).

    Under a distribution strategy each replica computes the loss of its own slice of
    the global batch; NT-Xent's negatives must still be the whole global batch, as on
    one device (with local negatives only, 8 GPUs train on 1/8 of the negatives: the
    most reported multi-GPU bug of contrastive tools). The gather is differentiable,
    so each replica's loss sends gradients to the other replicas' embeddings too."""
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return z1, z2, 0
    sizes = ctx.all_gather(tf.shape(z1)[:1], axis=0)
    offset = tf.reduce_sum(sizes[:ctx.replica_id_in_sync_group])
    return ctx.all_gather(z1, axis=0), ctx.all_gather(z2, axis=0), offset


def nt_xent(z1, z2, temperature: float = 0.2):
    """Normalised-temperature cross-entropy, per example (a pure function of embeddings).

    For each of the 2N views of the global batch the positive is the other view of the
    same image and the 2N-2 other views are negatives; the two directions are averaged
    per example. Returns this replica's examples' losses (all of them on one device).
    """
    z1 = ops.normalize(ops.cast(z1, "float32"), axis=-1)
    z2 = ops.normalize(ops.cast(z2, "float32"), axis=-1)
    all1, all2, offset = _global_views(z1, z2)
    b, n = ops.shape(z1)[0], ops.shape(all1)[0]
    candidates = ops.transpose(ops.concatenate([all1, all2], axis=0))  # (dim, 2N)
    mine = ops.arange(b) + offset  # this replica's examples' places in the global batch

    def direction(z, own, other):
        sim = ops.matmul(z, candidates) / temperature  # (b, 2N)
        sim = sim - 1e9 * ops.one_hot(own, 2 * n)  # a view is not its own negative
        log_prob = sim - ops.logsumexp(sim, axis=1, keepdims=True)
        return -ops.take_along_axis(log_prob, other[:, None], axis=1)[:, 0]

    return (direction(z1, mine, mine + n) + direction(z2, mine + n, mine)) / 2.0



def augmenter(channels: int, seed: int, name: str, zoom: float = 0.5) -> keras.Sequential:
    """Random crop-and-resize (zoom in by up to `zoom`), flip, shift and brightness/contrast
    jitter."""
    layers = [
        keras.layers.RandomZoom((-zoom, 0.0), fill_mode="reflect", seed=seed),
        keras.layers.RandomFlip("horizontal", seed=seed + 1),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomBrightness(0.3, value_range=(0.0, 1.0), seed=seed + 3),
        keras.layers.RandomContrast(0.4, seed=seed + 4),
    ]
    if channels == 3:  # colour jitter only where there is colour
        layers.append(keras.layers.RandomSaturation((0.4, 1.6), seed=seed + 5))
    return keras.Sequential(layers, name=name)


@keras.saving.register_keras_serializable(package="pretrainer")
class QuarterTurns(keras.layers.Layer):
    """`quarter_turns` as a layer (a Lambda would not reload in Keras' safe mode)."""

    def call(self, x):
        return quarter_turns(x)


def rotated_count(b, share: float):
    """How many of a batch of b the rotation loss sees: ceil(b * share), at least 4 (one
    per quarter turn) and at most b."""
    n = ops.cast(ops.ceil(ops.cast(b, "float32") * share), "int32")
    return ops.minimum(b, ops.maximum(n, 4))


@keras.saving.register_keras_serializable(package="pretrainer")
class LeadingShare(keras.layers.Layer):
    """The first `rotated_count(batch, share)` examples of a batch (a shuffled batch: a
    random subset)."""

    def __init__(self, share: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.share = share

    def call(self, x):
        return x[:rotated_count(ops.shape(x)[0], self.share)]

    def get_config(self):
        return {**super().get_config(), "share": self.share}


@keras.saving.register_keras_serializable(package="pretrainer")
class RowsBack(keras.layers.Layer):
    """Logits (n, 4) of a batch's first n examples -> (batch, 1, width): zero rows for the
    rest of the batch (`like`) and zero columns past the logits."""

    def __init__(self, width: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.width = width

    def call(self, logits, like):
        rows = ops.shape(like)[0] - ops.shape(logits)[0]
        return ops.pad(logits, [[0, rows], [0, self.width - ops.shape(logits)[1]]])[:, None, :]

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def quarter_turns(x):
    """Rotate the i-th quarter of the batch by i x 90 degrees; the targets are the quarter
    indices (`rotation_targets`). Labels follow from positions, so nothing extra travels
    with the batch; under a strategy each replica turns quarters of its own slice."""
    b = ops.shape(x)[0]
    turns = rotation_targets(b)[:, None, None, None]
    transposed = ops.transpose(x, (0, 2, 1, 3))  # square images: (H, W) -> (W, H)
    by_turn = [x, ops.flip(transposed, axis=1), ops.flip(ops.flip(x, axis=1), axis=2),
               ops.flip(transposed, axis=2)]  # 0, 90, 180, 270 degrees anticlockwise
    out = by_turn[0]
    for k in (1, 2, 3):
        out = ops.where(ops.equal(turns, k), by_turn[k], out)
    return out


def rotation_targets(b):
    return ops.cast(ops.floor(ops.arange(b, dtype="float32") * 4.0 / ops.cast(b, "float32")),
                    "int32")


def build_simclr(backbone: keras.Model, cfg: SimCLRConfig, backbone_cfg: BackboneConfig,
                 seed: int, **compile_kwargs) -> keras.Model:
    """x -> (view1, view2) -> backbone -> projector -> (B, 2, projection_dim)."""
    shape = tuple(backbone.input_shape[1:])
    inputs = keras.Input(shape=shape, name="image")
    projector = keras.Sequential([
        keras.layers.Dense(backbone_cfg.latent_dim, activation="relu"),
        keras.layers.Dense(cfg.projection_dim, dtype="float32"),
    ], name="projector")
    views = [augmenter(shape[-1], seed + 10 * i, f"view{i + 1}", cfg.zoom)(inputs)
             for i in range(2)]
    zs = [keras.layers.Reshape((1, cfg.projection_dim))(projector(backbone(v))) for v in views]
    weight, share = cfg.rotation_weight, cfg.rotation_share
    if weight > 0:  # RotNet as an auxiliary task: which quarter turn was applied to view 1
        if shape[0] != shape[1]:
            raise ConfigError(f"pretext.rotation_weight needs square images. Received: "
                              f"{shape[0]}x{shape[1]}")
        # on the first `share` of the batch only: a whole third backbone pass costs +36 %
        # per step (fashion_full, 2-core AVX2: 71 s per epoch; a quarter of it 53 s)
        part = views[0] if share >= 1 else LeadingShare(share, name="rotated")(views[0])
        turned = QuarterTurns(name="quarter_turns")(part)
        logits = keras.layers.Dense(4, dtype="float32", name="rotation")(backbone(turned))
        # carried as a third row of the output, zero-padded to the batch and the width
        if share < 1:
            zs.append(RowsBack(cfg.projection_dim, name="rotation_rows")(logits, views[0]))
        else:  # the layers of runs from before rotation_share: a checkpoint restores
            # its variables by the layers' order, so theirs must resume into this graph
            pad = keras.layers.ZeroPadding1D((0, cfg.projection_dim - 4))(
                keras.layers.Reshape((4, 1))(logits))
            zs.append(keras.layers.Reshape((1, cfg.projection_dim))(pad))
    outputs = keras.layers.Concatenate(axis=1, name="views", dtype="float32")(zs)
    model = keras.Model(inputs, outputs, name="simclr")
    temperature = cfg.temperature

    def loss(_, y_pred):
        total = nt_xent(y_pred[:, 0], y_pred[:, 1], temperature)
        if weight > 0:  # the mean over the batch is the mean over the rotated share
            b = ops.shape(y_pred)[0]
            n = rotated_count(b, share)
            ce = keras.losses.sparse_categorical_crossentropy(
                rotation_targets(n), y_pred[:n, 2, :4], from_logits=True)
            scale = ops.cast(b, "float32") / ops.cast(n, "float32")
            total = total + weight * scale * ops.pad(ce, [[0, b - n]])
        return total

    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss,
                  **compile_kwargs)
    return model
