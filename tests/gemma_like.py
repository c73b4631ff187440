"""A gemma-like NNX LM for the tests: nnx.Einsum attention, nnx.vmap-stacked layers, nnx.scan."""

import dataclasses

import jax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Shape:
  """Sizes, and the attention and head variants of the flax gemma example."""

  vocab: int
  dim: int
  heads: int
  head_dim: int
  ffn: int
  layers: int
  fused_qkv: bool = False  # one 'BSD,CKDH->CBSKH' kernel for q, k, v; else q, then fused k/v
  tied: bool = True  # logits by the embedding's attend; else an nnx.Linear lm_head
  remat: bool = False


class _Attention(nnx.Module):
  def __init__(self, s: Shape, rngs: nnx.Rngs):
    if s.fused_qkv:
      self.qkv_einsum = nnx.Einsum("BSD,CKDH->CBSKH", (3, s.heads, s.dim, s.head_dim), rngs=rngs)
    else:
      self.q_einsum = nnx.Einsum("BTD,NDH->BTNH", (s.heads, s.dim, s.head_dim), rngs=rngs)
      self.kv_einsum = nnx.Einsum("BSD,CKDH->CBSKH", (2, 1, s.dim, s.head_dim), rngs=rngs)
    self.attn_vec_einsum = nnx.Einsum("BTNH,NHD->BTD", (s.heads, s.head_dim, s.dim), rngs=rngs)
    self.fused_qkv = s.fused_qkv

  def __call__(self, x_BxTxD):
    if self.fused_qkv:
      q, k, v = self.qkv_einsum(x_BxTxD)
    else:
      (k, v), q = self.kv_einsum(x_BxTxD), self.q_einsum(x_BxTxD)
    return self.attn_vec_einsum(jax.nn.dot_product_attention(q, k, v, is_causal=True))


class _Block(nnx.Module):
  def __init__(self, s: Shape, rngs: nnx.Rngs):
    self.pre_attention_norm = nnx.RMSNorm(s.dim, rngs=rngs)
    self.attn = _Attention(s, rngs)
    self.pre_ffw_norm = nnx.RMSNorm(s.dim, rngs=rngs)
    self.up = nnx.Linear(s.dim, s.ffn, rngs=rngs)
    self.down = nnx.LinearGeneral(s.ffn, s.dim, rngs=rngs)

  def __call__(self, x_BxTxD):
    x_BxTxD += self.attn(self.pre_attention_norm(x_BxTxD))
    return x_BxTxD + self.down(nnx.gelu(self.up(self.pre_ffw_norm(x_BxTxD))))


class GemmaLikeLM(nnx.Module):
  def __init__(self, s: Shape, rngs: nnx.Rngs):
    self.embedder = nnx.Embed(s.vocab, s.dim, rngs=rngs)

    @nnx.split_rngs(splits=s.layers)
    @nnx.vmap(in_axes=0, out_axes=0)
    def blocks(rngs):
      return _Block(s, rngs)

    self.layers = blocks(rngs)
    self.final_norm = nnx.RMSNorm(s.dim, rngs=rngs)
    if not s.tied:
      self.lm_head = nnx.Linear(s.dim, s.vocab, use_bias=False, rngs=rngs)
    self.tied, self.remat = s.tied, s.remat

  def __call__(self, tokens_BxT):
    def run(x_BxTxD, block):
      return block(x_BxTxD)

    run = nnx.scan(
      nnx.remat(run) if self.remat else run, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry
    )
    x_BxTxD = self.final_norm(run(self.embedder(tokens_BxT), self.layers))
    return self.embedder.attend(x_BxTxD) if self.tied else self.lm_head(x_BxTxD)
