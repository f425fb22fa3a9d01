"""One label set for training on real label maps from several FreeSurfer-style sources.

The sources label the same anatomy differently: SynthSeg's maps keep left and right aseg codes
and add extra-cerebral head labels (136, 137, 163, 164, 502, 506-516, 530); SynthSR's maps merge
right into the left codes (2-31); FreeSurfer's ``aparc.a2009s+aseg`` splits the cortex into
Destrieux regions (11101-11175 left, 12101-12175 right) and the corpus callosum into 251-255.
:func:`to_training_labels` maps any of them onto :data:`TRAINING_STRUCTURES`: the brain
structures of the 30 VoxelMorph aseg labels with the two hemispheres merged (SynthSR cannot tell
them apart), plus the accumbens. Index 0 is everything else (background, extra-cerebral tissue,
vessels, unknown codes).

:func:`brain_mask` marks the voxels a skull-stripped scan keeps: every code that maps to a structure.
"""

from __future__ import annotations

import torch

__all__ = ["TRAINING_STRUCTURES", "DESTRIEUX_CORTEX", "to_training_labels", "brain_mask"]

#: FreeSurfer's Destrieux cortex parcels (``aparc.a2009s+aseg``): ``(first, last, aseg cortex code)``
#: per hemisphere, left then right.
DESTRIEUX_CORTEX: tuple[tuple[int, int, int], ...] = ((11100, 11199, 3), (12100, 12199, 42))

#: ``(name, aseg codes)`` of each training label; its index in this tuple plus 1 is its label
#: (0 is background). Codes of both hemispheres, the Destrieux cortex parcels (11100-11199 left,
#: 12100-12199 right), the Desikan ones (1000-1035, 2000-2035), the corpus callosum (251-255) and
#: WM hypointensities (77) are folded in where they belong.
TRAINING_STRUCTURES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("cerebral white matter", (2, 41, 77, 251, 252, 253, 254, 255)),
    ("cerebral cortex", (3, 42, *range(1000, 1036), *range(2000, 2036),
                         *(c for first, last, _ in DESTRIEUX_CORTEX for c in range(first, last + 1)))),
    ("lateral ventricle", (4, 43, 5, 44)),
    ("cerebellum white matter", (7, 46)),
    ("cerebellum cortex", (8, 47)),
    ("thalamus", (10, 49)),
    ("caudate", (11, 50)),
    ("putamen", (12, 51)),
    ("pallidum", (13, 52)),
    ("3rd ventricle", (14,)),
    ("4th ventricle", (15,)),
    ("brain stem", (16,)),
    ("hippocampus", (17, 53)),
    ("amygdala", (18, 54)),
    ("CSF", (24,)),
    ("ventral DC", (28, 60)),
    ("choroid plexus", (31, 63)),
    ("accumbens", (26, 58)),
)

_MAX_CODE = 12200


def _lookup() -> torch.Tensor:
    table = torch.zeros(_MAX_CODE, dtype=torch.int64)
    for index, (_, codes) in enumerate(TRAINING_STRUCTURES, start=1):
        table[list(codes)] = index
    return table


_LOOKUP = _lookup()


def to_training_labels(labels: torch.Tensor) -> torch.Tensor:
    """Map FreeSurfer-style codes to training labels ``0..len(TRAINING_STRUCTURES)``.

    Args:
        labels: integer or integral-float tensor of label codes, any shape.

    Returns:
        int64 tensor of the same shape; codes not in :data:`TRAINING_STRUCTURES` (negative,
        extra-cerebral, vessels, or beyond the table) become 0.

    Raises:
        ValueError: ``labels`` holds non-integral values.
    """
    codes = torch.as_tensor(labels)
    if codes.is_floating_point():
        if not bool(torch.equal(codes, codes.round())):
            raise ValueError("to_training_labels(): 'labels' must hold integer label codes, got non-integral values")
    codes = codes.long()
    inside = (codes >= 0) & (codes < _MAX_CODE)
    return torch.where(inside, _LOOKUP.to(codes.device)[codes.clamp(0, _MAX_CODE - 1)], torch.zeros_like(codes))


def brain_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the voxels a skull-stripped scan keeps: codes that map to a structure."""
    return to_training_labels(labels) > 0
