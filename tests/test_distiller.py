"""Distiller: frozen teacher, terms by name, the one weighted total, registry, deploy."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from redistill.distill import Distiller, DistillMethod, REDMethod, create_method, list_methods, register_method
from redistill.distill.base import _METHODS
from redistill.distill.red import REDWrapped, red_loss
from redistill.errors import UserError
from redistill.train.task import ClassificationTask


def tiny(stem: int, num_classes: int = 3) -> nn.Sequential:
    """conv(stem stride) - BN - ReLU - conv(stride 2) - BN - ReLU - pool - fc; dropout to catch eval mode."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stem, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, num_classes),
    )  # fmt: skip


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def _red_distiller(**method_opts) -> Distiller:
    torch.manual_seed(0)
    teacher, student = tiny(1), tiny(2)  # teacher 16 -> 16 -> 8; student 16 -> 8 -> 4
    pairs = [{"student": "0", "teacher": "3", "alpha": 50.0}, {"student": "3", "teacher": "5", "side": "in", "alpha": 10.0}]
    method = REDMethod(pairs=pairs, **method_opts)
    images, _ = _batch()
    return Distiller(student, teacher, method, example_input=images)


def test_teacher_is_frozen_and_always_eval():
    d = _red_distiller()
    d.train()
    assert not d.teacher.training and d.student.training
    assert all(not p.requires_grad for p in d.teacher.parameters())
    d.eval()
    d.train(True)
    assert not d.teacher.training
    d.apply(lambda m: m.train())  # bypasses Distiller.train; the next forward restores eval
    bn_before = d.teacher[1].running_mean.clone()
    d(*_batch())
    assert not d.teacher.training and torch.equal(d.teacher[1].running_mean, bn_before)


def test_training_step_moves_student_not_teacher():
    d = _red_distiller().train()
    teacher_state = copy.deepcopy(d.teacher.state_dict())
    student_bn = d.student[1].running_mean.clone()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1)
    images, targets = _batch()
    logits, terms = d(images, targets)
    d.total_loss(terms).backward()
    opt.step()
    assert all(p.grad is None for p in d.teacher.parameters())
    for key, value in d.teacher.state_dict().items():  # weights and BN running stats
        assert torch.equal(value, teacher_state[key]), key
    assert not torch.equal(d.student[1].running_mean, student_bn)  # the check itself can fail
    red = d.student[0].red_out
    assert red.gate[0].weight.grad is not None and red.gate[0].weight.grad.abs().sum() > 0


def test_terms_by_name_and_total_equals_the_formula():
    d = _red_distiller(w_task=0.5, w_distill=0.5).train()
    images, targets = _batch()
    logits, terms = d(images, targets)
    assert logits.shape == (4, 3)
    assert set(terms) == {"ce", "red/0", "red/3:in"}
    # recompute each term independently of the method
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, targets).item())
    with torch.no_grad():
        t_out3 = d.teacher[:4](images)  # output of teacher layer "3": 8 x 8
        t_in5 = d.teacher[:5](images)  # input of teacher layer "5": 8 x 8
    s0 = d.student[0](images)  # the wrapped conv with its RED block: 8 x 8
    s_in3 = d.student[3].red_in(d.student[2](d.student[1](s0)))  # what student layer "3" receives
    assert terms["red/0"].item() == pytest.approx(red_loss(s0, t_out3).item(), rel=1e-5)
    assert terms["red/3:in"].item() == pytest.approx(red_loss(s_in3, t_in5).item(), rel=1e-5)
    # 0.5 * CE + 0.5 * mean_k(alpha_k * L_k), K = 2
    expected = 0.5 * terms["ce"].item() + 0.5 * (50.0 * terms["red/0"].item() + 10.0 * terms["red/3:in"].item()) / 2
    assert d.total_loss(terms).item() == pytest.approx(expected, rel=1e-6)
    assert d.weights() == {"ce": 0.5, "red/0": 12.5, "red/3:in": 2.5}


def test_vanilla_training_has_only_ce():
    torch.manual_seed(0)
    task = ClassificationTask(label_smoothing=0.1)
    d = Distiller(tiny(2), task_loss=task.loss, task_term=task.term).train()
    images, targets = _batch()
    logits, terms = d(images, targets)
    assert list(terms) == ["ce"]
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, targets, label_smoothing=0.1).item())
    assert d.total_loss(terms).item() == pytest.approx(terms["ce"].item())
    assert d.deployed_student() is d.student


def test_the_task_term_comes_from_the_task():
    # A task-agnostic Distiller: another task's loss and term name replace the cross-entropy.
    d = Distiller(tiny(2), task_loss=lambda out, target: (out - target).square().mean(), task_term="mse").train()
    images, _ = _batch()
    target = torch.zeros(4, 3)
    out, terms = d(images, target)
    assert list(terms) == ["mse"] and terms["mse"].item() == pytest.approx(out.square().mean().item())
    assert d.weights() == {"mse": 1.0}


def test_soft_targets_are_accepted():  # CutMix/MixUp give probabilities
    d = Distiller(tiny(2)).train()
    images, _ = _batch()
    soft = torch.softmax(torch.randn(4, 3), dim=1)
    logits, terms = d(images, soft)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, soft).item())


