"""Pipeline stages (docs/design.md, sections 2-6): each has a ``name`` and ``run(ctx)``, reads
the context's problem, k, start vector and best point, and offers candidate points; the planner
(``chita_core._pipeline``) decides which run. ``nspace`` holds the n-space algebra they share."""
