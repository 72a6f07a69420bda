"""What `attribute` returns: raw per-layer maps and channel scores, plus the pictures and tables made from them.

The coloured overlays of a result, and their PNG bytes, are memoized (`OverlayMemo`): a page that shows the same
result on every run (every session's rerun of the Attribution page) colours and encodes each map once.
"""

from __future__ import annotations

import functools
import io
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from explorer.attribution import colour as ov
from explorer.attribution.methods import METHODS, MethodCost
from explorer.cache import png_bytes

OVERLAY_MEMO_BYTES = 64 * 2**20  # coloured overlays and their PNGs kept, all results together


class OverlayMemo:
    """Recently coloured overlays of attribution results (read-only uint8 arrays), their encoded bytes and a few
    small values made from all maps (colour ranges, peaks).

    Keyed by the result's identity and the options (image, scale, mode, colormap, alpha, layers) plus a token of
    its maps and images (each tensor's identity and in-place version counter), so a result that is filled in or
    changed after a first call is coloured again, never served stale; an entry keeps the tensors of its token alive,
    so no other tensor can take their identity while it exists. An entry holds only a weak reference to its result,
    and the entries of a result are dropped once it is gone. Bounded by the bytes it holds (least recently used
    dropped first); thread-safe (Streamlit sessions are threads sharing results). Values are shared between callers:
    the arrays are read-only, the bytes immutable, the small values must not be changed.
    """

    def __init__(self, max_bytes: int = OVERLAY_MEMO_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], tuple[weakref.ref[Any], Any, int, Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._dead: list[int] = []  # ids of results gone since the last call: a weakref callback (any thread, any
        # time, even inside a locked section of this thread) only appends here; the next call drops their entries
        self._refs: dict[int, weakref.ref[Any]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._refs.clear()
            self._bytes = 0

    def get(self, owner: Any, key: tuple[Any, ...]) -> Any:
        """The value stored for `owner` under `key`, or None."""
        k = (id(owner), *key)
        with self._lock:
            self._purge()
            entry = self._items.get(k)
            if entry is None or entry[0]() is not owner:
                self.misses += 1
                return None
            self._items.move_to_end(k)
            self.hits += 1
            return entry[1]

    def put(self, owner: Any, key: tuple[Any, ...], value: Any, nbytes: int, keep: Any = None) -> None:
        """Store `value` (about `nbytes`) for `owner` under `key`, keeping `keep` alive with it."""
        if nbytes > self.max_bytes:
            return
        k = (id(owner), *key)
        with self._lock:
            self._purge()
            ref = self._refs.get(id(owner))
            if ref is None or ref() is not owner:
                ref = self._refs[id(owner)] = weakref.ref(owner, functools.partial(self._note_dead, id(owner)))
            if k in self._items:
                self._drop(k)
            self._items[k] = (ref, value, nbytes, keep)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def _note_dead(self, owner_id: int, _ref: Any) -> None:
        self._dead.append(owner_id)

    def _purge(self) -> None:
        if not self._dead:
            return
        dead = set()
        while self._dead:
            dead.add(self._dead.pop())
        for i in dead:
            ref = self._refs.get(i)
            if ref is not None and ref() is None:
                del self._refs[i]
        gone = [k for k, entry in self._items.items() if k[0] in dead and entry[0]() is None]
        for k in gone:
            self._drop(k)

    def _drop(self, k: tuple[Any, ...]) -> None:
        self._bytes -= self._items.pop(k)[2]


_OVERLAY_MEMO = OverlayMemo()


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """`pixels` as a JPEG at `quality` (what st.image makes of a PNG of them, at quality 90)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class AttributionResult:
    """Per-layer attribution of one batch by one method; all tensors on the CPU, float32, raw magnitudes.

    maps[layer]: (N, h, w), the attribution summed over channels (Grad-CAM: its own weighted sum; Guided
    Grad-CAM: at input resolution, summed over RGB). channels[layer]: (N, C), summed over space (absent for
    ablation, which removes whole patches). delta[layer]: (N,) completeness error, for methods that have one.
    """

    method: str
    layers: list[str]
    images: torch.Tensor  # (N, H, W, 3) in [0, 1]: the network's view of the inputs
    cost: MethodCost
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: dict[str, torch.Tensor] = field(default_factory=dict)
    delta: dict[str, torch.Tensor] = field(default_factory=dict)
    raw: dict[str, torch.Tensor] = field(default_factory=dict)
    prefix: dict[str, torch.Tensor] = field(default_factory=dict)  # token layers: (N,) on class/register tokens
    skipped: dict[str, str] = field(default_factory=dict)  # layer → why this method cannot use it
    notes: list[str] = field(default_factory=list)
    target: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None  # (N, classes) when a forward of the plain model was made
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    seconds: float = 0.0

    def _token(self) -> tuple[Any, ...]:
        """What the overlays depend on besides the options: the layers and the identity and in-place version of
        each map and of the images (cheap; a change to any of them makes the memoized overlays a miss)."""
        maps = tuple((n, id(m), m._version) for n, m in self.maps.items() if isinstance(m, torch.Tensor))
        return (tuple(self.layers), id(self.images), self.images._version, maps)

    def _tensors(self) -> tuple[Any, ...]:
        """The tensors whose identities `_token` holds (kept alive by the memo entries made with that token)."""
        return (self.images, *self.maps.values())

    def _overlay_key(
        self, kind: Any, image: int, scale: Any, mode: str, cmap: str | None, alpha: float, layers: Sequence[str]
    ) -> tuple[Any, ...] | None:
        key = (kind, image, scale, mode, cmap or ov.DEFAULT_CMAP.get(mode), float(alpha), tuple(layers), self._token())
        try:
            hash(key)
        except TypeError:  # e.g. a scale given as a list: not memoized
            return None
        return key

    @property
    def display(self) -> str:
        """The colour mode this method's maps read best in ('positive' for Grad-CAM, else 'signed')."""
        return METHODS[self.method].display

    def target_name(self, image: int = 0) -> str:
        t = self.target[image]
        return self.class_names[t] if t < len(self.class_names) else str(t)

    def predictions(self, image: int = 0, k: int = 5) -> list[tuple[str, float]]:
        """Top-k (class, probability) from the forward made during attribution (empty if none was made)."""
        if self.logits is None:
            return []
        probs = self.logits[image].softmax(-1)
        top = probs.topk(min(k, probs.numel()))
        return [(self.class_names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def top_channels(
        self, layer: str, k: int = 5, image: int = 0, *, negative: bool = False
    ) -> list[tuple[int, float]]:
        """The `k` channels of `layer` with the largest (or most negative) attribution for one image."""
        if layer not in self.channels:
            return []
        scores = self.channels[layer][image]
        order = scores.argsort(descending=not negative)[: min(k, scores.numel())]
        return [(int(c), float(scores[c])) for c in order]

    def scale(
        self, scale: str | float | tuple[float, float] = "shared", mode: str | None = None, image: int | None = None
    ) -> dict[str, tuple[float, float]]:
        """Layer → (vmin, vmax): one scale for all layers ('shared'), one per layer ('layer'), or given.

        `image` restricts the shared scale to one image of the batch (default: the whole batch).
        """
        mode = mode or self.display
        if scale in ("shared", "layer"):  # a max over every map: memoized like the overlays
            return dict(self._memoized(("scale", scale, mode, image), lambda: self._scale(scale, mode, image)))
        return self._scale(scale, mode, image)

    def _scale(self, scale: Any, mode: str, image: int | None) -> dict[str, tuple[float, float]]:
        pick = (lambda t: t) if image is None else (lambda t: t[image])
        if scale == "shared":
            both = ov.scale((pick(self.maps[n]) for n in self.layers), mode)
            return {n: both for n in self.layers}
        if scale == "layer":
            return {n: ov.scale([pick(self.maps[n])], mode) for n in self.layers}
        if isinstance(scale, (int, float)):
            top = float(scale)
            return {n: ((-top, top) if mode == "signed" else (0.0, top)) for n in self.layers}
        if isinstance(scale, tuple) and len(scale) == 2:
            return {n: (float(scale[0]), float(scale[1])) for n in self.layers}
        raise ValueError(f"Unknown scale {scale!r}: use 'shared', 'layer', a vmax or (vmin, vmax).")

    def peaks(self, image: int = 0) -> dict[str, float]:
        """Layer → the peak of its map for one image (of |value| unless the method reads positive); memoized."""
        positive = self.display == "positive"

        def compute() -> dict[str, float]:
            return {n: float(m[image].max() if positive else m[image].abs().max()) for n, m in self.maps.items()}

        return dict(self._memoized(("peaks", image, positive), compute))

    def _memoized(self, key: tuple[Any, ...], compute: Any) -> Any:
        """`compute()` memoized for this result under `key` (with the token of its maps, see `OverlayMemo`); a small
        value, shared: the caller must not change it."""
        full = ("value", *key, self._token())
        found = _OVERLAY_MEMO.get(self, full)
        if found is None:
            found = compute()
            _OVERLAY_MEMO.put(self, full, found, 64 * (1 + len(self.maps)), keep=self._tensors())
        return found

    def overlays(
        self,
        image: int = 0,
        scale: str | float | tuple[float, float] = "shared",
        *,
        mode: str | None = None,
        cmap: str | None = None,
        alpha: float = 0.75,
        layers: Sequence[str] | None = None,
    ) -> dict[str, Image.Image]:
        """Layer → the map over the image, on a shared or per-layer colour scale (see `scale`).

        Each call returns new PIL images (the caller may change them); the colouring is memoized per result and
        options, so a second call with the same options costs a copy of the pixels."""
        arrays = self._overlay_arrays(image, scale, mode=mode, cmap=cmap, alpha=alpha, layers=layers)
        return {n: Image.fromarray(a) for n, a in arrays.items()}

    def overlay_bytes(
        self,
        image: int = 0,
        scale: str | float | tuple[float, float] = "shared",
        *,
        fmt: str = "PNG",
        quality: int = 90,
        mode: str | None = None,
        cmap: str | None = None,
        alpha: float = 0.75,
        layers: Sequence[str] | None = None,
    ) -> dict[str, bytes]:
        """Layer → the overlay of `overlays` encoded as `fmt` ('PNG', or 'JPEG' at `quality`), memoized per result
        and options: what a page hands `st.image` on every run without colouring or encoding again."""
        if fmt.upper() not in ("PNG", "JPEG"):
            raise ValueError(f"Unknown picture format {fmt!r}: use 'PNG' or 'JPEG'.")
        fmt = fmt.upper()
        mode = mode or self.display
        names = list(layers or self.layers)
        kind = ("PNG",) if fmt == "PNG" else ("JPEG", int(quality))
        key = self._overlay_key(kind, image, scale, mode, cmap, alpha, names)
        found = _OVERLAY_MEMO.get(self, key) if key is not None else None
        if found is not None:
            return dict(found)
        arrays = self._overlay_arrays(image, scale, mode=mode, cmap=cmap, alpha=alpha, layers=names)
        out = {n: png_bytes(a) if fmt == "PNG" else _jpeg(a, int(quality)) for n, a in arrays.items()}
        if key is not None:
            _OVERLAY_MEMO.put(self, key, out, sum(len(b) for b in out.values()), keep=self._tensors())
        return dict(out)

    def _overlay_arrays(
        self,
        image: int,
        scale: str | float | tuple[float, float],
        *,
        mode: str | None,
        cmap: str | None,
        alpha: float,
        layers: Sequence[str] | None,
    ) -> dict[str, np.ndarray]:
        """Layer → the overlay's (H, W, 3) uint8 pixels, read-only and shared (memoized; see `OverlayMemo`)."""
        mode = mode or self.display
        names = list(layers or self.layers)
        key = self._overlay_key("rgb", image, scale, mode, cmap, alpha, names)
        found = _OVERLAY_MEMO.get(self, key) if key is not None else None
        if found is not None:
            return dict(found)
        scales = self.scale(scale, mode, image=image if scale in ("shared", "layer") else None)
        arrays = {}
        for n in names:
            pic = ov.overlay(self.images[image], self.maps[n][image], *scales[n], mode=mode, cmap=cmap, alpha=alpha)
            a = np.asarray(pic)
            a.flags.writeable = False
            arrays[n] = a
        if key is not None:
            _OVERLAY_MEMO.put(self, key, arrays, sum(a.nbytes for a in arrays.values()), keep=self._tensors())
        return dict(arrays)

    def summary(self, image: int = 0, k: int = 5) -> dict[str, Any]:
        """A JSON-ready record: method, cost, target and, per layer, the raw magnitudes and top channels."""
        layers = {}
        for n in self.layers:
            m = self.maps[n][image]
            rec: dict[str, Any] = {
                "shape": list(m.shape),
                "min": float(m.min()),
                "max": float(m.max()),
                "mean_abs": float(m.abs().mean()),
                "sum": float(m.sum()),
                "top_channels": [{"channel": c, "score": s} for c, s in self.top_channels(n, k, image)],
            }
            if n in self.delta:
                rec["delta"] = float(self.delta[n][image])
            if n in self.prefix:
                rec["class_tokens"] = float(self.prefix[n][image])
            layers[n] = rec
        return {
            "method": self.method,
            "label": METHODS[self.method].label,
            "target": self.target[image] if self.target else None,
            "target_name": self.target_name(image) if self.target else None,
            "predictions": [{"class": c, "probability": p} for c, p in self.predictions(image)],
            "cost": self.cost.describe(),
            "forward_calls": self.cost.forward_calls,
            "backward_calls": self.cost.backward_calls,
            "seconds": round(self.seconds, 4),
            "model_fingerprint": self.fingerprint,
            "skipped": self.skipped,
            "notes": self.notes,
            "layers": layers,
        }


def shared_scale(
    results: Sequence[AttributionResult], mode: str | None = None, image: int | None = None
) -> tuple[float, float]:
    """One (vmin, vmax) over every layer of several results (e.g. the model before and after fine-tuning)."""
    if not results:
        raise ValueError("No results to scale.")
    mode = mode or results[0].display
    maps = [r.maps[n] if image is None else r.maps[n][image] for r in results for n in r.layers]
    return ov.scale(maps, mode)
