"""testhooks: code that exists only so tests can reach states production cannot order.

Everything here is inert unless a test sets its environment variable
(``FERRY_TEST_KILL_AT`` for ``killpoint``); production configs have no way to turn it
on. It sits beside the core because the journal and every install step call it, and it
imports nothing of ferry's.
"""
