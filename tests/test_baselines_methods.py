"""Every baseline method through the Distiller: setup, gradients, two training steps, deploy."""

from __future__ import annotations

import pytest
import torch

from redistill.distill.base import create_method, list_methods
from redistill.distill.distiller import Distiller
from redistill.distill.hooks import capture
from redistill.errors import UserError

models = pytest.importorskip("redistill.models")

BASELINES = [
    "kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "reviewkd", "dkd",
    "mlld", "red_kd",
]
# small memory queue for CRD; one inline init step so two steps cover both stages
OPTIONS = {"crd": {"nce_k": 32}, "ab": {"init_steps": 1}, "fsp": {"init_steps": 1}, "ft": {"init_steps": 1}}


def tiny_pair():
    torch.manual_seed(0)
    teacher = models.create_model("cifar_resnet8", num_classes=5, in_channels=1, width=4).eval()
    student = models.create_model("cifar_resnet8:strides=4,1,1,1", num_classes=5, in_channels=1, width=4)
    return teacher, student


def make(name: str, **extra):
    teacher, student = tiny_pair()
    method = create_method(name, **{**OPTIONS.get(name, {}), **extra})
    distiller = Distiller(student, teacher, method, example_input=torch.randn(2, 1, 16, 16))
    return distiller, teacher


def batch(n: int = 6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_all_baselines_registered():
    assert set(BASELINES) <= set(list_methods())


@pytest.mark.parametrize("name", BASELINES)
def test_two_training_steps(name):
    distiller, teacher = make(name)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    opt = torch.optim.SGD(list(distiller.trainable_parameters()), lr=0.01, momentum=0.9)
    distiller.train()
    seen_terms = set()
    for _ in range(2):
        images, targets = batch()
        logits, terms = distiller(images, targets)
        assert logits.shape == (6, 5)
        assert "ce" in terms and all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
        seen_terms |= set(terms) - {"ce"}
        loss = distiller.total_loss(terms)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in teacher.parameters())
        opt.step()
    assert seen_terms, f"{name} produced no distillation term in two steps"
    train = pytest.importorskip("redistill.train.build")
    assert train.pairs_to_data(distiller.method) is None or name == "red_kd"  # what run summaries record
    assert not teacher.training
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())  # BN stats too
    changed = [k for k, v in distiller.student.state_dict().items() if k in student_before and not torch.equal(v, student_before[k])]
    assert changed


@pytest.mark.parametrize("name", BASELINES)
def test_distillation_terms_reach_student_not_teacher(name):
    distiller, teacher = make(name)
    distiller.train()
    images, targets = batch()
    # AB and FSP act in their init stage (the first step here); FT's student term comes after it
    for _ in range(2 if name == "ft" else 1):
        _, terms = distiller(images, targets)
    extra = sum(distiller.weight_of(n) * v for n, v in terms.items() if n != "ce")
    params = [p for p in distiller.student.parameters()]
    grads = torch.autograd.grad(extra, params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: no gradient reaches the student"
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "red_kd"])
def test_deployed_student_is_the_bare_student(name):
    distiller, _ = make(name)
    _, fresh = tiny_pair()
    deployed = distiller.deployed_student()
    assert deployed is distiller.student
    assert set(deployed.state_dict()) == set(fresh.state_dict())  # no regressor/embedding/ABF inside
    training_only = {id(p) for p in distiller.method.parameters()}
    assert not training_only & {id(p) for p in deployed.parameters()}


def test_red_kd_ships_red_blocks_and_adds_kd():
    distiller, _ = make("red_kd", kd_weight=0.7, temperature=3.0)
    deployed = distiller.deployed_student()
    assert any("red" in k for k in deployed.state_dict())
    _, terms = distiller(*batch())
    red_terms = [n for n in terms if n.startswith("red/")]
    assert red_terms and "kd" in terms
    assert distiller.weight_of("kd") == 0.7 and distiller.weight_of("ce") == 0.5
    # the RED part keeps RED's own weighting: w_distill * alpha / K
    assert distiller.weight_of(red_terms[0]) == pytest.approx(0.5 / len(red_terms))


def test_total_loss_applies_authors_weights():
    distiller, _ = make("at")
    _, terms = distiller(*batch())
    expected = terms["ce"] + 1000 * sum(v for n, v in terms.items() if n.startswith("at/"))
    assert torch.allclose(distiller.total_loss(terms), expected)
    assert distiller.weights()["ce"] == 1.0
    kd, _ = make("kd")
    assert kd.weights(["ce", "kd"]) == {"ce": 0.1, "kd": 0.9}
    rkd, _ = make("rkd")
    assert rkd.weights(["rkd/distance", "rkd/angle"]) == {"rkd/distance": 25.0, "rkd/angle": 50.0}


def test_default_taps_follow_feature_info():
    distiller, _ = make("at")
    assert distiller.method.student_refs() == ["layer1", "layer2", "layer3"]  # stem skipped
    fitnet, _ = make("fitnet")
    assert fitnet.method.student_refs() == ["layer2"]  # the middle stage
    sp, _ = make("sp")
    assert sp.method.student_refs() == ["layer3"]
    pkt, _ = make("pkt")
    assert pkt.method.student_refs() == ["fc:in"]
    fsp, _ = make("fsp")
    assert fsp.method.student_refs() == ["relu", "layer1", "layer2", "layer3"]
    custom, _ = make("at", student_layers=["layer3"], teacher_layers=["layer2"])
    assert custom.method.student_refs() == ["layer3"] and custom.method.teacher_refs() == ["layer2"]


