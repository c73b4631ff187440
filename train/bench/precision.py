"""Whitening accuracy under emulated GPU matmul precisions (bf16, TF32 inputs; f32 accumulation).

Run: ``python -m train.bench.precision``. Every product of each iterative
whitening method goes through a matmul whose inputs are first rounded to bf16
(8-bit mantissa) or TF32 (10-bit mantissa), accumulated in float32; ``f32`` is
exact float32 inputs. Inputs: GradNorm-ed gradients of one step of the tiny and
60m LLaMA (layer 0, from the Shakespeare corpus) and GradNorm-ed Gaussians
(wide, tall, square). Reported: cosine to the exact (pseudo-)polar factor
(float64 SVD) and the range of the nonzero singular values after the rescale,
divided by ``sqrt(max(fan_in, fan_out))`` (1.00-1.00 is exact). Writes
``train/bench/results/precision.md``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import configs
from models import llama
from swan_optax import primitives
from train import data
from train import optimizer
from train.bench import harness

METHODS = ("newton_schulz", "polar_express", "quintic")
KERNELS = ("q", "o", "gate", "down")
ATTENTION = ("q", "k", "v", "o")
EXACT_RTOL = 1e-6  # singular values under it x the largest count as zero


def round_mantissa(x: jax.Array, bits: int) -> jax.Array:
  """``x`` (float32) rounded to nearest-even, ``bits`` mantissa bits kept (bf16: 7, TF32: 10)."""
  drop = 23 - bits
  word = jax.lax.bitcast_convert_type(x, jnp.uint32)
  half = jnp.uint32((1 << (drop - 1)) - 1) + ((word >> drop) & 1)
  word = (word + half) & jnp.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
  return jax.lax.bitcast_convert_type(word, jnp.float32)


# Input rounding of each emulated precision (None: exact float32).
PRECISIONS = {"f32": None, "tf32": 10, "bf16": 7}


def emulated_matmul(bits: int | None):
  """``a @ b`` with both inputs rounded to ``bits`` mantissa bits, accumulated in float32."""
  exact = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  if bits is None:
    return exact
  return lambda a, b: exact(round_mantissa(a, bits), round_mantissa(b, bits))


def whiten_emulated(x: jax.Array, method: str, precision: str) -> jax.Array:
  """The rescaled polar factor of one GradNorm-ed matrix with emulated matmuls."""
  matmul = emulated_matmul(PRECISIONS[precision])
  steps = primitives.DEFAULT_STEPS[method]
  return primitives.rescale(primitives.polar_factor(x, method, steps, 0.5, 1e-8, matmul), 1e-8)


def accuracy(x: np.ndarray, result: np.ndarray) -> tuple[float, float, float]:
  """Cosine to the exact pseudo-polar factor; nonzero singular values' range / sqrt(max dim)."""
  x, result = np.asarray(x, np.float64), np.asarray(result, np.float64)
  cosine = harness.cosine_to_polar(result, x, rtol=EXACT_RTOL)
  rank = np.linalg.matrix_rank(x, tol=EXACT_RTOL * np.linalg.norm(x, 2))
  sv = np.linalg.svd(result, compute_uv=False)[:rank] / np.sqrt(max(x.shape))
  return cosine, float(sv.min()), float(sv.max())


def gaussian_inputs(seed: int = 0) -> dict[str, np.ndarray]:
  shapes = {"gaussian wide 512x1376": (512, 1376), "gaussian tall 1376x512": (1376, 512)}
  shapes["gaussian square 512x512"] = (512, 512)
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  return {k: jax.random.normal(key, s) for key, (k, s) in zip(keys, shapes.items(), strict=True)}


