"""Speed and accuracy benchmark of registration methods on the real shared data.

Not part of the test suite. Run from the repository root (see ``benchmarks/README.md``)::

    .venv/bin/python -m benchmarks.run --quick
"""