def test_deployed_student_keeps_red_blocks():
    d = _red_distiller().eval()
    deployed = d.deployed_student()
    assert isinstance(deployed[0], REDWrapped) and isinstance(deployed[3], REDWrapped)
    assert any(k.startswith("0.red_out.") for k in deployed.state_dict())
    images, _ = _batch()
    assert torch.equal(deployed(images), d.student(images))


class Regressor(DistillMethod):
    """A FitNet-like method whose regressor is training-only: it lives in the method."""

    weight = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.regressor = nn.Conv2d(8, 8, 1)

    def student_refs(self):
        return ["3"]

    def teacher_refs(self):
        return ["3"]

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets):
        t = F.adaptive_avg_pool2d(feats_t["3"], feats_s["3"].shape[-2:])
        return {"hint": F.mse_loss(self.regressor(feats_s["3"]), t)}


def test_method_modules_train_but_do_not_ship():
    torch.manual_seed(0)
    d = Distiller(tiny(2), tiny(1), Regressor()).train()
    trainable = {id(p) for p in d.trainable_parameters()}
    assert id(d.method.regressor.weight) in trainable
    assert all(id(p) not in trainable for p in d.teacher.parameters())
    images, targets = _batch()
    _, terms = d(images, targets)
    assert d.total_loss(terms).item() == pytest.approx(terms["ce"].item() + 3.0 * terms["hint"].item(), rel=1e-6)
    assert not any("regressor" in k for k in d.deployed_student().state_dict())


def test_method_without_teacher_is_a_user_error():
    with pytest.raises(UserError, match="needs a teacher"):
        Distiller(tiny(2), None, Regressor())


def test_registry():
    assert "red" in list_methods()
    with pytest.raises(UserError, match="unknown distillation method 'rd'.*did you mean.*red.*known methods: .*red"):
        create_method("rd")

    @register_method("_test_regressor")
    class Registered(Regressor):
        pass

    try:
        assert isinstance(create_method("_test_regressor"), Registered)
        assert Registered.name == "_test_regressor"
        with pytest.raises(ValueError, match="already registered"):
            register_method("_test_regressor")(Regressor)
    finally:
        _METHODS.pop("_test_regressor")


def test_red_auto_on_a_project_model_trains_one_step():
    models = pytest.importorskip("redistill.models")
    torch.manual_seed(0)
    teacher = models.create_model("cifar_resnet8", in_channels=1, num_classes=10)
    student = models.create_model("cifar_resnet8:strides=4,1,1,1", in_channels=1, num_classes=10)
    images, targets = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    d = Distiller(student, teacher, create_method("red", alpha=10.0), example_input=images).train()
    assert [(p.student, p.teacher, p.side) for p in d.method.pairs] == [("conv1", "layer3.0", "out")]
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05)
    _, terms = d(images, targets)
    assert set(terms) == {"ce", "red/conv1"}
    d.total_loss(terms).backward()
    opt.step()
    assert isinstance(d.deployed_student().conv1, REDWrapped)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("setup_on", ["cpu", "cuda"])
def test_red_distiller_on_cuda_with_amp_and_channels_last(setup_on):
    torch.manual_seed(0)
    teacher, student = tiny(1), tiny(2)
    images, targets = _batch(8)
    if setup_on == "cuda":
        teacher, student, images = teacher.cuda(), student.cuda(), images.cuda()
    pairs = [{"student": "0", "teacher": "3"}, {"student": "3", "teacher": "5", "side": "in"}]
    d = Distiller(student, teacher, REDMethod(pairs=pairs, alpha=50.0), example_input=images)
    d = d.cuda().to(memory_format=torch.channels_last).train()
    assert all(p.is_cuda for p in d.student.parameters())
    teacher_state = copy.deepcopy(d.teacher.state_dict())
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1)
    x = images.cuda().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, terms = d(x, targets.cuda())
        loss = d.total_loss(terms)
    assert all(torch.isfinite(v) for v in terms.values()) and terms["red/0"].dtype == torch.float32
    loss.backward()
    opt.step()
    for key, value in d.teacher.state_dict().items():
        assert torch.equal(value, teacher_state[key]), key


def test_alpha_zero_gives_no_distillation_gradient():
    """student+: RED blocks in the student, every alpha 0: the gradient is that of w_task * CE alone."""
    images, targets = _batch()

    def grads(alpha: float, ce_only: bool) -> tuple[dict, dict]:
        torch.manual_seed(0)
        teacher, student = tiny(1), tiny(2)
        method = REDMethod(pairs=["0 -> 3", "3:in -> 5:in"], alpha=alpha, w_task=0.5, w_distill=0.5)
        d = Distiller(student, teacher, method, example_input=images).train()
        torch.manual_seed(1)  # the same dropout mask in every call
        _, terms = d(images, targets)
        loss = d.weight_of("ce") * terms["ce"] if ce_only else d.total_loss(terms)
        loss.backward()
        return {n: p.grad.clone() for n, p in d.student.named_parameters()}, terms

    plus, terms = grads(0.0, ce_only=False)
    task, _ = grads(0.0, ce_only=True)
    assert all(v.item() > 1e-4 for k, v in terms.items() if k != "ce")  # the terms exist, they just weigh 0
    assert any(".red_" in n for n in plus)  # the RED blocks are in the student and trained
    assert all(torch.equal(plus[n], task[n]) for n in task)  # bit for bit: 0 * L_RED adds nothing
    red, _ = grads(10.0, ce_only=False)
    assert not all(torch.allclose(red[n], task[n]) for n in task)  # with alpha 10 the same test tells them apart
