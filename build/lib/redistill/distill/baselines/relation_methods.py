"""Relation and embedding methods: SP, CC, RKD, PKT, CRD.

SP uses the last stage output; CC, RKD, PKT and CRD use the pooled feature that enters
the classifier (``<fc>:in``), as in RepDistiller. ``student_layer`` / ``teacher_layer``
choose other features.
"""

from __future__ import annotations

from torch import Tensor, nn

from redistill.distill.base import DistillMethod, register_method
from redistill.distill.baselines import relation_losses as R
from redistill.distill.baselines.common import Embed, as_vector, penultimate_ref, stage_refs
from redistill.distill.probe import probe_shapes
from redistill.distill.baselines.crd import CRDLoss
from redistill.distill.baselines.method_base import fp32


class _OneFeatureMethod(DistillMethod):
    """Taps one student and one teacher feature; subclasses choose the default."""

    last_stage = False  # default tap: last stage output (True) or penultimate feature (False)

    def __init__(self, student_layer: str | None, teacher_layer: str | None, weight: float, task_weight: float) -> None:
        super().__init__()
        self._layer_s, self._layer_t = student_layer, teacher_layer
        self.layer_s, self.layer_t = "", ""
        self.weight = float(weight)
        self.task_weight = float(task_weight)

    def _default(self, model: nn.Module) -> str:
        return stage_refs(model)[-1] if self.last_stage else penultimate_ref(model)

    def setup(self, student: nn.Module, teacher: nn.Module, example_input: Tensor) -> nn.Module:
        self.layer_s = self._layer_s or self._default(student)
        self.layer_t = self._layer_t or self._default(teacher)
        s = probe_shapes(student, [self.layer_s], example_input)[self.layer_s]
        t = probe_shapes(teacher, [self.layer_t], example_input)[self.layer_t]
        self.build(s, t)
        return student

    def build(self, shape_s, shape_t) -> None:
        """Create training-only modules from the two feature shapes (none by default)."""

    def student_refs(self) -> list[str]:
        return [self.layer_s]

    def teacher_refs(self) -> list[str]:
        return [self.layer_t]

    def term_names(self) -> list[str]:
        return [self.name]

    def features(self, feats_s: dict[str, Tensor], feats_t: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return feats_s[self.layer_s], feats_t[self.layer_t]


def _flat_dim(shape) -> int:
    """Size of the pooled vector a feature of ``shape`` becomes (see ``as_vector``)."""
    return int(shape[1])


@register_method("sp")
class SPMethod(_OneFeatureMethod):
    """Similarity-preserving KD on the last stage output (``sp``, authors' weight 3000)."""

    last_stage = True

    def __init__(self, student_layer: str | None = None, teacher_layer: str | None = None, weight: float = 3000.0,
                 task_weight: float = 1.0) -> None:
        super().__init__(student_layer, teacher_layer, weight, task_weight)

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        f_s, f_t = self.features(feats_s, feats_t)
        with fp32(f_s):
            return {"sp": R.sp_loss(f_s.float(), f_t.float())}


@register_method("cc")
class CCMethod(_OneFeatureMethod):
    """Correlation congruence on linear embeddings of the pooled features (``cc``, weight 0.02).

    Args:
        feat_dim: embedding size (128).
    """

    def __init__(self, student_layer: str | None = None, teacher_layer: str | None = None, weight: float = 0.02,
                 feat_dim: int = 128, task_weight: float = 1.0) -> None:
        super().__init__(student_layer, teacher_layer, weight, task_weight)
        self.feat_dim = int(feat_dim)
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None

    def build(self, shape_s, shape_t) -> None:
        self.embed_s = Embed(_flat_dim(shape_s), self.feat_dim, normalize=False)
        self.embed_t = Embed(_flat_dim(shape_t), self.feat_dim, normalize=False)

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        f_s, f_t = self.features(feats_s, feats_t)
        e_s, e_t = self.embed_s(f_s), self.embed_t(f_t)
        with fp32(e_s):
            return {"cc": R.cc_loss(e_s.float(), e_t.float())}


@register_method("rkd")
class RKDMethod(_OneFeatureMethod):
    """Relational KD on the pooled features: ``rkd/distance`` (x25) and ``rkd/angle`` (x50).

    Args:
        weight: overall weight (authors: 1), multiplying the two term weights.
        distance_weight: 25.
        angle_weight: 50.
    """

    def __init__(self, student_layer: str | None = None, teacher_layer: str | None = None, weight: float = 1.0,
                 distance_weight: float = 25.0, angle_weight: float = 50.0, task_weight: float = 1.0) -> None:
        super().__init__(student_layer, teacher_layer, weight, task_weight)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def term_names(self) -> list[str]:
        return ["rkd/distance", "rkd/angle"]

    def term_weight(self, term_name: str) -> float:
        part = {"rkd/distance": self.distance_weight, "rkd/angle": self.angle_weight}[term_name]
        return self.weight * part

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        f_s, f_t = self.features(feats_s, feats_t)
        with fp32(f_s):
            terms = R.rkd_loss(as_vector(f_s.float()), as_vector(f_t.float()))
        return {f"rkd/{k}": v for k, v in terms.items()}


@register_method("pkt")
class PKTMethod(_OneFeatureMethod):
    """Probabilistic knowledge transfer on the pooled features (``pkt``, weight 30000)."""

    def __init__(self, student_layer: str | None = None, teacher_layer: str | None = None, weight: float = 30000.0,
                 task_weight: float = 1.0) -> None:
        super().__init__(student_layer, teacher_layer, weight, task_weight)

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        f_s, f_t = self.features(feats_s, feats_t)
        with fp32(f_s):
            return {"pkt": R.pkt_loss(as_vector(f_s.float()), as_vector(f_t.float()))}


@register_method("crd")
class CRDMethod(_OneFeatureMethod):
    """Contrastive representation distillation (``crd``); defaults from the authors' code.

    Args:
        weight: weight of ``crd`` (0.8).
        feat_dim: embedding size (128).
        nce_k: negatives per anchor = memory queue length (16384).
        nce_t: temperature (0.07).
        n_data: training-set size, for the noise probability 1/n_data.
    """

    def __init__(self, student_layer: str | None = None, teacher_layer: str | None = None, weight: float = 0.8,
                 feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, n_data: int = 50000,
                 task_weight: float = 1.0) -> None:
        super().__init__(student_layer, teacher_layer, weight, task_weight)
        self.options = {"feat_dim": int(feat_dim), "nce_k": int(nce_k), "nce_t": float(nce_t), "n_data": int(n_data)}
        self.crd: nn.Module | None = None

    def build(self, shape_s, shape_t) -> None:
        self.crd = CRDLoss(_flat_dim(shape_s), _flat_dim(shape_t), **self.options)

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        f_s, f_t = self.features(feats_s, feats_t)
        return {"crd": self.crd(as_vector(f_s), as_vector(f_t))}
