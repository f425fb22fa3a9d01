"""Run ANTsPy SyN on one pair; executed with ANTsPy's own Python (``setup_ants_env.sh``).

The benchmark worker calls it through a subprocess::

    /work/venvs/ants/bin/python benchmarks/peers/ants_syn.py --fixed F.npy --moving M.npy --out DIR

Inputs are ``.npy`` arrays ``(*spatial)`` (2D or 3D, 1 mm voxels). ANTsPy keeps numpy's axis
order (ITK index axis ``i`` is array axis ``i``) and, with unit spacing, zero origin and an
identity direction, physical millimetres equal voxels; so the composite forward transform,
written by ``antsApplyTransforms`` as a displacement field ``T(x) - x`` at the fixed grid,
is directly a field in the package convention (pull-back, channel ``i`` along array axis
``i``). Writes ``DIR/ddf.npy`` ``(D, *spatial)`` float32 and ``DIR/result.json`` with the
seconds of ``ants.registration`` alone and its peak memory (``benchmarks/memory.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.memory
from benchmarks.memory import measure  # noqa: E402

import ants  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed", required=True)
    parser.add_argument("--moving", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--transform", default="SyN", help="ants.registration type_of_transform (default SyN)")
    parser.add_argument("--seed", type=int, default=0, help="random_seed of ants.registration")
    parser.add_argument("--keywords", default="{}", help="JSON dict of further ants.registration keywords "
                                                         "(e.g. syn_metric, syn_sampling, reg_iterations)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fixed = ants.from_numpy(np.load(args.fixed).astype(np.float32))
    moving = ants.from_numpy(np.load(args.moving).astype(np.float32))
    reg, seconds, peak_mb = measure(
        ants.registration, fixed, moving, type_of_transform=args.transform, random_seed=args.seed,
        **json.loads(args.keywords)
    )
    with tempfile.TemporaryDirectory() as tmp:
        composite = ants.apply_transforms(fixed, moving, reg["fwdtransforms"], compose=str(Path(tmp) / "composite"))
        field = ants.image_read(composite).numpy()
    ddf = np.moveaxis(field, -1, 0).astype(np.float32)
    np.save(out / "ddf.npy", ddf)
    (out / "result.json").write_text(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "ants": ants.__version__}))


if __name__ == "__main__":
    main()