def gradient_inputs(
  name: str,
  batch_size: int = 8,
  seq_len: int = 128,
  train_steps: int = 0,
  kernels: tuple[str, ...] = KERNELS,
) -> dict[str, jax.Array]:
  """Layer 0's ``kernels``' gradients, as matrices, on one batch after ``train_steps`` steps of
  Adam (lr 1e-3; no matmuls, so cheap on CPU) from init; named ``NAME [@STEPS] KERNEL MxN``."""
  config = configs.get_config(name, max_seq_len=seq_len)
  # A small BPE vocabulary is enough for one gradient; token ids stay below the model's vocab.
  vocab = min(config.vocab_size, data.DEFAULT_VOCAB_SIZE)
  corpus = data.load_corpus(data.DataConfig(vocab_size=vocab, seq_len=seq_len))
  batches = data.train_batches(corpus, batch_size=batch_size, seq_len=seq_len, seed=0)
  graphdef, params = llama.init_params(config, harness.one_device_mesh(), seed=0)
  dims = optimizer.dimension_numbers(config)

  def loss(params, batch):
    logits = llama.apply(graphdef, params, batch["inputs"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

  grad = jax.jit(jax.grad(loss))
  if train_steps:
    tx = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, batch):
      updates, opt_state = tx.update(grad(params, batch), opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for _ in range(train_steps):
      params, opt_state = step(params, opt_state, next(batches))
  grads = grad(params, next(batches))
  out = {}
  for kernel in kernels:
    group = "attn" if kernel in ATTENTION else "mlp"
    leaf, leaf_dims = (
      grads["layers"][group][kernel]["kernel"],
      dims["layers"][group][kernel]["kernel"],
    )
    matrix = primitives.matrix_view(leaf.shape, leaf_dims).to_matrices(leaf)[0]
    when = f" @{train_steps}" if train_steps else ""
    out[f"{name}{when} {kernel} {matrix.shape[0]}x{matrix.shape[1]}"] = matrix
  return out


def table_inputs(models: str) -> dict[str, jax.Array]:
  """The table's inputs: layer 0's kernel gradients of each comma-separated model, then the
  Gaussians."""
  inputs = {}
  for name in models.split(","):
    inputs |= gradient_inputs(name)
  return inputs | gaussian_inputs()


def measure(inputs: dict[str, jax.Array]) -> list[dict]:
  rows = []
  for label, x in inputs.items():
    x = primitives.standardize(jnp.asarray(x, jnp.float32))
    row = {"input": label}
    for method in METHODS:
      for precision in PRECISIONS:
        result = jax.jit(whiten_emulated, static_argnums=(1, 2))(x, method, precision)
        row[method, precision] = accuracy(np.asarray(x), np.asarray(result))
    rows.append(row)
    print(label, flush=True)
  return rows


def to_markdown(rows: list[dict]) -> str:
  columns = [(m, p) for m in METHODS for p in PRECISIONS]
  default = {(m, primitives.input_precision(primitives.DEFAULT_PRECISION[m])) for m in METHODS}
  header = " | ".join(f"{m} {p}" + " (default)" * ((m, p) in default) for m, p in columns)
  lines = [
    "`python -m train.bench.precision` — emulated matmul precision (inputs rounded to bf16 / "
    "TF32, float32 accumulation; f32: exact float32), default steps (newton_schulz 10, "
    "polar_express 8, quintic 5). Each cell: cosine to the exact (pseudo-)polar factor, and "
    "[min-max] of the nonzero singular values after the rescale / sqrt(max(fan_in, fan_out)). "
    "Inputs are GradNorm-ed; kernels are layer 0 of the model after one batch at init, as "
    "(fan_in x fan_out) matrices.",
    "",
    f"| input | {header} |",
    "|---|" + "---|" * len(columns),
  ]
  for r in rows:
    cells = " | ".join(f"{r[c][0]:.4f} [{r[c][1]:.2f}-{r[c][2]:.2f}]" for c in columns)
    lines.append(f"| {r['input']} | {cells} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = harness.parser(__doc__, "precision.md")
  parser.add_argument("--models", default="tiny,60m")
  args = parser.parse_args()
  harness.save(to_markdown(measure(table_inputs(args.models))), args.out)


if __name__ == "__main__":
  main()
