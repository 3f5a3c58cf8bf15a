"""Deployment: BatchNorm folding (RED blocks included), ONNX parity, int8, the measured peak, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from redistill.deploy import DeployOptions, deploy
from redistill.deploy import profile
from redistill.deploy.fold import fold_model
from redistill.deploy.onnx_export import export_onnx
from redistill.deploy.quantize import quantize_onnx
from redistill.distill import insert_red
from redistill.memory import analyze_memory
from redistill.models import create_model, list_models
from redistill.models.registry import get_family

FAMILY_INPUT = {"cifar_resnet": (2, 1, 28, 28), "mobilenet": (2, 3, 32, 32), "resnet": (2, 3, 32, 32),
                "resnext": (2, 3, 32, 32)}
SMALL_WIDTH = {"cifar_resnet": 4, "mobilenet": 0.25, "resnet": 16, "resnext18": 32, "resnext50": 16}


def _pick(table: dict, name: str):
    return next(v for prefix, v in table.items() if name.startswith(prefix))


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that folding has something to get wrong."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


# Classifiers: the diffusion UNet normalises with GroupNorm, which nothing folds.
@pytest.mark.parametrize("name", [n for n in list_models() if get_family(n).task == "classification"])
def test_fold_matches_unfolded_on_every_family_with_red_blocks(name):
    shape = _pick(FAMILY_INPUT, name)
    model = create_model(name, num_classes=5, in_channels=shape[1], width=_pick(SMALL_WIDTH, name)).eval()
    x = torch.randn(shape)
    layers = [f["module"] for f in model.feature_info][1:3]
    insert_red(model, layers[0], "out", example_input=x)
    insert_red(model, layers[1], "in", example_input=x)
    _randomise_bn(model)
    model.eval()
    result = fold_model(model, (x,))
    folded_bn = {bn for _, bn in result.pairs}
    # The gate and encoder BatchNorms of both RED blocks are folded, as are the network's own.
    red_bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and ".red_" in n}
    assert len(red_bn) == 4 and red_bn <= folded_bn
    assert not any(isinstance(result.model.get_submodule(bn), nn.BatchNorm2d) for bn in folded_bn)
    with torch.no_grad():
        ref, out = model(x), result.model(x)
    assert torch.allclose(ref, out, atol=1e-4, rtol=1e-4), (ref - out).abs().max()
    assert result.max_abs_diff == pytest.approx(float((ref - out).abs().max()), abs=1e-6)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    _randomise_bn(model)
    return model.eval()


def test_onnx_matches_pytorch_on_a_tiny_model(tmp_path):
    model = _tiny()
    x = torch.randn(5, 2, 8, 8)
    path = export_onnx(fold_model(model, (x,)).model, (x[:2],), tmp_path / "m.onnx")
    got = profile.run(profile.session(path), x.numpy())  # batch 5: the batch dimension is dynamic
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def _separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes told apart by which half of the image is bright."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 2, 8, 8, generator=gen) * 0.3
    x[y == 0, :, :4] += 1.0
    x[y == 1, :, 4:] += 1.0
    return x, y


def test_int8_keeps_accuracy_on_separable_data(tmp_path):
    model = _tiny().train()
    x, y = _separable(512, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    xt, yt = _separable(256, 1)
    fp32 = export_onnx(fold_model(model, (xt[:2],)).model, (xt[:2],), tmp_path / "m.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "q.onnx", [x[:64].numpy(), x[64:128].numpy()])
    ops = {n.op_type for n in __import__("onnx").load(str(int8)).graph.node}
    assert "QLinearConv" in ops  # QOperator format
    acc = {k: float((profile.run(profile.session(p), xt.numpy()).argmax(1) == yt.numpy()).mean())
           for k, p in (("fp32", fp32), ("int8", int8))}
    assert acc["fp32"] > 0.9
    assert abs(acc["int8"] - acc["fp32"]) <= 0.02


def test_measured_peak_of_a_conv_chain_is_worked_out_by_hand(tmp_path):
    # 1x1 convolutions need no im2col workspace, so the arena holds exactly the live tensors.
    # (1, 3, 16, 16) -> 8 ch -> 16 ch -> 4 ch, fp32, 256 pixels:
    #   conv0: output 8 * 256 * 4 = 8 KiB (the input is the caller's, outside the arena)
    #   conv1: its input 8 KiB + its output 16 * 256 * 4 = 16 KiB = 24 KiB  <- peak
    #   conv2: 16 KiB + 4 * 256 * 4 = 4 KiB = 20 KiB
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    path = export_onnx(model, (x,), tmp_path / "chain.onnx", dynamic_batch=False)
    measured = profile.measure_memory(path, x.numpy())
    assert [n.in_use for n in measured.nodes] == [8192, 24576, 20480]
    assert [n.requested for n in measured.nodes] == [8192, 24576, 20480]
    assert measured.peak_bytes == measured.tensor_peak_bytes == 24576
    assert analyze_memory(model, x, convention="live").peak_bytes == 24576


def test_the_deployed_graph_of_a_3x3_chain_needs_no_im2col_workspace(tmp_path):
    # 3x3 convolutions: with ORT_ENABLE_EXTENDED they unfold their input into a workspace on top of the
    # tensors; the deployed graph (ORT_ENABLE_ALL) runs NCHWc kernels that do not. 16 channels: no padding.
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(1, 16, 16, 16)
    path = export_onnx(model, (x,), tmp_path / "c3.onnx", dynamic_batch=False)
    extended = profile.measure_memory(path, x.numpy())
    deployed = profile.measure_memory(path, x.numpy(), level=profile.LATENCY_LEVEL)
    assert extended.tensor_peak_bytes == 2 * 16 * 16 * 16 * 4  # conv1's input and output
    assert extended.peak_bytes > extended.tensor_peak_bytes  # the im2col buffer
    assert deployed.peak_bytes <= extended.tensor_peak_bytes + 2 * 16 * 16 * 16 * 4  # plus NCHWc reorders at most


def test_live_set_at_the_tensor_peak_of_a_conv_chain(tmp_path):
    # The chain above: while conv1 runs, conv0's output (8 KiB) and its own (16 KiB) are live.
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    path = export_onnx(model, (x,), tmp_path / "chain.onnx", dynamic_batch=False)
    measured = profile.measure_memory(path, x.numpy())
    assert measured.tensor_peak_node == measured.nodes[1].name
    assert [(t.op, t.dtype, t.bytes) for t in measured.live_at_tensor_peak] == [("Conv", "float", 8192),
                                                                               ("Conv", "float", 16384)]


class _StemRED(nn.Module):
    """conv -> (RED-like gated residual) -> BatchNorm: the BatchNorm has no convolution of its own to fold into."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv(x)
        y = y * torch.sigmoid(self.gate(y)) + y
        return self.head(torch.relu(self.bn(y)).mean((2, 3), keepdim=True).flatten(1))


