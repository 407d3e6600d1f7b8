"""Model weights and encoders: where weights come from (`sources`, with the model shape
configs in `configs/`) and text embeddings (`embedding`)."""
