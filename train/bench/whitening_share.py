"""The whitening's share of a 1.3B LLaMA training step's FLOPs at the papers' 131K-token batch.

Run: ``python -m train.bench.whitening_share``. Nothing is allocated: the train step is built
abstract (``jax.ShapeDtypeStruct`` state and batch) and its matmul FLOPs counted from its
program, each loop body once per trip (XLA's ``cost_analysis`` counts a loop body once, so
would count one layer of the scanned stack and one whitening step). The step's matmuls are the
model's forward and backward pass plus the optimizer's; Adam adds none, so an optimizer's share
is ``update / (model + update)`` with ``update`` its update's FLOPs on the params. Writes
``train/bench/results/whitening_share.md``.
"""

import jax
import optax

import swan_optax
from swan_optax.primitives import DEFAULT_METHOD
from swan_optax.primitives import DEFAULT_STEPS
from train import optimizer
from train.bench import harness
from train.bench import scaling
from train.bench import whitening_cost
from train.config import TrainConfig
from train.config import model_data
from train.optimizers import optimizer_config

SEQ_LEN = 256
WHITENINGS = (("gram_polar_express", 5), ("polar_express", 5), ("polar_express", 8))


def model_flops(model: str, tokens: int) -> int:
  """Matmul FLOPs of one Adam train step of ``model`` on ``tokens`` tokens (Adam adds none)."""
  config = TrainConfig(
    model=model,
    data=model_data(model, seq_len=SEQ_LEN),
    optimizer=optimizer_config("adam"),
    steps=1000,
    batch_size=tokens // SEQ_LEN,
  )
  exp = harness.experiment(config, abstract=True)
  return whitening_cost.matmul_flops(exp.train_step, exp.state, exp.batch_spec())


def update_flops(model: str, tx) -> int:
  """Matmul FLOPs of ``tx``'s update of ``model``'s params (abstract)."""
  exp = harness.experiment(
    TrainConfig(model=model, data=model_data(model, seq_len=SEQ_LEN)), abstract=True
  )
  params = exp.state.params
  return whitening_cost.matmul_flops(lambda p: tx.update(p, tx.init(p), p)[0], params)


def optimizers(model: str) -> dict[str, optax.GradientTransformation]:
  """Label -> the optimizer whose update is counted: Muon, and SWAN by each whitening."""
  exp = harness.experiment(TrainConfig(model=model), abstract=True)
  dims = optimizer.dimension_numbers(exp.model_config)
  muon = optimizer.make_optimizer(optimizer_config("muon"), 1000, dimension_numbers=dims)
  out = {"Muon (optax, 5 Newton-Schulz steps)": muon}
  for method, steps in WHITENINGS:
    swan = swan_optax.swan(dimension_numbers=dims, method=method, ns_steps=steps)
    default = (method, steps) == (DEFAULT_METHOD, DEFAULT_STEPS[DEFAULT_METHOD])
    out[f"SWAN, {method} {steps}" + " (default)" * default] = swan
  return out


def main() -> None:
  parser = harness.parser(__doc__, "whitening_share.md")
  parser.add_argument("--model", default="1b")
  parser.add_argument("--tokens", type=int, default=scaling.PAPER_TOKENS)
  args = parser.parse_args()
  model = model_flops(args.model, args.tokens)
  rows = []
  for label, tx in optimizers(args.model).items():
    update = update_flops(args.model, tx)
    rows.append([label, f"{update / 1e12:.1f}", f"{100 * update / (model + update):.1f}%"])
  params = sum(
    x.size
    for x in jax.tree.leaves(
      harness.experiment(TrainConfig(model=args.model), abstract=True).state.params
    )
  )
  text = (
    f"`python -m train.bench.whitening_share` — {args.model} ({params / 1e9:.2f}B params), "
    f"{args.tokens:,} tokens per step ({args.tokens // SEQ_LEN} x {SEQ_LEN}): the model's "
    f"forward and backward pass is {model / 1e15:.3f} PFLOP (matmuls). Share: the update's "
    "matmul FLOPs over the whole step's.\n\n"
    + harness.markdown_table(["optimizer", "update TFLOP", "share of the step"], rows, "lrr")
  )
  harness.save(text, args.out)


if __name__ == "__main__":
  main()
