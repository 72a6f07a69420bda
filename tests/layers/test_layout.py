"""The layout adapter: NCHW, channels-last (even when H == W == C), tokens with class and register tokens, windows,
vectors; decided by two input sizes when the model takes them, else by its modules; containers as layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.layers import (
    InputSizeError,
    LayerError,
    LayoutError,
    anatomy,
    check_input_size,
    fixed_input_size,
    forward_until,
    guess_layout,
    hook_count,
    is_transformer,
    ladder,
    layout_of,
)
from explorer.models import LoadedModel


class Permute(nn.Module):
    """torchvision.ops.misc.Permute: a weightless module that moves axes (it carries `dims`)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class Square(nn.Module):
    """At a 32 px input every map is 8×8 with 8 channels: H == W == C, where the shape alone cannot tell."""

    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.fixed = fixed
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.to_last = Permute([0, 2, 3, 1])
        self.mlp = nn.Linear(8, 8)
        self.act = nn.GELU()
        self.to_first = Permute([0, 3, 1, 2])
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed:
            assert x.shape[-2:] == (32, 32), f"Expected 32×32 but got {tuple(x.shape[-2:])}!"
        y = self.to_first(self.act(self.mlp(self.to_last(self.conv(x)))))
        return self.head(y.mean((2, 3)))


class TinyViT(nn.Module):
    """A ViT in miniature: 4×4 patches of a 16 px image, a class token and `registers` register tokens."""

    def __init__(self, registers: int = 0, fixed: bool = True) -> None:
        super().__init__()
        self.fixed = fixed
        self.patch = nn.Conv2d(3, 6, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, 1 + registers, 6))
        self.blocks = nn.Sequential(*[Block(6) for _ in range(2)])
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed:
            assert x.shape[-1] == 16, "Wrong image width!"
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(t.shape[0], -1, -1), t], 1)
        return self.head(self.norm(self.blocks(t))[:, 0])


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.fc = nn.Linear(d, d)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return t + self.fc(t)


