"""Semi-supervised finetuning: use the unlabeled pool while training the head (FixMatch idea).

Each step sees a labeled batch and `ratio` times as many unlabeled images in two
views: a weak one (the finetune augmentation) and a strong one (translation,
brightness/contrast jitter and a cut-out square). The model's confident
predictions on the weak view (max probability >= `threshold`) become targets
for the strong view; the unlabeled loss is weighted by `weight`. Sohn et al.
2020, "FixMatch". Keras has no semi-supervised trainer, hence this model.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pretrainer.data import pipeline


def strong_augment(x: tf.Tensor, shape, seed) -> tf.Tensor:
    """Translation, per-image brightness and contrast jitter, and a cut-out square
    of half the image side filled with grey; values stay in [0, 1]. `seed` is a
    stateless-RNG seed (pipeline.batch_seed), so a resumed run draws the same."""
    h, w = shape[0], shape[1]
    s = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    x = pipeline.shift_augment(x, shape, flip=False, seed=s[0])
    n = tf.shape(x)[0]
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.stateless_uniform([n, 1, 1, 1], s[1], 0.5, 1.5)
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], s[2], -0.25, 0.25)
    x = (x - mean) * contrast + mean + brightness
    size_h, size_w = max(1, h // 2), max(1, w // 2)
    cy = tf.random.stateless_uniform([n, 1, 1, 1], s[3], 0, h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([n, 1, 1, 1], s[4], 0, w, dtype=tf.int32)
    rows = tf.reshape(tf.range(h), [1, h, 1, 1])
    cols = tf.reshape(tf.range(w), [1, 1, w, 1])
    inside = ((tf.abs(rows - cy) <= size_h // 2) & (tf.abs(cols - cx) <= size_w // 2))
    x = tf.where(inside, 0.5, x)
    return tf.clip_by_value(x, 0.0, 1.0)


def unlabeled_views(store, *, batch_size: int, weak: str, seed: int, cache: bool,
                    start_batch: int = 0, shuffle_buffer: int = pipeline.SHUFFLE_BUFFER):
    """Repeating batches of (weak view, strong view) from the store's unlabeled split,
    from batch `start_batch` on (views drawn from (seed, batch index): exact resume)."""
    shape = pipeline.read_manifest(store).shape
    ds = pipeline.images(store, "unlabeled", batch_size=batch_size, shuffle=True, repeat=True,
                         labels=False, cache=cache, seed=seed + 1, start_batch=start_batch,
                         shuffle_buffer=shuffle_buffer)

    def views(index, u):
        weak_seed, strong_seed = tf.unstack(tf.random.experimental.stateless_split(
            pipeline.batch_seed(seed + 2, index), 2))
        w = pipeline.shift_augment(u, shape, flip=weak == "shift_flip", seed=weak_seed) \
            if weak != "none" else u
        return w, strong_augment(u, shape, seed=strong_seed)

    return ds.enumerate(start_batch).map(views, num_parallel_calls=2,
                                         deterministic=True).prefetch(2)


def zip_views(labeled, unlabeled):
    """({"image", "weak", "strong"}, y) batches, the structure Consistency trains on
    (Keras builds a model from the x of the first batch, so x is a dict, not a tuple)."""
    ds = tf.data.Dataset.zip((labeled, unlabeled))
    return ds.map(lambda xy, ws: ({"image": xy[0], "weak": ws[0], "strong": ws[1]}, xy[1]))


class Consistency(keras.Model):
    """Wraps a classifier; trains it on batches from `zip_views`. Inference,
    evaluation and saving go to the wrapped classifier."""

    def __init__(self, classifier: keras.Model, *, threshold: float, weight: float,
                 class_weight=None, align: bool = False, prior: keras.Model | None = None,
                 prior_weight: float = 1.0, prior_steps: int = 0,
                 self_supervised_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        # DoubleMatch (Wallin et al. 2022): every unlabeled image, confident or not, also
        # trains the features: a projection of the strong view's head input is pulled
        # towards the weak view's (cosine, the weak side held fixed)
        self.ssl_weight = float(self_supervised_weight)
        self.projector = None
        if self.ssl_weight > 0:
            head_in = classifier.get_layer("probabilities").input
            self._with_features = [keras.Model(classifier.inputs, [head_in, classifier.output],
                                               name="classifier_features")]  # (shares its layers)
            self.projector = keras.layers.Dense(head_in.shape[-1], dtype="float32",
                                                name="ssl_projector")
            self.projector.build((None, head_in.shape[-1]))  # trained from the first step
            self.ssl_loss = keras.metrics.Mean(name="ssl_loss")
        # prior pseudo-labels (finetune.prior): a frozen model's class distribution on the
        # weak view multiplies the classifier's (a product of experts, the prior raised to
        # prior_weight), so early pseudo-labels come from the pretrained features and
        # later ones need the two to agree
        self.prior, self.prior_weight = prior, float(prior_weight)
        # prior_steps > 0: the exponent decays linearly to 0 over that many optimizer steps
        # (the prior guides the early pseudo-labels, FixMatch alone finishes)
        self.prior_steps = int(prior_steps)
        self.threshold, self.weight, self.align = float(threshold), float(weight), bool(align)
        k = classifier.output_shape[-1]
        # distribution alignment (ReMixMatch): a running mean of the predicted class
        # distribution on unlabeled images, starting uniform
        self.p_model = self.add_weight(shape=(k,), initializer=keras.initializers.Constant(1 / k),
                                       trainable=False, aggregation="mean", name="p_model")
        self.class_weight = (None if class_weight is None else
                             tf.constant([class_weight[i] for i in range(len(class_weight))],
                                         tf.float32))
        self.unlabeled_loss = keras.metrics.Mean(name="unlabeled_loss")
        self.mask_rate = keras.metrics.Mean(name="confident_share")

    def call(self, x, training=False):
        if isinstance(x, dict):  # a training batch: the labeled images are under "image"
            x = x["image"]
        return self.classifier(x, training=training)

    def _feature_consistency(self, weak, strong):
        """DoubleMatch's self-supervised loss: 1 - cos(projector(strong), weak), the weak
        features held fixed; 0 when the two agree."""
        weak = tf.math.l2_normalize(tf.stop_gradient(tf.cast(weak, tf.float32)), -1)
        pulled = tf.math.l2_normalize(self.projector(tf.cast(strong, tf.float32)), -1)
        return tf.reduce_mean(1.0 - tf.reduce_sum(weak * pulled, -1))

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items()
                if k not in (self.unlabeled_loss.name, self.mask_rate.name, "ssl_loss")}

    def train_step(self, data):
        inputs, y = data
        x, weak, strong = inputs["image"], inputs["weak"], inputs["strong"]
        n_l, n_u = tf.shape(x)[0], tf.shape(weak)[0]
        with tf.GradientTape() as tape:
            # one forward pass over all three batches, as FixMatch does (BatchNorm sees them all)
            batch = tf.concat([x, weak, strong], 0)
            if self.projector is None:
                probs = self.classifier(batch, training=True)
            else:
                feats, probs = self._with_features[0](batch, training=True)
                loss_ssl = self._feature_consistency(feats[n_l:n_l + n_u], feats[n_l + n_u:])
            p_l, p_w, p_s = probs[:n_l], probs[n_l:n_l + n_u], probs[n_l + n_u:]
            sample_weight = None
            if self.class_weight is not None:
                sparse = y if y.shape.rank == 1 else tf.argmax(y, -1)
                sample_weight = tf.gather(self.class_weight, sparse)
            loss_l = self.compute_loss(x=x, y=y, y_pred=p_l, sample_weight=sample_weight)
            p_w = tf.stop_gradient(tf.cast(p_w, tf.float32))
            if self.align:  # scale towards a uniform class distribution, renormalise
                self.p_model.assign(0.999 * self.p_model + 0.001 * tf.reduce_mean(p_w, 0))
                p_w = p_w / tf.maximum(self.p_model, 1e-6)
                p_w = p_w / tf.reduce_sum(p_w, -1, keepdims=True)
            if self.prior is not None:
                prior = tf.cast(self.prior(weak, training=False), tf.float32)
                weight = tf.constant(self.prior_weight, tf.float32)
                if self.prior_steps > 0:
                    done = tf.cast(self.optimizer.iterations, tf.float32) / self.prior_steps
                    weight = weight * tf.maximum(0.0, 1.0 - done)
                p_w = p_w * tf.pow(tf.maximum(prior, 1e-6), weight)
                p_w = p_w / tf.reduce_sum(p_w, -1, keepdims=True)
            confident = tf.cast(tf.reduce_max(p_w, -1) >= self.threshold, tf.float32)
            ce = keras.losses.sparse_categorical_crossentropy(tf.argmax(p_w, -1),
                                                              tf.cast(p_s, tf.float32))
            loss_u = tf.reduce_mean(ce * confident)
            loss = loss_l + self.weight * loss_u
            if self.projector is not None:
                loss = loss + self.ssl_weight * loss_ssl
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=False))
        for m in self.metrics:
            if m.name == "loss":
                m.update_state(loss)
        self.unlabeled_loss.update_state(loss_u)
        self.mask_rate.update_state(tf.reduce_mean(confident))
        if self.projector is not None:
            self.ssl_loss.update_state(loss_ssl)
        return self.compute_metrics(x, y, p_l, sample_weight=sample_weight)


def feature_layer(backbone: keras.Model, layer: str) -> keras.Model:
    """The backbone up to `layer` (its output when empty); an unknown name lists the
    backbone's layers."""
    from pretrainer.errors import ConfigError

    if not layer:
        return backbone
    names = [lay.name for lay in backbone.layers]
    if layer not in names:
        raise ConfigError(f"finetune.prior_layer='{layer}' is not a layer of the backbone. "
                          f"Choose from: {', '.join(names[1:])}")
    return keras.Model(backbone.input, backbone.get_layer(layer).output,
                       name=f"{backbone.name}_to_{layer}")


