"""Layer discovery and hooks: forward_until, capture (with gradients), hook hygiene, threads, the ladder."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from explorer.layers import LayerError, capture, forward_hooks, forward_until, hook_count, ladder, resolve
from explorer.models import LoadedModel


class Counter(nn.Module):
    """Identity that counts its calls: shows whether the forward reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class Tiny(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.after = Counter()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.act(self.conv1(x)))
        return self.fc(self.pool(self.after(x)).flatten(1))


@pytest.fixture
def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


def _x(n: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a, b) if a.device.type == "cpu" else torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- forward_until


def test_forward_until_matches_a_full_forward_and_stops_early_on_a_tiny_model(tiny: Tiny) -> None:
    x = _x()
    with capture(tiny, ["conv1", "conv2"]) as cap:
        tiny(x)
    assert tiny.after.calls == 1
    out = forward_until(tiny, ["conv1", "conv2"], x)
    assert tiny.after.calls == 1  # the layer after conv2 never ran
    assert set(out) == {"conv1", "conv2"}
    assert torch.equal(out["conv1"], cap.activations["conv1"])
    assert torch.equal(out["conv2"], cap.activations["conv2"])
    assert out["conv2"].shape == (2, 6, 4, 4)
    single = forward_until(tiny, "conv1", x)
    assert torch.equal(single, tiny.conv1(x))
    assert hook_count(tiny) == 0


def test_forward_until_output_stays_in_the_graph(tiny: Tiny) -> None:
    x = _x().requires_grad_()
    out = forward_until(tiny, "conv2", x)
    (g,) = torch.autograd.grad(out[:, 3].mean(), x)
    h = tiny.conv2(tiny.act(tiny.conv1(x)))
    (expected,) = torch.autograd.grad(h[:, 3].mean(), x)
    assert torch.allclose(g, expected) and g.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_forward_until_on_the_bundled_model(bundled: LoadedModel) -> None:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(bundled.device)
    names = ["blocks.1.0", "blocks.3.2", "blocks.5.3"]
    with torch.no_grad(), capture(bundled.module, names) as cap:
        bundled.module(x)
    later: list[str] = []
    with torch.no_grad(), forward_hooks(bundled.module, {"conv_head": lambda n, m, o: later.append(n)}):
        out = forward_until(bundled.module, names, x)
    assert later == []  # stopped before the head
    for name in names:
        assert _same(out[name], cap.activations[name])
    assert out["blocks.5.3"].shape == (1, 192, 7, 7)
    assert hook_count(bundled.module) == 0


def test_forward_until_unknown_or_unused_layer(tiny: Tiny) -> None:
    with pytest.raises(LayerError, match="conv1"):
        forward_until(tiny, ["conv1", "conv9"], _x())
    tiny.spare = nn.Linear(2, 2)  # registered but never called by the forward
    with pytest.raises(LayerError, match="did not run"):
        forward_until(tiny, "spare", _x())
    assert tiny.after.calls == 1  # it had to run to the end to know
    assert hook_count(tiny) == 0


# --------------------------------------------------------------------------- capture


def test_capture_gradients_equal_autograd_by_hand(tiny: Tiny) -> None:
    x = _x().requires_grad_()
    with capture(tiny, ["conv1", "conv2"], grads=True) as cap:
        out = tiny(x)
        loss = out.square().sum()
        torch.autograd.grad(loss, x)
    # the same forward, split by hand at both layers
    h1 = tiny.conv1(x)
    h2 = tiny.conv2(tiny.act(h1))
    out2 = tiny.fc(h2.mean((2, 3)))
    g1, g2 = torch.autograd.grad(out2.square().sum(), [h1, h2])
    assert torch.allclose(cap.gradients["conv1"], g1, atol=1e-6)
    assert torch.allclose(cap.gradients["conv2"], g2, atol=1e-6)
    # and in closed form for the last conv: d/dh2 of sum(fc(mean(h2))^2) = 2 out W / (H W), the same at every pixel
    closed = (2 * out.detach() @ tiny.fc.weight.detach()) / (4 * 4)
    assert torch.allclose(cap.gradients["conv2"], closed[:, :, None, None].expand(-1, -1, 4, 4), atol=1e-6)
    assert torch.equal(cap.activations["conv1"], h1.detach())
    assert not cap.activations["conv1"].requires_grad
    assert all(p.grad is None for p in tiny.parameters())  # nothing filled .grad on the model


def test_capture_keeps_the_value_before_a_later_inplace_op() -> None:
    torch.manual_seed(0)
    model = Tiny(inplace=True).eval()
    x = _x()
    with capture(model, ["conv1"]) as cap, torch.no_grad():
        model(x)
    expected = model.conv1(x).detach()
    assert (expected < 0).any()  # the ReLU(inplace=True) after conv1 would have zeroed these
    assert torch.equal(cap.activations["conv1"], expected)


