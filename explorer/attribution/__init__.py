"""Layer attribution: which parts of an image, and which channels of each layer, drive a prediction.

One call shape for every method, built on Captum's layer classes::

    res = attribute(model, image, layers="all", method="gradcam")   # AttributionResult
    res.maps["blocks.3.2"]           # (N, h, w) raw magnitudes
    res.overlays(scale="shared")     # layer → PIL overlay, one colour scale across layers
    res.top_channels("blocks.3.2")   # [(channel, score)], gradient × activation summed over space
    method_cost(model, image, "all", "ig")   # passes it will make, before running it
    unit_attribution(model, images, "blocks.3.2", 17)   # which pixels excite one channel (the Unit view)
"""

from explorer.attribution.colour import COLORMAPS, colorize, heatmap, overlay, scale
from explorer.attribution.core import attribute, channel_attribution, one_pass, prepare, resolve_target
from explorer.attribution.layers import resolve_layers
from explorer.attribution.methods import (
    METHODS,
    AttributionError,
    Method,
    MethodCost,
    Options,
    availability,
    get_method,
    method_cost,
    method_problem,
)
from explorer.attribution.result import AttributionResult, shared_scale
from explorer.attribution.sanitize import shadow
from explorer.attribution.unit import UNIT_METHODS, UnitAttribution, unit_attribution

__all__ = [
    "COLORMAPS",
    "METHODS",
    "UNIT_METHODS",
    "AttributionError",
    "AttributionResult",
    "MethodCost",
    "Method",
    "UnitAttribution",
    "Options",
    "attribute",
    "availability",
    "get_method",
    "channel_attribution",
    "colorize",
    "heatmap",
    "method_cost",
    "method_problem",
    "one_pass",
    "overlay",
    "prepare",
    "resolve_layers",
    "resolve_target",
    "scale",
    "shadow",
    "shared_scale",
    "unit_attribution",
]
