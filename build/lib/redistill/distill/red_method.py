"""The "red" distillation method: RED blocks on the student's paired layers, each trained to
match the channel-mean map of the same-resolution teacher feature (docs/method.md s.3-5).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from redistill.distill.base import DistillMethod, register_method
from redistill.distill.pairing import auto_pairs
from redistill.distill.pairs import Pair, parse_pairs, validate_pairs
from redistill.distill.red import DISTANCES, apply_red_layout, insert_red, red_layout, red_loss
from redistill.errors import UserError


@register_method("red")
class REDMethod(DistillMethod):
    """ReDistill: RED blocks in the student, aligned to same-resolution teacher features.

    The total loss is ``w_task * CE + w_distill * mean_k(alpha_k * L_k)``, so each
    pair's term ``red/<layer>[:in]`` weighs ``w_distill * alpha_k / K``.

    Args:
        pairs: "auto" (proposed from resolutions, docs/method.md s.5) or a list of pairs:
            :class:`~redistill.distill.pairing.Pair` objects, dicts with keys student,
            teacher, side, distance, alpha, red, or strings ``"conv1 -> layer2.0"``.
        distance: default distance of pairs that do not set one ("cosine" or "mse").
        alpha: default per-pair weight alpha_k (the authors: 50 on STL10, 1 on ImageNet).
        w_task: weight of the cross-entropy.
        w_distill: weight of the mean RED loss.
        red: default :class:`REDBlock` options for every pair (a pair's own ``red`` wins).
    """

    def __init__(
        self,
        pairs="auto",
        distance: str = "cosine",
        alpha: float = 1.0,
        w_task: float = 0.5,
        w_distill: float = 0.5,
        red: dict | None = None,
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise UserError(f"unknown RED distance '{distance}'; use one of {', '.join(DISTANCES)}")
        for key, value in (("alpha", alpha), ("w_task", w_task), ("w_distill", w_distill)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"RED option {key} must be a number >= 0, got {value!r}")
        self.defaults = {"distance": distance, "alpha": float(alpha), "red": dict(red or {})}
        Pair("x", "x", "out", **self.defaults)  # validates the default RED options early
        self.pairs_spec = pairs if pairs == "auto" else parse_pairs(pairs, **self.defaults)
        self.pairs: list = [] if pairs == "auto" else list(self.pairs_spec)
        self.task_weight = float(w_task)
        self.w_distill = float(w_distill)
        self._student_refs: list[str] = []

    def setup(self, student: nn.Module, teacher: nn.Module, example_input: torch.Tensor) -> nn.Module:
        """Resolve the pairs, validate their shapes and insert the RED blocks in ``student``."""
        if self._student_refs:
            raise RuntimeError("REDMethod.setup was already called; build a new method for a new student")
        if self.pairs_spec == "auto":
            self.pairs = auto_pairs(student, teacher, example_input, **self.defaults)
        seen = set()
        for pair in self.pairs:
            if (pair.student, pair.side) in seen:
                raise UserError(f"two pairs put a RED block on the {pair.side} side of '{pair.student}'; keep one")
            seen.add((pair.student, pair.side))
        shapes = validate_pairs(student, teacher, self.pairs, example_input)
        # Deepest layers first: wrapping an outer layer renames what is inside it, not the reverse.
        order = sorted(range(len(self.pairs)), key=lambda i: -self.pairs[i].student.count("."))
        placed = {}
        for i in order:
            pair = self.pairs[i]
            placed[i] = insert_red(
                student, pair.student, pair.side, channels=shapes[i][0][1], example_input=example_input, **pair.red
            )
        blocks = [placed[i] for i in range(len(self.pairs))]
        names = {id(m): n for n, m in student.named_modules()}
        self._student_refs = [names[id(b)] for b in blocks]
        return student

    def student_refs(self) -> list[str]:
        return list(self._student_refs)

    def teacher_refs(self) -> list[str]:
        return [p.teacher_ref for p in self.pairs]

    def term_names(self) -> list[str]:
        return [p.term_name for p in self.pairs]

    def term_weight(self, term_name: str) -> float:
        for pair in self.pairs:
            if pair.term_name == term_name:
                return self.w_distill * pair.alpha / len(self.pairs)
        raise KeyError(f"unknown RED term '{term_name}'; terms: {', '.join(self.term_names())}")

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, torch.Tensor]:
        if not self._student_refs:
            raise RuntimeError("REDMethod.setup(student, teacher, example_input) must run before training")
        return {
            pair.term_name: red_loss(feats_s[ref_s], feats_t[pair.teacher_ref], pair.distance)
            for pair, ref_s in zip(self.pairs, self._student_refs)
        }

    @classmethod
    def surgery_of(cls, model: nn.Module) -> list | None:
        return red_layout(model) or None

    @classmethod
    def redo_surgery(cls, model: nn.Module, layout: list) -> nn.Module:
        if not isinstance(layout, list) or not all(isinstance(e, dict) for e in layout):
            raise UserError("the RED layout must be a list of mappings (layer, side, channels, options)")
        return apply_red_layout(model, layout)

    def extra_repr(self) -> str:
        pairs = ", ".join(f"{p.student_ref}<->{p.teacher_ref}" for p in self.pairs) or "auto"
        return f"pairs=[{pairs}], w_task={self.task_weight}, w_distill={self.w_distill}"
