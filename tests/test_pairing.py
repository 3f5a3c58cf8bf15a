"""Pairs: parsing, validation errors, layer tables, the auto rule (tiny nets and the authors' pairs)."""

import argparse

import pytest
import torch
import torch.nn as nn

from redistill.cli.layers import layers_report
from redistill.distill import Pair, auto_pairs, layer_table, parse_pairs, validate_pairs
from redistill.errors import UserError
from redistill.models import create_model


class Block(nn.Module):
    """Residual block; a projection shortcut when the shape changes (as in a ResNet)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.downsample = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class Chain(nn.Module):
    """Inverted-residual-like block without skip: a plain chain, down-sampling in its middle conv."""

    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, 2 * c, 3, stride, 1, groups=2 * c),
                                  nn.Conv2d(2 * c, c, 1))  # fmt: skip

    def forward(self, x):
        return self.conv(x)


class TinyNet(nn.Module):
    def __init__(self, stem: int, strides: tuple[int, int, int], width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stem, 1, bias=False)
        self.layer1 = nn.Sequential(Block(width, width, strides[0]))
        self.layer2 = nn.Sequential(Block(width, 2 * width, strides[1]), Block(2 * width, 2 * width, 1))
        self.layer3 = nn.Sequential(Chain(2 * width, strides[2]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 3)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


SHAPE = (1, 3, 16, 16)


def teacher() -> TinyNet:
    return TinyNet(1, (2, 2, 2))  # 16 -> 16, 8, 4, 2


def student() -> TinyNet:
    return TinyNet(4, (1, 2, 1))  # 16 -> 4, 4, 2, 2


def test_layer_table_shapes_and_downsampling_layers():
    rows = {r.name: r for r in layer_table(teacher(), SHAPE)}
    assert rows["conv1"].in_shape == (3, 16, 16) and rows["conv1"].out_shape == (4, 16, 16)
    assert rows["layer2.0"].in_shape == (4, 8, 8) and rows["layer2.0"].out_shape == (8, 4, 4)
    down = [n for n, r in rows.items() if r.downsampling]
    # a block with a shortcut is one layer; a plain chain is looked into; global pooling is not a layer
    assert down == ["layer1.0", "layer2.0", "layer3.0.conv.2"]
    assert "fc" not in rows  # its input is no feature map


def test_layer_table_leaves_bn_statistics_and_modes_alone():
    net = teacher().train()
    before = net.layer2[0].bn1.running_mean.clone()
    layer_table(net, SHAPE)
    assert torch.equal(net.layer2[0].bn1.running_mean, before)
    assert all(m.training for m in net.modules())


def test_auto_pairs_follow_the_rule():
    pairs = auto_pairs(student(), teacher(), SHAPE, alpha=50.0)
    # stem 16 -> 4: output pair with the first teacher layer reaching 4 x 4 (layer2.0);
    # student layer2.0 (4 -> 2) has the same in/out as the teacher's layer3.0.conv.2: both sides
    assert [(p.student, p.teacher, p.side) for p in pairs] == [
        ("conv1", "layer2.0", "out"),
        ("layer2.0", "layer3.0.conv.2", "in"),
        ("layer2.0", "layer3.0.conv.2", "out"),
    ]
    assert all(p.alpha == 50.0 and p.distance == "cosine" for p in pairs)
    validate_pairs(student(), teacher(), pairs, SHAPE)


def test_auto_pairs_error_when_nothing_matches():
    with pytest.raises(UserError, match="no teacher layer down-samples to the student stem's 6 x 6"):
        auto_pairs(TinyNet(3, (1, 1, 1)), teacher(), SHAPE)


def test_validate_pairs_unknown_names_suggest_close_ones():
    with pytest.raises(UserError, match=r"no layer 'layer2\.O' in the student.*did you mean.*layer2\.0"):
        validate_pairs(student(), teacher(), [Pair("layer2.O", "layer2.0")], SHAPE)
    with pytest.raises(UserError, match=r"no layer 'layer_2\.0' in the teacher.*did you mean.*layer2\.0"):
        validate_pairs(student(), teacher(), [Pair("conv1", "layer_2.0")], SHAPE)


def test_validate_pairs_shape_mismatch_gives_both_shapes():
    with pytest.raises(UserError, match=r"student 'conv1' is 4 x 4 x 4 but teacher 'layer1.0' is 4 x 8 x 8"):
        validate_pairs(student(), teacher(), [Pair("conv1", "layer1.0")], SHAPE)
    with pytest.raises(UserError, match=r"'fc' has shape \(1, 3\)"):
        validate_pairs(student(), teacher(), [Pair("conv1", "fc")], SHAPE)


def test_validate_pairs_returns_shapes():
    shapes = validate_pairs(student(), teacher(), [Pair("layer2.0", "layer3.0.conv.2", "in")], SHAPE)
    assert shapes == [((1, 4, 4, 4), (1, 16, 4, 4))]


def test_parse_pairs_forms_and_defaults():
    pairs = parse_pairs(
        [
            {"student": "conv1", "teacher": "layer2.0", "red": {"encoder_kernel": 5}},
            {"student": "layer2.0", "teacher": "layer3.0", "side": "in", "distance": "mse", "alpha": 2},
            "layer3.0:in -> layer4.0:in",
        ],
        distance="cosine",
        alpha=50,
        red={"gate_kernel": 3},
    )
    assert pairs[0] == Pair("conv1", "layer2.0", "out", "cosine", 50.0, {"gate_kernel": 3, "encoder_kernel": 5})
    assert pairs[1] == Pair("layer2.0", "layer3.0", "in", "mse", 2.0, {"gate_kernel": 3})
    assert pairs[2] == Pair("layer3.0", "layer4.0", "in", "cosine", 50.0, {"gate_kernel": 3})
    assert pairs[1].term_name == "red/layer2.0:in" and pairs[0].term_name == "red/conv1"
    assert parse_pairs([pairs[1].to_dict()]) == [pairs[1]]


@pytest.mark.parametrize(
    "spec, message",
    [
        ([{"student": "a", "teacher": "b", "sid": "in"}], r"pairs\[0\]: unknown key 'sid'.*did you mean side"),
        ([{"student": "a"}], r"missing 'teacher'"),
        ([{"student": "a", "teacher": "b", "side": "both"}], "side must be 'out' or 'in'"),
        ([{"student": "a", "teacher": "b", "distance": "l2"}], "distance must be one of cosine, mse"),
        ([{"student": "a", "teacher": "b", "alpha": "high"}], "alpha must be a number"),
        ([{"student": "a", "teacher": "b", "red": {"gates": 1}}], "unknown RED option 'gates'.*did you mean gate"),
        (["a:in -> b"], "same side"),
        (["a b"], "student_layer -> teacher_layer"),
        ("conv1", "pairs must be 'auto' or a list"),
        ([], "empty"),
    ],
)
def test_parse_pairs_errors_name_the_problem(spec, message):
    with pytest.raises(UserError, match=message):
        parse_pairs(spec)


def test_layers_report_and_cli(capsys):
    text = layers_report(teacher(), student(), SHAPE, downsampling_only=True)
    assert "teacher layers:" in text and "student layers:" in text
    assert "layer3.0.conv.2" in text and "conv1" in text
    assert "student 4 x 4 x 4, teacher 8 x 4 x 4" in text

    from redistill.cli import layers

    parser = argparse.ArgumentParser()
    layers.add_parser(parser.add_subparsers())
    args = parser.parse_args(["layers", "tests/test_pairing.py:teacher", "tests/test_pairing.py:student",
                              "--input", "1x3x16x16", "--down"])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[:2] == ["model tests/test_pairing.py:teacher: user factory", "model tests/test_pairing.py:student: user factory"]
    assert "\n".join(out[2:]) == text


# --- the authors' pairs (docs/method.md s.5) on this project's model families -------------------


def _authors(student_spec: str, teacher_spec: str, size: int, channels: int = 3) -> list[tuple[str, str, str]]:
    s, t = create_model(student_spec), create_model(teacher_spec)
    return [(p.student, p.teacher, p.side) for p in auto_pairs(s, t, (1, channels, size, size))]


def _stem_then_both_sides(stem: tuple[str, str], later: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    pairs = [(*stem, "out")]
    for s, t in later:
        pairs += [(s, t, "in"), (s, t, "out")]
    return pairs


def test_auto_pairs_resnext18_x4_match_the_authors():
    assert _authors("resnext18-4-11221", "resnext18-1-21222", 128) == _stem_then_both_sides(
        ("conv1", "layer2.0"), [("layer2.0", "layer3.0"), ("layer3.0", "layer4.0")]
    )


def test_auto_pairs_mobilenetv2_x4_match_the_authors():
    # The stem conv features.0.0, before its BN and ReLU6 (the authors' place: the BN then
    # re-normalises the RED output); the down-sampling depthwise convs
    assert _authors("mobilenetv2-4-1221111", "mobilenetv2-1-1222121", 128) == _stem_then_both_sides(
        ("features.0.0", "features.4.conv.3"),
        [("features.2.conv.3", "features.7.conv.3"), ("features.4.conv.3", "features.14.conv.3")],
    )


def test_auto_pairs_resnet18_imagenet_student():
    assert _authors("resnet18:strides=8,1,1,2,2,1", "resnet18", 224) == _stem_then_both_sides(
        ("conv1", "layer2.0"), [("layer2.0", "layer3.0"), ("layer3.0", "layer4.0")]
    )


def test_auto_pairs_paper_shaped_cifar_resnet20_at_56px():
    """The Fashion-MNIST paper-shaped pair: stem x4 with one later stride 2 kept gets 3 RED blocks, peak 8x lower."""
    from redistill.memory.analyze import analyze_memory
    from redistill.models import create_model

    teacher, student = "cifar_resnet20:strides=1,2,2,2:in_channels=1", "cifar_resnet20:strides=4,1,2,1:in_channels=1"
    assert _authors(student, teacher, 56, channels=1) == _stem_then_both_sides(
        ("conv1", "layer2.0"), [("layer2.0", "layer3.0")]
    )
    for convention in ("live", "layer"):
        peaks = [analyze_memory(create_model(spec).eval(), (1, 1, 56, 56), convention=convention).peak_bytes
                 for spec in (teacher, student)]
        assert peaks == [16 * 56 * 56 * 4 * 3 // 2, 16 * 14 * 14 * 4 * 3]  # the redistill memory figures
        assert peaks[0] == 8 * peaks[1]


def test_layers_cli_bad_input_is_one_line_and_exit_2(capsys):
    from redistill.cli.main import main

    rc = main(["layers", "tests/test_pairing.py:teacher", "tests/test_pairing.py:student", "--input", "3x16"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "NxCxHxW or CxHxW" in err


def test_layers_and_memory_read_input_shapes_alike(capsys):
    # One shape parser: CxHxW means batch 1 for every command.
    from redistill.cli.main import main

    refs = ["tests/test_pairing.py:teacher", "tests/test_pairing.py:student"]
    assert main(["layers", *refs, "--input", "3x16x16"]) == 0
    short = capsys.readouterr().out
    assert main(["layers", *refs, "--input", "1x3x16x16"]) == 0
    assert capsys.readouterr().out == short
    assert main(["memory", refs[0], "--input", "3x16x16"]) == 0
    capsys.readouterr()
