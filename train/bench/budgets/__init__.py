"""Optimizers at the budgets people train at: multiples of Chinchilla, from WSD cooldown branches.

Run: ``python -m train.bench.budgets [--only queue|whitening|timing|report] [--stage N ...]``.
A budget is a multiple of Chinchilla's 20 tokens per parameter, counting every parameter of
the model (embedding and lm_head included): tiny-w64 has 460,352, so 1x is 9.2M tokens,
2,248 steps of 16 x 256. Every run uses the other benchmarks' data, batch, sequence length
and clipping (1.0); the shipped corpus's 1.76M training tokens make that 5.2 passes over it
(the report gives each budget's), so the larger budgets train on repeated data. Every run
uses the warmup-stable-decay schedule (Hägele et al., arXiv 2405.18392):
a fixed linear warmup, the peak lr, then a linear decay to 0 over the last 20% of the run.
One stable-phase run (the *trunk*) per optimizer setting gives every budget: the budget's
run resumes the trunk's checkpoint at its decay start and decays from there (a *branch*), so
a trunk taken to 0.8x of the largest budget yields all of them for 1.2x its steps.

Optimizers, each tuned alike: a 4-point lr grid 2x apart, widened while the best sits at an
edge; then, at the best lr, its Adam group's lr (Adam: the embedding and lm_head lr) at 2x
and 0.5x its default ratio, widened likewise. Adam b2 0.95 everywhere (its Adam group too);
plain Adam is the Adam grid's own points. ``queue`` runs ``STAGES`` in order, resumably (a
killed run resumes from its last checkpoint, kept under ``--work``: a folder outside the
checkout outlives a fresh one); every finished branch keeps its JSON in ``--runs``. Several
processes may run the queue at once: each locks a trunk (or a cosine run) while it trains it,
passes over the ones another process holds, then waits for them.
``whitening`` runs SWAN with each cheaper whitening of ``WHITENINGS`` next to the grid's (8
Polar Express steps) at SWAN's best point, every seed. ``timing`` times each optimizer's train
step per width side by side in one process (``OUT/timing.json``; run it with nothing else
training): the wall-clock fractions are the token fractions times these step-time ratios.
``report`` writes, from those JSONs,
``OUT/budgets.md`` (per budget each optimizer's best point; token fractions and best lrs by
budget; the trainer's defaults against the best points; WSD against cosine; the whitening
pairs), ``.json`` and ``.png`` (token fraction against budget, final loss against lr), and
the README's quote of it.

Modules: ``protocol`` (budgets, optimizers and their points), ``runner`` (trunks, branches
and their JSONs), ``search`` (the grids and the queue's stages), ``timing``, ``report`` and
``plot``.
"""
