"""The five named stages of visual features (edges → textures → patterns → parts → objects), mapped to blocks.

Distill's appendix finds them in GoogLeNet at conv2d0, mixed3a–3b, mixed4a, mixed4b–4c and mixed4d–4e. Other
networks have no such names, so blocks are mapped by *relative depth*: a block's position among the blocks with
a spatial (or token-grid) output, 0 for the first, 1 for the last. The cut points 0.20 / 0.35 / 0.60 / 0.90 are
chosen so that the bundled EfficientNet-Lite0 lands where its renders say it should (DESIGN §4 and
docs/progression.png): blocks.1.1 (depth 0.18) oriented edges, blocks.2.1 (0.29) textures, blocks.3.0–4.1
(0.35–0.59) patterns, blocks.5.3 (0.88) parts, blocks.6.0 (0.94) objects. Each stage's representative block
(the one the Progression page shows) is its deepest block with weights, where the stage's features are most developed;
in the objects stage it is the first one, because the last is often the head's projection to the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from explorer.errors import msg
from explorer.layers import ladder

STAGES = ("edges", "textures", "patterns", "parts", "objects")
CUTS = (0.0, 0.20, 0.35, 0.60, 0.90, 1.0001)
NOTE = (
    "Stages follow relative depth among the blocks with a spatial output (0 = first, 1 = last), cut at "
    "0.20 / 0.35 / 0.60 / 0.90, as Distill's GoogLeNet progression suggests and the bundled EfficientNet-Lite0's "
    "renders confirm. Shown for this network: {shown}."
)


@dataclass
class Stage:
    """One named stage: its blocks in execution order and the block that best shows it."""

    name: str
    blocks: list[str]
    representative: str
    depth: tuple[float, float]  # the relative-depth range
    channels: dict[str, int] = field(default_factory=dict)


@dataclass
class StageMap:
    """The five stages for one model, and a sentence on how the mapping was chosen."""

    stages: list[Stage]
    note: str

    def stage_of(self, block: str) -> str | None:
        return next((s.name for s in self.stages if block in s.blocks), None)

    def representatives(self) -> dict[str, str]:
        """Each stage's name → the block that shows it (what the Progression page renders)."""
        return {s.name: s.representative for s in self.stages}


def stage_map(model: Any) -> StageMap:
    """Map the five stages to this network's blocks (see the module docstring for the rule)."""
    rows = [r for r in ladder(model, "blocks") if r.has_map]
    if not rows:
        return StageMap([], msg("This model has no blocks with a spatial output to visualise."))
    last = max(len(rows) - 1, 1)
    depth = {r.name: i / last for i, r in enumerate(rows)}
    stages = []
    for k, name in enumerate(STAGES):
        lo, hi = CUTS[k], CUTS[k + 1]
        members = [r for r in rows if lo <= depth[r.name] < hi]
        if not members:  # a very shallow network: borrow the block nearest the range
            mid = (lo + hi) / 2
            members = [min(rows, key=lambda r: abs(depth[r.name] - mid))]
        learned = [r for r in members if r.params > 0] or members  # not a pooling layer when a conv is there
        rep = learned[0] if name == STAGES[-1] and len(learned) > 1 else learned[-1]
        stages.append(
            Stage(
                name=name,
                blocks=[r.name for r in members],
                representative=rep.name,
                depth=(lo, min(hi, 1.0)),
                channels={r.name: int(r.channels or 0) for r in members},
            )
        )
    shown = ", ".join(f"{st.name} {st.representative}" for st in stages)
    note = NOTE.format(shown=shown)
    tokens = [r for r in rows if r.layout is not None and r.layout.tokens]
    if len(tokens) > len(rows) / 2:
        h, w = tokens[0].spatial or (0, 0)
        note += " " + msg(
            f"This is a transformer: its {len(tokens)} token blocks all keep the {h}×{w} patch grid, so depth alone "
            "places them; a channel here is one embedding dimension averaged over the patch tokens (class token left "
            "out)."
        )
    return StageMap(stages, note)
