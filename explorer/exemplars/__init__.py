"""Dataset examples: the images (and the patches of them) that excite each channel most, from a folder.

ex = dataset_examples(model, "photos/", ["blocks.3.2", "blocks.5.3"], k=9, progress=cb)
ex["blocks.3.2"].examples(17)            # [Example(image, path, value, y, x, box)], strongest first
ex["blocks.3.2"].patches(model, 17)      # receptive-field crops as PIL images
"""

from explorer.exemplars.receptive import ReceptiveField, receptive_field
from explorer.exemplars.scan import (
    Example,
    ExamplesError,
    LayerExamples,
    dataset_examples,
    folder_signature,
    patch_image,
)

__all__ = [
    "Example",
    "ExamplesError",
    "LayerExamples",
    "ReceptiveField",
    "dataset_examples",
    "folder_signature",
    "patch_image",
    "receptive_field",
]