def propagation_prior(backbone: keras.Model, store, num_classes: int, *,
                      pool_max: int | None = None, layer: str = ""):
    """(prior model, facts): the labels spread over a kNN graph of the pretrained
    embedding of the labeled split + the pool (pretrainer.frozen), made inductive by a
    logistic regression on the pool's spread labels (weighted by their confidence) that
    runs inside the model: frozen backbone -> standardise -> L2-normalise -> softmax.
    The graph's k and the regression's C are chosen on the val split when it has
    examples. The backbone is used frozen, in inference mode (its BatchNorm statistics),
    up to `layer` when one is named (feature_layer)."""
    import time

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from pretrainer import frozen
    from pretrainer.baselines import dense_weights

    t0 = time.perf_counter()
    backbone = feature_layer(backbone, layer)
    featurize = frozen.image_featurizer(backbone)
    x_tr, y_tr = frozen.split_features(featurize, store, "train")
    x_va, y_va = frozen.split_features(featurize, store, "val")
    x_po, _ = frozen.split_features(featurize, store, "unlabeled",
                                    limit=pool_max or frozen.POOL_MAX)
    mean, std = frozen.pool_stats(x_po, x_tr)
    z_tr, z_po = frozen.to_unit(x_tr, mean, std), frozen.to_unit(x_po, mean, std)
    has_val = x_va is not None and len(x_va) > 0
    z_va = frozen.to_unit(x_va, mean, std) if has_val else None
    others = (x_va,) if has_val else ()
    share = frozen.class_share(y_va, y_tr, num_classes)
    grid = frozen.spread_grid((x_tr, y_tr), x_po, others, num_classes, share, (mean, std))
    choice = frozen.choose_graph({key: parts[-1].argmax(1) if has_val else None
                                  for key, (_, parts) in grid.items()},
                                 y_va if has_val else None)
    f_po = grid[choice][0]
    del grid
    x = np.concatenate([z_tr, z_po])
    y = np.concatenate([y_tr, f_po.argmax(1)])
    w = np.concatenate([np.ones(len(z_tr)), f_po.max(1) * num_classes / 2])
    fits = []
    for c in (0.1, 1.0) if has_val else (1.0,):
        lr = LogisticRegression(C=c, max_iter=300).fit(x, y, sample_weight=w)
        acc = float((lr.predict(z_va) == y_va).mean()) if has_val else 0.0
        fits.append((acc, c, lr))
    acc, c, lr = max(fits, key=lambda t: t[0])
    frozen_backbone = keras.models.clone_model(backbone)
    frozen_backbone.set_weights(backbone.get_weights())
    frozen_backbone.trainable = False
    inputs = keras.Input(shape=backbone.input_shape[1:], name="image")
    h = keras.layers.Flatten(dtype="float32")(frozen_backbone(inputs, training=False))
    h = keras.layers.Normalization(mean=mean, variance=std ** 2, dtype="float32",
                                   name="prior_standardize")(h)
    h = keras.layers.UnitNormalization(dtype="float32", name="prior_unit")(h)
    head = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                              name="prior_head")
    outputs = head(h)
    head.set_weights(dense_weights(lr, num_classes))
    model = keras.Model(inputs, outputs, name="prior")
    model.trainable = False
    facts = {"graph_k": choice[1], "graph": choice[0], "C": c, "pool": int(len(z_po)),
             "val_accuracy": round(acc, 4) if has_val else None,
             "seconds": round(time.perf_counter() - t0, 1)}
    return model, facts