def test_capture_records_the_first_call_only_and_undetached_stays_in_graph(tiny: Tiny) -> None:
    x1, x2 = _x(seed=1), _x(seed=2)
    with capture(tiny, ["fc"], detach=False) as cap:
        first = tiny(x1)
        tiny(x2)
    assert torch.equal(cap.activations["fc"].detach(), first.detach())
    assert cap.activations["fc"].requires_grad


# --------------------------------------------------------------------------- hook hygiene and threads


def test_no_hook_outlives_its_block_even_after_an_exception(tiny: Tiny) -> None:
    with pytest.raises(RuntimeError, match="boom"), capture(tiny, ["conv1", "fc"], grads=True):
        assert hook_count(tiny) == 2
        raise RuntimeError("boom")
    assert hook_count(tiny) == 0
    with pytest.raises(RuntimeError):
        forward_until(tiny, "conv2", torch.zeros(1, 5, 8, 8))  # wrong channel count: the forward itself fails
    assert hook_count(tiny) == 0
    with pytest.raises(LayerError), capture(tiny, ["conv1", "nope"]):  # fails after the first hook was registered
        pass
    assert hook_count(tiny) == 0
    ladder(tiny, x=_x())
    assert hook_count(tiny) == 0


def test_a_capture_in_one_thread_does_not_record_another_threads_forward(tiny: Tiny) -> None:
    registered, other_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            registered.wait(10)
            with torch.no_grad():
                tiny(_x(seed=5))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            other_done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with capture(tiny, ["conv2"]) as cap:
        registered.set()
        assert other_done.wait(10)
        assert cap.activations == {}  # thread B's forward went through our hooked model unseen
        x = _x(seed=6)
        with torch.no_grad():
            tiny(x)
        assert torch.equal(cap.activations["conv2"], tiny.conv2(tiny.act(tiny.conv1(x))))
    thread.join()
    assert not errors and tiny.after.calls == 2
    assert hook_count(tiny) == 0


# --------------------------------------------------------------------------- the ladder


def test_bundled_ladder_blocks_in_execution_order(bundled: LoadedModel) -> None:
    rows = ladder(bundled)
    names = [r.name for r in rows]
    assert len(rows) == 20
    assert names[0] == "conv_stem" and names[-1] == "classifier"
    blocks = [n for n in names if n.startswith("blocks.")]
    assert blocks[0] == "blocks.0.0" and blocks[-1] == "blocks.6.0" and len(blocks) == 16
    assert blocks == sorted(blocks, key=lambda n: tuple(int(p) for p in n.split(".")[1:]))
    assert names[-3:] == ["conv_head", "global_pool", "classifier"]
    assert [r.order for r in rows] == sorted(r.order for r in rows)
    stages = [r.stage for r in rows]
    assert stages == sorted(stages) and stages[0] == 0
    assert rows[-1].channels == 1000 and rows[-1].spatial is None
    first = rows[0]
    assert first.out_shape == (32, 112, 112) and first.spatial == (112, 112) and first.channels == 32
    assert hook_count(bundled.module) == 0


def test_bundled_full_ladder_counts_every_parameter_once(bundled: LoadedModel) -> None:
    module = bundled.module
    rows = ladder(bundled, view="full")
    total = sum(p.numel() for p in module.parameters())
    own = sum(sum(p.numel() for p in resolve(module, r.name).parameters(recurse=False)) for r in rows)
    assert own == total
    leaves = [r for r in rows if not any(True for _ in resolve(module, r.name).children())]
    assert sum(r.params for r in leaves) < total  # BatchNormAct2d holds weights next to its act child
    assert {r.name for r in ladder(bundled)} <= {r.name for r in rows}
    assert sum(r.params_trainable for r in leaves) == sum(r.params for r in leaves)  # nothing frozen here
    assert hook_count(module) == 0


def test_tiny_ladder_and_frozen_counts(tiny: Tiny) -> None:
    frozen = Tiny().eval()
    for p in frozen.conv1.parameters():
        p.requires_grad_(False)  # a private model, not a shared one
    rows = {r.name: r for r in ladder(frozen, view="full", x=_x())}
    assert list(rows) == ["conv1", "act", "conv2", "after", "pool", "fc"]
    assert rows["conv1"].params_frozen == 3 * 4 * 9 + 4 and rows["conv1"].params_trainable == 0
    assert rows["conv2"].params_trainable == 4 * 6 * 9 + 6
    assert rows["conv2"].out_shape == (6, 4, 4) and rows["fc"].out_shape == (5,)
    assert rows["conv1"].stage < rows["conv2"].stage <= rows["fc"].stage


def test_unknown_layer_names_raise_layer_error_with_suggestions(bundled: LoadedModel, tiny: Tiny) -> None:
    with pytest.raises(LayerError, match=r"blocks\.3\."):
        resolve(bundled.module, "blocks.3.9")
    with pytest.raises(LayerError, match="conv1"):
        resolve(tiny, "conv9")
    with pytest.raises(LayerError, match="blocks"):
        ladder(tiny, view="tree")
    assert hook_count(tiny) == 0
