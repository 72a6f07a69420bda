"""Activation maximization: images that make a unit, a layer or a direction of a network fire.

Example::

    objs = [fv.channel("blocks.3.2", c) for c in range(16)]
    result = fv.render(model, objs, preset="classic", seed=0, progress=on_step)   # .images, .curves
"""

from explorer.featurevis.kernels import KernelError, KernelFigure, kernel_figure, kernel_sheet, pixel_convs
from explorer.featurevis.objectives import (
    LOGITS,
    OBJECTIVE_KINDS,
    Objective,
    ObjectiveError,
    channel,
    class_logit,
    direction,
    diverse,
    diversity,
    for_unit,
    layer,
    negative,
    neuron,
)
from explorer.featurevis.presets import PRESETS, Preset, get_preset
from explorer.featurevis.render import Preview, RenderError, RenderResult, render
from explorer.featurevis.sheet import contact_sheet, labelled_rows
from explorer.featurevis.spectrum import natural_spectrum
from explorer.featurevis.stages import STAGES, Stage, StageMap, stage_map
from explorer.featurevis.store import CachedRender, lookup, render_cached
from explorer.featurevis.transforms import TransformSpec

__all__ = [
    "LOGITS",
    "OBJECTIVE_KINDS",
    "PRESETS",
    "STAGES",
    "CachedRender",
    "KernelError",
    "KernelFigure",
    "Objective",
    "ObjectiveError",
    "Preset",
    "Preview",
    "RenderError",
    "RenderResult",
    "Stage",
    "StageMap",
    "TransformSpec",
    "channel",
    "class_logit",
    "contact_sheet",
    "direction",
    "diverse",
    "diversity",
    "for_unit",
    "get_preset",
    "kernel_figure",
    "kernel_sheet",
    "labelled_rows",
    "layer",
    "lookup",
    "natural_spectrum",
    "negative",
    "neuron",
    "pixel_convs",
    "render",
    "render_cached",
    "stage_map",
]
