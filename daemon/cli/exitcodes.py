"""Exit codes of the ``ferry`` CLI; documented in docs/cli.md, keep both in step."""

OK = 0
FAILED = 1  # the operation ran and failed (bad bundle, flash error, ...)
USAGE = 2  # argparse's own code for bad arguments
NOT_RUNNING = 3  # ferryd is not reachable and the command needs it
DENIED = 4  # the caller may not change state (not root, not in group `ferry`)
CANCELLED = 5  # the operation was cancelled
INTERRUPTED = 130  # Ctrl-C