def test_a_batchnorm_that_cannot_fold_becomes_a_depthwise_conv(tmp_path):
    model = _StemRED()
    _randomise_bn(model)
    model.eval()
    x = torch.randn(4, 2, 8, 8)
    result = fold_model(model, (x,))
    assert result.unfolded_bn == ["bn"] and result.bn_as_conv == ["bn"]
    conv = result.model.bn
    assert isinstance(conv, nn.Conv2d) and conv.groups == 8 and conv.kernel_size == (1, 1)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), atol=1e-5, rtol=1e-5)
    assert not fold_model(model, (x,), depthwise=False).bn_as_conv
    double = fold_model(model.double(), (x.double(),))  # the convolution takes the BatchNorm's dtype
    with torch.no_grad():
        torch.testing.assert_close(double.model(x.double()), model(x.double()))


def test_int8_graph_has_no_fp32_islands_for_a_leftover_batchnorm_or_a_mean(tmp_path):
    # Without the rewrites the unfoldable BatchNorm and the spatial mean would run in fp32 between
    # DequantizeLinear / QuantizeLinear; with them only the input's quantize and the logits' dequantize remain.
    import onnx

    model = _StemRED()
    _randomise_bn(model)
    model.eval()
    x = torch.randn(16, 2, 8, 8)
    fp32 = export_onnx(fold_model(model, (x,)).model, (x[:2],), tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops and "BatchNormalization" not in ops
    got = profile.run(profile.session(fp32), x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5, rtol=1e-4)
    int8 = quantize_onnx(fp32, tmp_path / "q.onnx", [x.numpy()])
    q_ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert q_ops.count("DequantizeLinear") == 1 and q_ops.count("QuantizeLinear") == 1, q_ops
    measured = profile.measure_memory(int8, x[:1].numpy())
    assert {t.dtype for t in measured.live_at_tensor_peak} == {"uint8"}


def test_global_pools_leaves_other_means_alone(tmp_path):
    import onnx

    class ChannelMean(nn.Module):
        def forward(self, x):
            return x.mean(1, keepdim=True) + x.mean((2, 3), keepdim=True)

    x = torch.randn(2, 3, 4, 4)
    path = export_onnx(ChannelMean(), (x,), tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("ReduceMean") == 1 and ops.count("GlobalAveragePool") == 1
    np.testing.assert_allclose(profile.run(profile.session(path), x.numpy()), ChannelMean()(x).numpy(), atol=1e-6)


def _red_stem_report():
    model = create_model("cifar_resnet8", num_classes=3, in_channels=1, width=4, strides=[4, 1, 1, 1]).eval()
    x = torch.randn(1, 1, 32, 32)
    insert_red(model, "conv1", "out", example_input=x)
    return analyze_memory(model.eval(), x, convention="live")  # 3 tensors of 16 ch x 8 x 8 fp32 at the gate's mul


def _measured(live: list[tuple[str, str, str]], dtype: str = "float", lag: int = 0) -> profile.MeasuredMemory:
    tensors = [profile.LiveTensor(node, op, dtype, 4096) for node, op, _ in live]
    node = profile.NodeMemory(0, live[-1][0], live[-1][1], 0, 0, 0)
    total = sum(t.bytes for t in tensors) + lag
    return profile.MeasuredMemory(total, total, 0, node.name, [node], node.name, tensors)


def test_a_tensor_excess_from_onnxruntime_node_order_names_the_two_ops():
    from redistill.deploy.report import compare_memory

    predicted = _red_stem_report()
    assert predicted.peak_bytes == 3 * 4096
    # onnxruntime ran the encoder's convolution before the gate's multiply: four tensors live there
    live = [("c", "Conv", "conv1.layer"), ("g", "FusedConv", "conv1.red_out.gate.0"),
            ("e", "FusedConv", "conv1.red_out.encoder.0"), ("m", "Mul", "conv1.red_out")]
    cmp_ = compare_memory(predicted, _measured(live), 1024, "fp32", {n: mod for n, _, mod in live})
    why = next(r for r in cmp_["reasons"] if r.startswith("at node m"))
    assert "holds 4 tensors (16.0 KiB" in why
    assert "runs FusedConv `conv1.red_out.encoder.0` before Mul `conv1.red_out`" in why
    assert cmp_["explained"]  # the one tensor run ahead of its turn is the whole 4 KiB excess


def test_an_ambiguous_or_unmatched_excess_is_not_called_explained():
    from redistill.deploy.report import compare_memory

    predicted = _red_stem_report()
    # layer1.0.relu runs twice per forward: which call a Relu node is cannot be told, so no order is claimed
    live = [("a", "FusedConv", "layer1.0.conv2"), ("r", "Relu", "layer1.0.relu"), ("x", "Relu", "nowhere"),
            ("m", "Relu", "layer1.0.relu")]
    cmp_ = compare_memory(predicted, _measured(live), 1024, "fp32", {n: mod for n, _, mod in live})
    why = next(r for r in cmp_["reasons"] if r.startswith("at node m"))
    assert "reverse of the traced" not in why and "no op kept in fp32 or run out of the traced order" in why
    assert not cmp_["explained"]
    # a live set larger than the arena's figure (in-place reuse) explains nothing either
    over = _measured(live)
    over.tensor_peak_bytes = 2 * 4096 + 4096 * 3 // 2
    cmp_ = compare_memory(predicted, over, 1024, "fp32", {})
    assert any("reuses some buffers in place" in r for r in cmp_["reasons"]) and not cmp_["explained"]


def test_a_tensor_excess_from_fp32_ops_in_an_int8_graph_names_the_op():
    from redistill.deploy.report import compare_memory

    predicted = _red_stem_report()
    live = [("d", "DequantizeLinear", ""), ("b", "BatchNormalization", "bn1")]
    # arena 24 KiB against 12 KiB predicted; 8 KiB of fp32 tensors would be 2 KiB at int8, 6 KiB of the
    # 12 KiB excess: the 16 KiB the arena still holds beyond the live set is not accounted for
    cmp_ = compare_memory(predicted, _measured(live, lag=16384), 1024, "int8", {"b": "bn1"})
    why = next(r for r in cmp_["reasons"] if r.startswith("at node b"))
    assert ": BatchNormalization has no int8 kernel here, so it runs in fp32" in why
    assert "another 16.0 KiB back only after this node" in why
    assert not cmp_["explained"]
    cmp_ = compare_memory(predicted, _measured(live * 4), 1024, "int8", {"b": "bn1"})
    assert cmp_["explained"]  # 32 KiB of fp32 tensors: 24 KiB of a 20 KiB excess


def test_deploy_writes_models_and_report(tmp_path):
    out = tmp_path / "dep"
    report = deploy("cifar_resnet8:width=4", DeployOptions(input="1x3x16x16", out=out, calib=8, runs=3,
                                                           parity_images=4, torchao=False, quiet=True))
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.int8.onnx", "report.md", "report.json"}
    data = json.loads((out / "report.json").read_text())
    assert set(data["variants"]) == {"fp32", "int8"}
    fp32 = data["variants"]["fp32"]
    assert fp32["predicted_peak_bytes"] == analyze_memory(create_model("cifar_resnet8", width=4),
                                                          (1, 3, 16, 16)).peak_bytes
    assert fp32["measured_peak_bytes"] >= fp32["measured_tensor_peak_bytes"] > 0
    assert fp32["deployed_peak_bytes"] >= fp32["deployed_tensor_peak_bytes"] > 0
    assert report.parity_fp32["top1_agreement"] == 100.0
    assert "| fp32 |" in (out / "report.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_a_failed_export_leaves_nothing_behind(tmp_path):
    from redistill.errors import UserError

    (tmp_path / "bessel.py").write_text("import torch\nimport torch.nn as nn\n\n\nclass B(nn.Module):\n"
                                        "    def forward(self, x):\n        return torch.special.bessel_j0(x).mean((2, 3))\n\n\n"
                                        "def make(**kw):\n    return nn.Sequential(nn.Conv2d(3, 4, 1), B())\n")
    with pytest.raises(UserError, match="op 'prims.bessel_j0' in module '1'"):
        deploy(f"{tmp_path / 'bessel.py'}:make", DeployOptions(input="1x3x8x8", out=tmp_path / "out", quiet=True))
    assert [p.name for p in tmp_path.iterdir()] == ["bessel.py"]


def test_existing_out_needs_overwrite(tmp_path):
    from redistill.errors import UserError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        deploy("cifar_resnet8:width=4", DeployOptions(input="1x3x8x8", out=tmp_path / "out", quiet=True))
    assert (tmp_path / "out" / "keep.txt").is_file()


def test_torchao_refuses_a_module_called_twice_by_name():
    from redistill.deploy.quantize import quantize_torchao
    from redistill.errors import UserError

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(UserError, match="module 'conv' is called more than once.*own module instance"):
        quantize_torchao(Twice().eval(), (x,), [x])
