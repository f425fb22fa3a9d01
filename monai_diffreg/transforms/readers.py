"""A MONAI image reader for gzipped NIfTI that decompresses with ISA-L.

``.nii.gz`` files are read whole and inflated by ISA-L's igzip (the library that writes them,
:func:`monai_diffreg.io.write_nifti`), about four times faster than the zlib stream nibabel
reads through; the header, data and everything MONAI derives from them are those of MONAI's
:class:`~monai.data.NibabelReader`, which this class is. Other files, and calls with nibabel
load options, go to that reader unchanged.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from monai.data import NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ensure_tuple

__all__ = ["IsalNibabelReader"]

_NIFTI2_HEADER_BYTES = 540  # ``sizeof_hdr`` of NIfTI-2 (NIfTI-1: 348)


def _nifti_from_gzip(path: str | os.PathLike):
    """The NIfTI-1 or NIfTI-2 image in a ``.nii.gz`` file, decompressed in memory by igzip."""
    import nibabel as nib
    from isal import igzip

    with open(path, "rb") as file:
        raw = igzip.decompress(file.read())
    nifti2 = raw[:4] in (struct.pack("<i", _NIFTI2_HEADER_BYTES), struct.pack(">i", _NIFTI2_HEADER_BYTES))
    return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)


class IsalNibabelReader(NibabelReader):
    """:class:`~monai.data.NibabelReader` that inflates ``.nii.gz`` files with ISA-L (module docstring).

    Args:
        as_closest_canonical, squeeze_non_spatial_dims, channel_dim, to_gpu, kwargs: as for
            :class:`~monai.data.NibabelReader`; nibabel load options (``kwargs``) make every file go
            through nibabel's own loader.
    """

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs):
        names = ensure_tuple(data)
        if kwargs or self.kwargs or not all(str(name).endswith(".nii.gz") for name in names):
            return super().read(data, **kwargs)
        self.filenames = names
        images = [correct_nifti_header_if_necessary(_nifti_from_gzip(name)) for name in names]
        return images if len(names) > 1 else images[0]
