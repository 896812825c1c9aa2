"""prctl(PR_SET_MEMORY_MERGE, 1), then exec the rest of the command line: the program
starts with merge_any set (MMF_VM_MERGE_ANY survives execve; spec §9)."""

import ctypes
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(67, 1, 0, 0, 0) != 0:  # PR_SET_MEMORY_MERGE
    sys.exit(f"prctl(PR_SET_MEMORY_MERGE): {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
