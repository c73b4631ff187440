"""Convergence benchmark: tuned Adam vs SWAN vs SinkGD, ablations and a second model size.

Run: ``python -m train.bench.convergence [--only STAGE] [--work DIR]``. The
protocol: 240 steps x 16 x 256 tokens, linear warmup over 10% then cosine to
10%, evaluation every 20 steps on 8 batches, gradient clipping 1.0 and weight
decay 0 for every optimizer (so "AdamW" is Adam), data seed = init seed = the
run's seed. Stages, in priority order:

* ``sweep``: seed 0 over a 2x-spaced learning-rate grid per variant (Adam with
  beta2 0.95 and 0.999, SWAN, SinkGD's global lr), widened by 2x while the best
  sits at an edge;
* ``seeds``: seeds 1 and 2 at each variant's best;
* ``ablations``: seeds 0 and 1 of variants that say where the gain comes from;
* ``small``: the ``small`` model (6.8M params) at each best tiny lr and its 2x
  neighbours, widened 2x while the best sits at an edge, then Adam with its
  embeddings at SinkGD's lr and SWAN by Polar Express at its best small lr;
* ``timing``: each optimizer's median step time (tiny and small), interleaved in this process;
* ``report``: the tables, plot and summary, from the run JSONs alone.

Every finished run is kept as ``OUT/runs/TAG.json`` (settings and evaluation
record) and reused; a completed run folder ``WORK/TAG`` (``metrics.jsonl`` +
``summary.json``) is adopted instead of re-run. Writes ``OUT/convergence.md``,
``OUT/convergence.png`` and ``OUT/convergence.json``.
"""
