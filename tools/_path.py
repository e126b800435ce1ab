"""Import this first in every script of tools/: it puts this checkout first on sys.path.

`python tools/X.py` (from the repository root or any other folder, without PYTHONPATH) then
imports the `engine` of the checkout the script lives in, never another copy installed in the
Python environment, and finds the helper modules of tools/ (`_bench_common`, ...).
"""
import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)

for _folder in (TOOLS, ROOT):          # ROOT ends up first
    while _folder in sys.path:
        sys.path.remove(_folder)
    sys.path.insert(0, _folder)
