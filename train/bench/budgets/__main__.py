"""``python -m train.bench.budgets``: the queue, the whitening pairs, the report."""

import pathlib

from train.bench import budgets
from train.bench import harness
from train.bench.budgets import protocol
from train.bench.budgets import report
from train.bench.budgets import search
from train.bench.budgets import timing
from train.bench.budgets.runner import Runner


def main() -> None:
  parser = harness.parser(budgets.__doc__, "budgets")
  parser.add_argument("--only", choices=("queue", "whitening", "timing", "report"), action="append")
  parser.add_argument("--stage", type=int, nargs="+", help="queue: these STAGES (0-based) only")
  parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("runs/budgets"))
  parser.add_argument("--runs", type=pathlib.Path, default=protocol.RUNS, help="the run JSONs")
  parser.add_argument("--reps", type=int, default=15, help="timing: rounds per optimizer")
  args = parser.parse_args()
  runner = Runner(args.runs, args.work)
  for what in args.only or ("queue", "report"):
    if what == "queue":
      chosen = search.STAGES if args.stage is None else tuple(search.STAGES[i] for i in args.stage)
      search.queue(runner, chosen)
    elif what == "whitening":
      search.whitening(runner)
    elif what == "timing":
      steps = {size: timing.step_times(runner, size, args.reps) for size in protocol.BUDGETS}
      harness.save_step_times(args.out, args.reps, steps)
    else:
      report.report(runner, args.out)
      report.quote_in_readme((args.out / "budgets.md").read_text())


if __name__ == "__main__":
  main()
