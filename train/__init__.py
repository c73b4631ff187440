"""Pretraining a Flax LLaMA with swan-optax on a device mesh: data, steps, checkpoints, CLI."""