def test_bad_layer_and_option_are_user_errors():
    with pytest.raises(UserError, match="did you mean"):
        make("at", student_layers=["layer9"], teacher_layers=["layer2"])
    with pytest.raises(UserError, match="unknown option"):
        create_method("at", wieght=3)
    with pytest.raises(UserError, match="same length"):
        make("nst", student_layers=["layer1", "layer2"], teacher_layers=["layer2"])
    with pytest.raises(UserError, match="init_steps"):
        make("ab", init_steps=0)


def test_init_stage_inline_then_main():
    distiller, _ = make("ft", init_steps=2)
    distiller.train()
    names = [set(distiller(*batch())[1]) - {"ce"} for _ in range(3)]
    assert names == [{"ft/reconstruction"}, {"ft/reconstruction"}, {"ft"}]
    assert distiller.weight_of("ft") == 200.0 and distiller.weight_of("ft/reconstruction") == 1.0
    # validation passes do not advance the stage
    distiller.eval()
    with torch.no_grad():
        distiller(*batch())
    assert distiller.method.counter.steps == 3
    # the step count is saved with the method, so a resumed run stays in the right stage
    again, _ = make("ft", init_steps=2)
    again.method.load_state_dict(distiller.method.state_dict())
    assert again.method.counter.steps == 3


def test_pre_stages_train_only_what_the_papers_train():
    fitnet, teacher = make("fitnet", hint_epochs=2)
    (stage,) = fitnet.method.pre_stages()
    assert stage.epochs == 2 and stage.name == "fitnet_init"
    params = {id(p) for p in stage.parameters()}
    names = {n for n, p in fitnet.student.named_parameters() if id(p) in params}
    assert "conv1.weight" in names and any(n.startswith("layer2") for n in names)
    assert not any(n.startswith(("layer3", "fc")) for n in names)  # beyond the guided layer
    assert {id(p) for p in fitnet.method.regressors.parameters()} <= params
    assert not params & {id(p) for p in teacher.parameters()}
    # the stage loss has the forward signature and returns weighted-by-name terms
    images, targets = batch()
    with torch.no_grad(), capture(teacher, fitnet.method.teacher_refs()) as ft:
        lt = teacher(images)
    with capture(fitnet.student, fitnet.method.student_refs()) as fs:
        ls = fitnet.student(images)
    terms = stage.loss(dict(fs), dict(ft), ls, lt, targets)
    assert set(terms) == set(stage.weights) == {"fitnet/layer2"}

    ft_method, _ = make("ft", init_steps=0, init_epochs=3)
    (stage,) = ft_method.method.pre_stages()
    assert {id(p) for p in stage.parameters()} == {id(p) for p in ft_method.method.paraphraser.parameters()}
    ab, _ = make("ab", init_steps=0, init_epochs=1)
    (stage,) = ab.method.pre_stages()
    assert stage.weights == {"ab/layer1": 0.25 * 3e-3, "ab/layer2": 0.5 * 3e-3, "ab/layer3": 1.0 * 3e-3}
    assert make("at")[0].method.pre_stages() == []


def test_warmup_ramps_weights():
    distiller, _ = make("dkd", warmup_steps=4, beta=8.0)
    distiller.train()
    distiller(*batch())
    assert distiller.weight_of("dkd/nckd") == pytest.approx(8.0 / 4)
    for _ in range(5):
        distiller(*batch())
    assert distiller.weight_of("dkd/nckd") == 8.0 and distiller.weight_of("dkd/tckd") == 1.0


def test_soft_targets_accepted():
    distiller, _ = make("dkd")
    images, targets = batch()
    soft = torch.nn.functional.one_hot(targets, 5).float() * 0.8 + 0.04
    _, terms = distiller(images, soft)
    assert torch.isfinite(terms["dkd/tckd"])


def test_selected_by_config_and_command_line_overrides():
    from redistill import train
    from redistill.train.build import build_distiller
    from redistill.train.data import DataInfo
    from redistill.train.task import ClassificationTask

    base = {"model": {"student": "cifar_resnet8:strides=4,1,1,1", "teacher": "cifar_resnet8", "options": {"width": 4}},
            "distill": {"method": "kd"}}
    cfg = train.load_config(base, ["distill.method=at", "distill.options={weight: 10, p: 1}"])
    info = DataInfo("synthetic", 5, 1, 16, (0.5,), (0.5,))
    teacher, _ = tiny_pair()
    distiller, student_info = build_distiller(cfg, info, ClassificationTask(), teacher)
    assert student_info.strides == (4, 1, 1, 1)
    assert distiller.method.name == "at" and distiller.method.p == 1.0
    assert distiller.weight_of("at/layer2") == 10.0


def test_mlld_reference_batch_rescales_batch_and_class_levels():
    from redistill.distill.baselines.logit_losses import mlld_loss

    z_s, z_t = torch.randn(8, 5), torch.randn(8, 5)
    raw = mlld_loss(z_s, z_t, [2.0])
    scaled = create_method("mlld", temperatures=[2.0], reference_batch=4)({}, {}, z_s, z_t, None)
    assert torch.allclose(scaled["mlld/batch"], raw["batch"] / 2)  # (4 / 8)
    assert torch.allclose(scaled["mlld/class"], raw["class"] / 4)  # (4 / 8)^2
    assert torch.allclose(scaled["mlld/instance"], raw["instance"])