class Windows(nn.Module):
    """Splits an 8×8 map (at 32 px) into 2×2 windows of 4×4 positions: (N, windows, positions, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 4, stride=4)
        self.inside = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)  # N, H, W, C
        n, h, w, c = y.shape
        win = y.reshape(n, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(n, -1, 16, c)
        return self.head(self.inside(win).mean((1, 2)))


def _wrap(module: nn.Module, size: int) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel.wrap(module, input_size=(size, size))


@pytest.mark.parametrize("fixed", [False, True])
def test_channels_last_is_told_from_channels_first_when_h_equals_w_equals_c(fixed: bool) -> None:
    model = _wrap(Square(fixed=fixed), 32)
    lay = {n: layout_of(model, n) for n in ("conv", "to_last", "mlp", "act", "to_first")}
    assert fixed_input_size(model) == ((32, 32) if fixed else None)
    assert {n: v.kind for n, v in lay.items()} == {
        "conv": "nchw", "to_last": "nhwc", "mlp": "nhwc", "act": "nhwc", "to_first": "nchw",
    }  # fmt: skip
    assert all(v.shape == (8, 8, 8) and v.channels == 8 and v.grid == (8, 8) for v in lay.values())
    assert {v.decided_by for v in lay.values()} == ({"module"} if fixed else {"input sizes"})
    assert guess_layout((8, 8, 8)).kind == "nchw"  # the shape alone would have read the channels-last maps wrong
    x = torch.randn(2, 3, 32, 32)
    outs = forward_until(model.module, ["conv", "mlp"], x)
    conv = model.module.conv(x)
    assert torch.equal(lay["conv"].to_grid(outs["conv"]), conv)
    expected = model.module.mlp(conv.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(lay["mlp"].to_grid(outs["mlp"]), expected)
    assert torch.equal(lay["mlp"].from_grid(lay["mlp"].to_grid(outs["mlp"]), outs["mlp"]), outs["mlp"])
    assert hook_count(model.module) == 0


@pytest.mark.parametrize(("registers", "fixed"), [(0, True), (4, True), (4, False)])
def test_tokens_read_as_their_patch_grid_without_class_and_register_tokens(registers: int, fixed: bool) -> None:
    model = _wrap(TinyViT(registers, fixed), 16)
    lay = layout_of(model, "blocks.1")
    assert (lay.kind, lay.grid, lay.prefix, lay.channels) == ("tokens", (4, 4), 1 + registers, 6)
    assert lay.decided_by == ("module" if fixed else "input sizes")
    assert "4×4 patch tokens" in lay.describe()
    x = torch.randn(2, 3, 16, 16)
    tokens = forward_until(model.module, "blocks.1", x)
    grid = lay.to_grid(tokens)
    assert grid.shape == (2, 6, 4, 4)
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 1 + registers + 1 * 4 + 2])  # row 1, column 2 of the patches
    assert torch.equal(lay.prefix_tokens(tokens), tokens[:, : 1 + registers])
    assert torch.equal(lay.from_grid(grid, tokens), tokens)
    assert torch.allclose(lay.pooled(tokens), tokens[:, 1 + registers :].mean(1))
    assert layout_of(model, "head").kind == "vector" and not layout_of(model, "head").has_map
    assert is_transformer(model)
    rows = {r.name: r for r in ladder(model, "full")}
    assert rows["blocks"].spatial == (4, 4) and rows["blocks"].has_map  # a container is a layer like any other


def test_windows_and_other_shapes_without_a_grid_say_why() -> None:
    model = _wrap(Windows(), 32)
    inside = layout_of(model, "inside")
    assert inside.kind == "none" and not inside.has_map and "image's layout" in inside.reason
    assert inside.problem("inside").startswith("inside has an output (4×16×5) that does not keep the image's")
    with pytest.raises(LayoutError, match="This layer has an output"):
        inside.to_grid(torch.zeros(1, 4, 16, 5))
    assert guess_layout((3, 3)).kind == "none"  # 3 tokens of 3: no square grid with a few leading tokens
    assert guess_layout(()).kind == "none"
    assert guess_layout((3, 197, 64)).kind == "nchw"  # the shape alone cannot know better…
    vit = _wrap(TinyViT(fixed=True), 16)
    assert not is_transformer(_wrap(Square(), 32))
    assert layout_of(vit, "blocks.0.attn").kind == "tokens"  # …the module-aware reading can (see the ViT test)


def test_containers_are_layers_and_holders_say_they_never_run() -> None:
    model = _wrap(TinyViT(fixed=False), 16)
    names = [r.name for r in ladder(model, "full")]
    assert "blocks" in names and names.index("blocks") == names.index("blocks.1") + 1  # after its last child
    holder = nn.Module()
    holder.layers = nn.ModuleList([nn.Conv2d(3, 4, 3), nn.ReLU()])
    holder.forward = lambda x: holder.layers[1](holder.layers[0](x))  # type: ignore[method-assign]
    with pytest.raises(LayerError, match=r"layers is a ModuleList: it holds layers but never runs as one.*layers\.0"):
        layout_of(_wrap(holder, 16), "layers")
    with pytest.raises(LayerError, match="no layer 'nope'"):
        layout_of(model, "nope")


def test_a_fixed_size_model_refuses_other_sizes_in_one_sentence() -> None:
    model = _wrap(TinyViT(fixed=True), 16)
    assert fixed_input_size(model) == (16, 16) and "Wrong image width" in anatomy(model).probe_error
    check_input_size(model, (16, 16))
    with pytest.raises(InputSizeError, match=r"takes only 16×16 inputs, so 24×24 cannot be used"):
        check_input_size(model, (24, 24))
    wrong = LoadedModel.wrap(TinyViT(fixed=True), input_size=(24, 24))
    with pytest.raises(InputSizeError, match=r"does not run on a 24×24 input \(Wrong image width!\)"):
        ladder(wrong)
    assert check_input_size(_wrap(Square(), 32), (48, 48)) is None  # a flexible model takes any size


# --------------------------------------------------------------------------- the commands of the issue


@pytest.mark.parametrize(
    ("args", "wrote"),
    [
        (["--model", "torchvision:resnet18:untrained", "--layer", "layer3"], "layer3-sheet.png"),
        (["--model", "torchvision:convnext_tiny:untrained", "--layer", "features.5"], "features.5-sheet.png"),
        (["--model", "torchvision:vit_b_16:untrained", "--layer", "encoder.layers.encoder_layer_6", "--size", "224"],
         "encoder.layers.encoder_layer_6-sheet.png"),
    ],
    ids=["resnet-stage", "convnext-stage", "vit-block"],
)  # fmt: skip
def test_render_command_on_containers_and_vit_blocks(args: list[str], wrote: str, tmp_path, monkeypatch) -> None:
    from explorer.cli import main

    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["render", *args, "--channels", "0-1", "--preset", "fast", "--steps", "1", "--out", str(out)]) == 0
    assert (out / wrote).exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--layer", "heads.head", "--objective", "neuron"], "needs positions on a spatial map, and heads.head"),
        (["--layer", "encoder.layers.encoder_layer_0.self_attention.out_proj"], "did not run in the forward pass"),
    ],
    ids=["neuron-on-a-vector", "never-runs"],
)
def test_render_command_bad_layers_give_one_line(args: list[str], says: str, tmp_path, monkeypatch, capsys) -> None:
    from explorer.cli import main

    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    cmd = ["render", "--model", "torchvision:vit_b_16:untrained", *args, "--steps", "1", "--out", str(tmp_path)]
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0] and "unexpected" not in err[0]
