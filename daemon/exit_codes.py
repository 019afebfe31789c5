"""Named process exit codes, in the spirit of dramatiq's RET_* constants."""

RET_OK = 0  # clean stop (including a graceful SIGTERM)
RET_ERROR = 1  # unexpected failure at run time
RET_CONFIG = 2  # a bad setting or command line: one line on stderr names it
RET_CONNECT = 3  # the database or broker could not be reached at start
RET_SHUTDOWN_TIMEOUT = 4  # workers had to be killed after the shutdown timeout
