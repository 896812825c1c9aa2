"""The simulation core is pure: importing it loads neither trio nor pyfuse3."""

from __future__ import annotations

import subprocess
import sys


def test_kernel_imports_neither_trio_nor_pyfuse3() -> None:
    """ksmfs.kernel (and a whole simulated run) pulls in no async or FUSE library."""
    code = (
        "import sys, numpy as np\n"
        "from ksmfs.kernel import Kernel, knobs\n"
        "k = Kernel(); p = k.spawn('a'); a = k.mmap(p, 4); k.write(p, a, [1, 1, 2, 2])\n"
        "k.madvise(p, a, 4, 12); knobs.store(k, 'run', b'1')\n"
        "[k.ksmd_step() for _ in range(3)]\n"
        "print(sorted(m for m in ('trio', 'pyfuse3') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
