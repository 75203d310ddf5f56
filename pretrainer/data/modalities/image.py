"""Images: stored as uint8 pixels (HWC, channels last), scaled to float32 [0, 1] by /255;
other sizes are resized bilinearly to the training size first. Training, the SavedModel
signatures, `serve` and `predict` all scale through `pixels_to_model`."""

from __future__ import annotations

import numpy as np

from pretrainer.data.modalities.base import Modality

PIXEL_MAX = 255.0
MAX_SIDE = 32  # the classical baseline block-averages images down to at most this a side


def scale_pixels(images):
    """uint8 (or 0-255 float) pixels -> float32 in [0, 1]; TensorFlow or NumPy input."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) / PIXEL_MAX
    import tensorflow as tf

    return tf.cast(images, tf.float32) / PIXEL_MAX


def pixels_to_model(images, size: tuple[int, int]):
    """A batch of uint8 images of any size -> the model's float input at `size`.

    Bilinear resize with half-pixel centres is the identity at the training size.
    """
    import tensorflow as tf

    return scale_pixels(tf.image.resize(tf.cast(images, tf.float32), size))


def decode_image_bytes(data, size: tuple[int, int], channels: int):
    """Encoded PNG/JPEG/GIF/BMP bytes (one scalar string) -> float32 [h, w, c] model input."""
    import tensorflow as tf

    img = tf.io.decode_image(data, channels=channels, expand_animations=False)
    img.set_shape([None, None, channels])
    return pixels_to_model(img[None], size)[0]


def png_files(x: np.ndarray) -> np.ndarray:
    """Model inputs (float32 [n, h, w, c] in [0, 1]) as the PNG files a client would send:
    lossless, so the SavedModel's default signature decodes exactly these pixels. A bytes
    array (numpy's S dtype keeps inner NULs, and a PNG ends with its IEND checksum)."""
    import io

    from PIL import Image

    pixels = np.rint(np.asarray(x, np.float64) * PIXEL_MAX).astype(np.uint8)  # the inverse
    out = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return np.array(out, dtype=np.bytes_)


def downsample(x: np.ndarray) -> np.ndarray:
    """Block means, so a 224x224x3 image is 28x28x3 features, not 150k."""
    f = max(1, -(-max(x.shape[1], x.shape[2]) // MAX_SIDE))
    if f == 1:
        return x
    h, w = x.shape[1] // f * f, x.shape[2] // f * f
    x = x[:, :h, :w]
    return x.reshape(len(x), h // f, f, w // f, f, x.shape[-1]).mean(axis=(2, 4))


class ImageModality(Modality):
    def example_features(self, row) -> dict:
        import tensorflow as tf

        return {"image": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[np.asarray(row).tobytes()]))}

    def entry_spec(self, manifest) -> dict:
        h, w, c = manifest.shape
        encoded = {"image_bytes": f"string [batch]: encoded PNG/JPEG/GIF/BMP of any size, "
                                  f"resized to {h}x{w} (TF Serving: {{\"b64\": ...}})"}
        return {
            "saved_model": {
                "serving_default": encoded,
                "serve_bytes": encoded,
                "serve_pixels": {"images": f"uint8 [batch, height, width, {c}] pixels 0-255, "
                                           f"any height and width (resized to {h}x{w})"},
                "serve_float": {"images": f"float32 [batch, {h}, {w}, {c}], pixels/255 in "
                                          f"[0, 1]"},
            },
            "tensor": {"name": "images", "dtype": "float32", "shape": [None, h, w, c],
                       "layout": "NHWC (channels last)", "range": [0.0, 1.0],
                       "preprocessing": f"resize to {h}x{w} (bilinear), divide by 255",
                       "color": "grayscale" if c == 1 else "RGB"},
        }

    def signatures(self, model, manifest, outputs) -> dict:
        import tensorflow as tf

        h, w, c = model.input_shape[1:]

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, c], tf.uint8,
                                                    name="images")])
        def serve_pixels(images):
            return outputs(model(pixels_to_model(images, (h, w)), training=False))

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32,
                                                    name="images")])
        def serve_float(images):
            return outputs(model(images, training=False))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(image_bytes):
            x = tf.map_fn(lambda b: decode_image_bytes(b, (h, w), c), image_bytes,
                          fn_output_signature=tf.TensorSpec([h, w, c], tf.float32))
            return outputs(model(x, training=False))

        # the default takes encoded images, as TF Serving's own image tutorial sends them
        # ({"instances": [{"b64": ...}]}); serve_bytes stays as its name for older clients
        return {"serving_default": serve_bytes, "serve_bytes": serve_bytes,
                "serve_pixels": serve_pixels, "serve_float": serve_float}

    def client_inputs(self, manifest, x, fmt: str) -> dict:
        if fmt == "saved_model":
            return {"image_bytes": png_files(x)}
        return {"images": np.asarray(x, np.float32)}

    def card_input(self, manifest) -> str:
        h, w, c = manifest.shape
        return (f"{'grayscale' if c == 1 else 'RGB'} images; the SavedModel takes uint8 pixels "
                f"of any size or encoded image bytes and resizes to {h}x{w} itself; LiteRT and "
                f"ONNX take float32 [batch, {h}, {w}, {c}] pixels/255")

    def card_usage(self, name: str, manifest) -> list[str]:
        h, w, c = manifest.shape
        return [f"Input: images, {'grayscale' if c == 1 else 'RGB'}, trained at {h}x{w}. "
                f"Labels are indices into this order: "
                + ", ".join(f"{i} = {n}" for i, n in enumerate(manifest.class_names)) + ".",
                "", "TF Serving (REST): an image file of any size (the default signature "
                "decodes and resizes it), or uint8 pixels (`serve_pixels`):", "",
                "```bash",
                f"curl -s localhost:8501/v1/models/{name}:predict -d "
                "'{\"instances\": [{\"b64\": \"'$(base64 -w0 image.png)'\"}]}'",
                f"curl -s localhost:8501/v1/models/{name}:predict -d "
                "'{\"signature_name\": \"serve_pixels\", \"instances\": "
                f"[{'[[0, 0], [0, 0]]' if c == 1 else '[[[0,0,0]]]'}]}}'", "```", ""]

    def classical_describe(self, regression: bool) -> str:
        return "logistic regression on pixels"

    def classical_features(self, x):
        x = np.asarray(x, np.float32)
        x = downsample(x / PIXEL_MAX if x.size and x.max() > 1.0 else x)
        return x.reshape(len(x), -1)

    def classical_candidates(self, regression: bool, n: int, c_grid) -> list:
        from sklearn.linear_model import LogisticRegression

        return [(f"C={c:g}", LogisticRegression(C=c, max_iter=500)) for c in c_grid]


IMAGE = ImageModality(
    name="image", stored={"image": "raw uint8 bytes, row-major HWC"}, dtype="uint8",
    user_input="a folder of images", input_kind="folder",
    predict_signature=("serve_float", "images"), card_tag="image-classification",
    tensor_name="images", pixels=True, classical_exact=True,
    card_call="image_bytes=tf.constant([open(\"shoe.png\", \"rb\").read()])")
