"""The simulated kernel: pure Python + numpy, no trio, no pyfuse3, its own clock.

Layering inside: ``mm`` (tasks, VMAs, frames) <- ``ksm`` (ksmd) <- ``kernel`` (syscalls,
the facade); ``knobs`` parses sysfs writes; ``smaps`` accounts per VMA; ``versions``
says what each release exposes.
"""

from __future__ import annotations

from .errors import KsmError as KsmError
from .kernel import (
    MADV_MERGEABLE as MADV_MERGEABLE,
)
from .kernel import (
    MADV_UNMERGEABLE as MADV_UNMERGEABLE,
)
from .kernel import (
    PR_GET_MEMORY_MERGE as PR_GET_MEMORY_MERGE,
)
from .kernel import (
    PR_SET_MEMORY_MERGE as PR_SET_MEMORY_MERGE,
)
from .kernel import (
    Kernel as Kernel,
)
from .mm import PAGE_SIZE as PAGE_SIZE
from .smaps import SmapsCounts as SmapsCounts
from .versions import DEFAULT_VERSION as DEFAULT_VERSION
from .versions import SUPPORTED as SUPPORTED
from .versions import get_profile as get_profile
