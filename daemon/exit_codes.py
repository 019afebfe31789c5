"""Named process exit codes, in the spirit of dramatiq's RET_* constants."""

RET_OK = 0  # clean stop (including a graceful SIGTERM)
RET_ERROR = 1  # unexpected failure at run time
RET_CONFIG = 2  # a bad setting or command line (argparse usage errors too), a database needing `migrate`: one line names it
RET_CONNECT = 3  # the database or broker could not be reached at start
RET_SHUTDOWN_TIMEOUT = 4  # workers had to be killed after the shutdown timeout
RET_NOT_FOUND = 5  # a contact or campaign named on the command line does not exist
RET_REJECTED = 6  # the command did its work but refused part of its input (invalid CSV rows, listed on stderr)
