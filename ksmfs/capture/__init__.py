"""Capture real processes' memory as KSM's scan sees it, and estimate what KSM would do.

procfs.py (the /proc readers) <- take.py (``ksmfs capture``) -> format.py (the file) ->
build.py (a simulated Kernel from a capture) <- estimate.py (run to convergence, report)
<- cli.py (the two subcommands).
"""
