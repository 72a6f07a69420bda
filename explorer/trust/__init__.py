"""Trust signals: how far to trust a map, a picture, a similarity, a unit's label. ``sanity`` re-runs attribution
methods while the model's blocks are randomized from the top down (on a copy: Adebayo et al. 2018) and says which
methods' maps depend on what the network learned (``mapsim`` measures how alike two maps are); ``faithfulness``
deletes and inserts pixels in the order of each layer's map against random maps on the same grid and ranks the
layers; ``cka_map`` measures debiased CKA between every layer of two models (any two: base and tuned, a CNN and a
ViT) with a permutation null and a calibrated value; ``fvquality`` flags grey, saturated, collapsed, weak and
inactive feature visualizations and measures the diversity of diversity renders; ``selectivity`` labels units by
the user's own classes (class selectivity index) and draws its mean along the depth. ``samples`` loads the images
they read; ``values`` makes their reports strict JSON. Nothing here changes a shared model.

    res = sanity_check(model, "assets/chelsea.jpg", ["gradient", "guided_backprop", "gradcam"])
    faith = faithfulness(model, "assets", "gradcam")          # faith.ranking: layers, most faithful first
    heat = cka_map(base, tuned, "demo:digits")                 # heat.raw, heat.calibrated: (layers of A, of B)
    sel = selectivity(model, "demo:digits")                    # sel.curve(): the generic → specific curve
    q = fv_quality(model, "blocks.3.2", range(8), "fast")     # per unit: flags, activation vs examples
"""

from explorer.trust.cka_map import CKAMap, calibrated_map, cka_map, layer_grams
from explorer.trust.faithfulness import (
    BIAS_NOTE,
    FaithfulnessReport,
    LayerFaithfulness,
    area,
    faithfulness,
    perturbation_curves,
)
from explorer.trust.fvquality import (
    FLAG_TEXT,
    ImageQuality,
    UnitQuality,
    activation_reached,
    diversity_score,
    fv_quality,
    image_quality,
    unit_quality,
)
from explorer.trust.mapsim import similarity, spearman, ssim
from explorer.trust.samples import Samples, TrustError, load_samples
from explorer.trust.sanity import (
    DEFAULT_METHODS,
    INPUT_METHODS,
    PASS_BELOW,
    MethodSanity,
    SanityResult,
    randomization_steps,
    sanity_check,
    sanity_cost,
)
from explorer.trust.selectivity import LayerSelectivity, SelectivityReport, selectivity, selectivity_index

__all__ = [
    "BIAS_NOTE",
    "DEFAULT_METHODS",
    "FLAG_TEXT",
    "INPUT_METHODS",
    "PASS_BELOW",
    "CKAMap",
    "FaithfulnessReport",
    "ImageQuality",
    "LayerFaithfulness",
    "LayerSelectivity",
    "MethodSanity",
    "Samples",
    "SanityResult",
    "SelectivityReport",
    "TrustError",
    "UnitQuality",
    "activation_reached",
    "area",
    "calibrated_map",
    "cka_map",
    "diversity_score",
    "faithfulness",
    "fv_quality",
    "image_quality",
    "layer_grams",
    "load_samples",
    "perturbation_curves",
    "randomization_steps",
    "sanity_check",
    "sanity_cost",
    "selectivity",
    "selectivity_index",
    "similarity",
    "spearman",
    "ssim",
    "unit_quality",
]
