"""The retentiond process: configuration, broker setup, supervision, scheduler and side server."""
