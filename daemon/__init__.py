"""The retentiond process, top floor: the CLI, supervision and signals, the scheduler loop (its
periodic jobs: planning, the relay, the reconciler), the worker processes, and the web side
(``daemon/web``)."""
