"""A Flax NNX LLaMA with scanned layers and logical sharding annotations."""
