"""Data: sources (where examples come from), store (TFRecord shards), pipeline (tf.data)."""
