"""Speed and accuracy benchmark of registration methods on the real shared data.

Not part of the test suite. Run from the repository root (see ``benchmarks/README.md``)::

    .venv/bin/python -m benchmarks.run --quick
"""

import os
from pathlib import Path

#: the shared data folder (``$MONAI_DIFFREG_SHARED/data``, default ``../shared/data`` beside the repository)
DEFAULT_DATA_DIR = Path(os.environ.get("MONAI_DIFFREG_SHARED", Path(__file__).resolve().parents[1].parent / "shared")) / "data"


def positive_number_or(parser, option: str, text: str, keyword: str) -> float | str:
    """``text`` of ``option`` as ``keyword`` itself or a positive finite number, or end with the parser's one-line
    error (status 2)."""
    if text == keyword:
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        parser.error(f"{option} must be a positive number or {keyword!r}, got {text!r}")
    return value


def make_output_folder(parser, folder: Path) -> None:
    """Create a script's ``--output`` folder, or end with the parser's one-line error (status 2) naming why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--output {str(folder)!r} is not a usable folder: {error.strerror or error}")
