"""The retentiond process, top floor: the CLI, supervision and signals, the scheduler loop and the
outbox relay, the worker processes, and the web side (``daemon/web``)."""
