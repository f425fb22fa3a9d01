"""What bad user input raises: the exceptions the CLI and ``monai.bundle run`` report as one line.

Torch-free, so the CLI can catch them before anything heavy is imported.
"""

from __future__ import annotations

__all__ = ["USER_ERRORS"]

#: exceptions whose message is a complete one-line answer to the user (a wrong option, file or input);
#: anything else is a bug and keeps its traceback
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, FileNotFoundError, KeyError)
