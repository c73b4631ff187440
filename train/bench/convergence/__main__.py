"""``python -m train.bench.convergence``: the queue's stages, then the report."""

import pathlib

from train import loop
from train.bench import convergence
from train.bench import harness
from train.bench.convergence import protocol
from train.bench.convergence import stages
from train.bench.convergence.store import Store


def main() -> None:
  parser = harness.parser(convergence.__doc__, "convergence")
  parser.add_argument(
    "--only",
    choices=stages.STAGES,
    action="append",
    help="stage(s) to run (repeatable); default: all, in order",
  )
  parser.add_argument(
    "--work",
    type=pathlib.Path,
    default=pathlib.Path("runs/convergence"),
    help="run folders; completed ones are adopted",
  )
  parser.add_argument("--steps", type=int, default=protocol.STEPS, help="steps of a tiny run")
  parser.add_argument(
    "--small-steps", type=int, default=protocol.STEPS, help="steps of a small run"
  )
  parser.add_argument("--reps", type=int, default=20, help="timed rounds per optimizer")
  args = parser.parse_args()
  store = Store(args.out / "runs", args.work, args.steps, args.small_steps, loop.train)
  stages.run_stages(store, args.only or stages.STAGES, args.out, args.reps)


if __name__ == "__main__":
  main()
