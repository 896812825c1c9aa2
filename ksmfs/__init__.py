"""ksmfs: a simulated Linux kernel with KSM, served as a FUSE file system.

Layering (dependencies point one way): ``kernel`` (pure simulation) <- ``kfs`` (the file
table: render and parse) <- ``fuse`` (pyfuse3 adapter) <- ``runtime`` (trio) <- ``cli``.
``scenario`` drives either the simulated kernel or the machine's real one.
"""

__version__ = "0.1.0"
