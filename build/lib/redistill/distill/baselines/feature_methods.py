"""Feature-map methods: FitNet, AT, NST, VID, AB, FSP, FT, ReviewKD.

By default they tap the stage outputs listed in each model's ``feature_info`` (stem
excluded, deepest stages paired when the counts differ); ``student_layers`` /
``teacher_layers`` choose others. Regressors, connectors and the like are submodules
of the method, so the deployed student is the student alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from redistill.distill.base import register_method
from redistill.distill.baselines import feature_losses as L
from redistill.distill.baselines.common import pair_layers, penultimate_ref, stage_refs
from redistill.distill.baselines.method_base import (
    InitStageMixin,
    LayerPairMethod,
    StepCounter,
    as_fp32,
    fp32,
    reached_parameters,
)
from redistill.distill.baselines.review import ReviewKDModule, hcl_loss
from redistill.errors import UserError


@register_method("fitnet")
class FitNetMethod(InitStageMixin, LayerPairMethod):
    """FitNet hints: a regressor maps one student stage onto the teacher's (MSE).

    Default hint: the middle stage (RepDistiller's ``hint_layer=2`` on ResNets). By
    default the hint is trained jointly with the cross-entropy from the start, as in
    RepDistiller; ``hint_epochs`` adds FitNets' first stage as a pre-stage
    (:class:`~redistill.distill.base.PreStage`) in which only the student up to the
    guided layer and the regressor learn the hint (for trainers that run pre-stages;
    an inline variant would equal the joint loss, the cross-entropy weight being fixed).

    Args:
        student_layers / teacher_layers: one ref each (the guided and the hint layer).
        weight: weight of the ``fitnet/<layer>`` term (authors: 100).
        hint_epochs: epochs of the hint pre-stage (0: none).
        task_weight: weight of the cross-entropy.
    """

    def __init__(
        self,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        weight: float = 100.0,
        hint_epochs: int = 0,
        task_weight: float = 1.0,
    ) -> None:
        super().__init__(student_layers, teacher_layers, weight, task_weight)
        self.init_epochs = int(hint_epochs)
        self.counter = StepCounter()
        self.regressors = nn.ModuleList()

    def select_layers(self, student, teacher):
        s, t = pair_layers(student, teacher, self._layers_s, self._layers_t)
        if len(s) > 1:
            if self._layers_s is not None:
                raise UserError(f"fitnet uses one hint layer; got student_layers {s}")
            s, t = [s[len(s) // 2]], [t[len(t) // 2]]
        return s, t

    def build(self, shapes_s, shapes_t) -> None:
        self.regressors = nn.ModuleList(L.ConvRegressor(s[1], t[1]) for s, t in zip(shapes_s, shapes_t))

    def setup(self, student, teacher, example_input):
        student = super().setup(student, teacher, example_input)
        self.init_stage_setup(student, reached_parameters(student, self.layers_s, example_input))
        return student

    def main_loss(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        out = {}
        for i, (f_s, f_t) in enumerate(self.feature_pairs(feats_s, feats_t)):
            pred = self.regressors[i](f_s)
            with fp32(pred):
                out[self.term_key(i)] = L.hint_loss(pred.float(), f_t.float())
        return out

    init_loss = main_loss

    def init_modules(self) -> list[nn.Module]:
        return [self.regressors]

    def init_weights(self) -> dict[str, float]:
        return {name: self.weight for name in self.term_names()}


@register_method("at")
class ATMethod(LayerPairMethod):
    """Attention transfer on every stage output (``at/<layer>``, authors' weight 1000).

    Args:
        p: exponent of the attention map.
    """

    def __init__(self, student_layers=None, teacher_layers=None, weight: float = 1000.0, p: float = 2.0,
                 task_weight: float = 1.0) -> None:
        super().__init__(student_layers, teacher_layers, weight, task_weight)
        self.p = float(p)

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        with fp32(logits_s):
            pairs = self.feature_pairs(as_fp32(feats_s), as_fp32(feats_t))
            return {self.term_key(i): L.at_loss(s, t, self.p) for i, (s, t) in enumerate(pairs)}


@register_method("nst")
class NSTMethod(LayerPairMethod):
    """Neuron selectivity transfer on every stage output (``nst/<layer>``, authors' weight 50)."""

    def __init__(self, student_layers=None, teacher_layers=None, weight: float = 50.0, task_weight: float = 1.0) -> None:
        super().__init__(student_layers, teacher_layers, weight, task_weight)

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        with fp32(logits_s):
            pairs = self.feature_pairs(as_fp32(feats_s), as_fp32(feats_t))
            return {self.term_key(i): L.nst_loss(s, t) for i, (s, t) in enumerate(pairs)}


@register_method("vid")
class VIDMethod(LayerPairMethod):
    """Variational information distillation on every stage output (``vid/<layer>``, weight 1).

    Args:
        init_pred_var: initial predicted variance.
        eps: variance floor.
    """

    def __init__(self, student_layers=None, teacher_layers=None, weight: float = 1.0, init_pred_var: float = 5.0,
                 eps: float = 1e-5, task_weight: float = 1.0) -> None:
        super().__init__(student_layers, teacher_layers, weight, task_weight)
        self.init_pred_var, self.eps = float(init_pred_var), float(eps)
        self.vid = nn.ModuleList()

    def build(self, shapes_s, shapes_t) -> None:
        self.vid = nn.ModuleList(
            L.VIDLoss(s[1], t[1], t[1], self.init_pred_var, self.eps) for s, t in zip(shapes_s, shapes_t)
        )

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        with fp32(logits_s):
            pairs = self.feature_pairs(as_fp32(feats_s), as_fp32(feats_t))
            return {self.term_key(i): self.vid[i](s, t) for i, (s, t) in enumerate(pairs)}


@register_method("ab")
class ABMethod(InitStageMixin, LayerPairMethod):
    """Activation-boundary transfer, as an initialisation stage.

    The init stage trains the student up to the deepest tapped stage, with 1x1-conv + BN
    connectors, on the AB loss (layer weights ``2^(i-n+1)``, scaled by 3/1000 as in the
    authors' code); the main stage is plain cross-entropy (RepDistiller: ``loss_kd = 0``).
    Stage outputs are post-ReLU, so "inactive" teacher neurons are those at exactly 0.

    Args:
        margin: the boundary margin.
        init_steps: inline init stage length in training steps (see :class:`InitStageMixin`).
        init_epochs: epochs of a separate pre-stage instead (RepDistiller: 30).
        weight: overall weight of the init-stage terms (authors: 1).
    """

    def __init__(self, student_layers=None, teacher_layers=None, weight: float = 1.0, margin: float = 1.0,
                 init_steps: int = 1000, init_epochs: int = 0, task_weight: float = 1.0) -> None:
        super().__init__(student_layers, teacher_layers, weight, task_weight)
        self.margin = float(margin)
        self.init_steps, self.init_epochs = int(init_steps), int(init_epochs)
        self.counter = StepCounter()
        self.connectors = nn.ModuleList()

    def build(self, shapes_s, shapes_t) -> None:
        self.connectors = nn.ModuleList(
            L.ConvRegressor(s[1], t[1], relu=False, kernel_size=1) for s, t in zip(shapes_s, shapes_t)
        )

    def setup(self, student, teacher, example_input):
        self.require_init_stage()
        student = super().setup(student, teacher, example_input)
        self.init_stage_setup(student, reached_parameters(student, self.layers_s, example_input))
        return student

    def init_loss(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        out = {}
        for i, (f_s, f_t) in enumerate(self.feature_pairs(feats_s, feats_t)):
            g = self.connectors[i](f_s)
            with fp32(g):
                out[self.term_key(i)] = L.ab_loss(g.float(), f_t.float(), self.margin)
        return out

    def init_modules(self) -> list[nn.Module]:
        return [self.connectors]

    def init_weights(self) -> dict[str, float]:
        layer_w = L.ab_layer_weights(len(self.layers_s))
        return {self.term_key(i): self.weight * w * 3e-3 for i, w in enumerate(layer_w)}


@register_method("fsp")
class FSPMethod(InitStageMixin, LayerPairMethod):
    """FSP (flow of solution procedure) matrices between consecutive stages, as an init stage.

    Taps the stem and every stage (``feature_info``); student and teacher channel counts
    must match layer by layer. The init stage trains the student's feature layers on the
    FSP terms ``fsp/<a>-><b>``; the main stage is cross-entropy (as in RepDistiller).

    Args:
        weight: weight of each FSP term in the init stage. 1, as in RepDistiller's init
            (the "-b 50" of its recipes multiplies a main-stage FSP term that is zero);
            50 on the init terms wrecked the student in our Fashion-MNIST check.
        init_steps: inline init stage length in training steps (see :class:`InitStageMixin`).
        init_epochs: epochs of a separate pre-stage instead (RepDistiller: 30).
    """

    def __init__(self, student_layers=None, teacher_layers=None, weight: float = 1.0, init_steps: int = 1000,
                 init_epochs: int = 0, task_weight: float = 1.0) -> None:
        super().__init__(student_layers, teacher_layers, weight, task_weight)
        self.init_steps, self.init_epochs = int(init_steps), int(init_epochs)
        self.counter = StepCounter()

    def select_layers(self, student, teacher):
        s = self._layers_s if self._layers_s is not None else stage_refs(student, skip_stem=False)
        t = self._layers_t if self._layers_t is not None else stage_refs(teacher, skip_stem=False)
        return pair_layers(student, teacher, s, t)

    def build(self, shapes_s, shapes_t) -> None:
        for ref_s, ref_t, s, t in zip(self.layers_s, self.layers_t, shapes_s, shapes_t):
            if s[1] != t[1]:
                raise UserError(
                    f"fsp needs equal channels: student '{ref_s}' has {s[1]}, teacher '{ref_t}' has {t[1]}; "
                    "choose matching layers with student_layers/teacher_layers"
                )
        if len(self.layers_s) < 2:
            raise UserError("fsp needs at least two layers per model (it compares consecutive layers)")

    def setup(self, student, teacher, example_input):
        self.require_init_stage()
        student = super().setup(student, teacher, example_input)
        self.init_stage_setup(student, reached_parameters(student, self.layers_s, example_input))
        return student

    def term_names(self) -> list[str]:
        return self.init_term_names()

    def init_term_names(self) -> list[str]:
        return [f"fsp/{a}->{b}" for a, b in L.consecutive_pairs(self.layers_s)]

    def init_loss(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        with fp32(logits_s):
            fs = [feats_s[r].float() for r in self.layers_s]
            ft = [feats_t[r].float() for r in self.layers_t]
            return {
                name: L.fsp_loss(s0, s1, t0, t1)
                for name, (s0, s1), (t0, t1) in zip(self.init_term_names(), L.consecutive_pairs(fs), L.consecutive_pairs(ft))
            }

    def init_weights(self) -> dict[str, float]:
        return {name: self.weight for name in self.init_term_names()}


@register_method("ft")
class FTMethod(InitStageMixin, LayerPairMethod):
    """Factor transfer on the last stage output.

    The init stage trains a paraphraser (auto-encoder) to reconstruct the teacher's map
    (``ft/reconstruction``, MSE); in the main stage a translator maps the student's map to
    the paraphraser's factor space and ``ft`` (L1 of normalised factors) is minimised, the
    paraphraser frozen.

    Args:
        weight: weight of the ``ft`` term (authors: 200).
        rate: factor channels / teacher channels (0.5).
        init_steps: inline paraphraser stage length in training steps (the student trains
            on the cross-entropy meanwhile).
        init_epochs: epochs of a separate paraphraser pre-stage instead (RepDistiller: 30).
    """

    def __init__(self, student_layers=None, teacher_layers=None, weight: float = 200.0, rate: float = 0.5,
                 init_steps: int = 1000, init_epochs: int = 0, task_weight: float = 1.0) -> None:
        super().__init__(student_layers, teacher_layers, weight, task_weight)
        self.rate = float(rate)
        self.init_steps, self.init_epochs = int(init_steps), int(init_epochs)
        self.counter = StepCounter()
        self.paraphraser: nn.Module | None = None
        self.translator: nn.Module | None = None

    def select_layers(self, student, teacher):
        s, t = pair_layers(student, teacher, self._layers_s, self._layers_t)
        return s[-1:], t[-1:]

    def setup(self, student, teacher, example_input):
        self.require_init_stage()
        student = super().setup(student, teacher, example_input)
        self.init_stage_setup(student, [])  # the paraphraser alone learns in the init stage
        return student

    def build(self, shapes_s, shapes_t) -> None:
        self.paraphraser = L.Paraphraser(shapes_t[0][1], self.rate)
        self.translator = L.Translator(shapes_s[0][1], shapes_t[0][1], self.rate)

    def term_names(self) -> list[str]:
        return ["ft", "ft/reconstruction"]

    def main_loss(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        (f_s, f_t), = self.feature_pairs(feats_s, feats_t)
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(f_t)
        factor_s = self.translator(f_s)
        with fp32(factor_s):
            return {"ft": L.ft_loss(factor_s.float(), factor_t.float())}

    def init_loss(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        f_t = feats_t[self.layers_t[0]]
        _, rec = self.paraphraser(f_t)
        with fp32(rec):
            return {"ft/reconstruction": nn.functional.mse_loss(rec.float(), f_t.float())}

    def init_modules(self) -> list[nn.Module]:
        return [self.paraphraser]

    def init_weights(self) -> dict[str, float]:
        return {"ft/reconstruction": 1.0}


@register_method("reviewkd")
class ReviewKDMethod(LayerPairMethod):
    """ReviewKD: ABF fusion of all student stages + the pooled feature, HCL loss (``reviewkd``).

    Defaults are the authors' ImageNet ones (weight 1, warm-up over the first epoch).

    Args:
        weight: weight of the ``reviewkd`` term.
        warmup_steps: the weight ramps linearly from 0 over this many steps.
        max_mid_channels: cap of the ABF width (512).
    """

    def __init__(self, student_layers=None, teacher_layers=None, weight: float = 1.0, warmup_steps: int = 0,
                 max_mid_channels: int = 512, task_weight: float = 1.0) -> None:
        super().__init__(student_layers, teacher_layers, weight, task_weight)
        self.warmup_steps = int(warmup_steps)
        self.max_mid_channels = int(max_mid_channels)
        self.counter = StepCounter()
        self.review: nn.Module | None = None

    def select_layers(self, student, teacher):
        s, t = pair_layers(student, teacher, self._layers_s, self._layers_t)
        if self._layers_s is None and self._layers_t is None:
            # the pooled feature is the deepest level, as in the authors' code
            s, t = [*s, penultimate_ref(student)], [*t, penultimate_ref(teacher)]
        return s, t

    def build(self, shapes_s, shapes_t) -> None:
        self.review = ReviewKDModule(
            [s[1] for s in shapes_s],
            [t[1] for t in shapes_t],
            [tuple(t[2:]) if len(t) == 4 else (1, 1) for t in shapes_t],
            self.max_mid_channels,
        )

    def term_names(self) -> list[str]:
        return ["reviewkd"]

    def term_weight(self, term_name: str) -> float:
        return self.weight * self.counter.ramp(self.warmup_steps)

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        self.counter.tick()
        fs = [_as_map(f) for f, _ in self.feature_pairs(feats_s, feats_t)]
        ft = [_as_map(f) for _, f in self.feature_pairs(feats_s, feats_t)]
        outs = self.review(fs)
        with fp32(logits_s):
            return {"reviewkd": hcl_loss([o.float() for o in outs], [t.float() for t in ft])}


def _as_map(f: Tensor) -> Tensor:
    """(B, C) pooled features become (B, C, 1, 1) maps."""
    return f if f.dim() == 4 else f.flatten(1)[:, :, None, None]
