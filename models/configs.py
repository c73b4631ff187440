"""LLaMA model configurations: frozen dataclasses with named presets."""

import dataclasses
import math
from typing import Literal


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shape and numerics of a LLaMA (RMSNorm, RoPE, SwiGLU, untied lm_head)."""

  vocab_size: int
  dim: int
  ffn_dim: int
  num_layers: int
  num_heads: int
  head_dim: int = 64
  max_seq_len: int = 256
  norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  init_std: float = 0.02
  dtype: Literal["float32", "bfloat16"] = "float32"  # activations
  param_dtype: Literal["float32", "bfloat16"] = "float32"  # params, hence gradients

  def __post_init__(self):
    names = ("vocab_size", "dim", "ffn_dim", "num_layers", "num_heads", "head_dim", "max_seq_len")
    sizes = {k: getattr(self, k) for k in names}
    bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
      raise ValueError(f"LlamaConfig sizes must be positive integers, got {bad}")
    scales = {k: getattr(self, k) for k in ("norm_eps", "rope_theta", "init_std")}
    bad = {k: v for k, v in scales.items() if not (isinstance(v, int | float) and 0 < v < math.inf)}
    if bad:
      raise ValueError(f"LlamaConfig norm_eps, rope_theta, init_std must be positive, got {bad}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"{name} must be 'float32' or 'bfloat16', got {getattr(self, name)!r}")

  @property
  def num_params(self) -> int:
    """Parameter count: untied embedding and head, 4 d^2 attention, 3 d f MLP, 2 norms a layer."""
    per_layer = 4 * self.dim * self.num_heads * self.head_dim + 3 * self.dim * self.ffn_dim
    return 2 * self.vocab_size * self.dim + self.num_layers * (per_layer + 2 * self.dim) + self.dim


def _tiny_family(dim: int = 128, num_layers: int = 4) -> LlamaConfig:
  """The tiny model at another width or depth; vocabulary, head_dim and ffn/dim kept."""
  return LlamaConfig(
    vocab_size=2048,
    dim=dim,
    ffn_dim=dim * 43 // 16,
    num_layers=num_layers,
    num_heads=dim // 32,
    head_dim=32,
  )


# The LLaMA sizes of the GaLore benchmark, on which the SWAN and SinkGD papers report
# (head_dim 64), a tiny model for CPUs, and the tiny model's width and depth ladder.
CONFIGS: dict[str, LlamaConfig] = {
  "tiny": _tiny_family(),
  # ~6.9M params: the second size of the convergence benchmark, still trainable on CPUs.
  "small": LlamaConfig(vocab_size=4096, dim=256, ffn_dim=688, num_layers=6, num_heads=4),
  "60m": LlamaConfig(vocab_size=32000, dim=512, ffn_dim=1376, num_layers=8, num_heads=8),
  "130m": LlamaConfig(vocab_size=32000, dim=768, ffn_dim=2048, num_layers=12, num_heads=12),
  "350m": LlamaConfig(vocab_size=32000, dim=1024, ffn_dim=2736, num_layers=24, num_heads=16),
  "1b": LlamaConfig(vocab_size=32000, dim=2048, ffn_dim=5461, num_layers=24, num_heads=32),
  **{f"tiny-w{dim}": _tiny_family(dim=dim) for dim in (64, 256, 512)},
  **{f"tiny-l{layers}": _tiny_family(num_layers=layers) for layers in (2, 8)},
}


def get_config(name: str, **overrides) -> LlamaConfig:
  """The preset ``name`` with some fields replaced, e.g. ``get_config('60m', max_seq_len=512)``."""
  if name not in CONFIGS:
    raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}")
  unknown = set(overrides) - {f.name for f in dataclasses.fields(LlamaConfig)}
  if unknown:
    raise ValueError(f"unknown LlamaConfig fields {sorted(unknown)}")
  return dataclasses.replace(CONFIGS[name], **overrides)
