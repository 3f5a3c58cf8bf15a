"""Baseline distillation methods, each registered under its short name.

============  ==========================================  =============================
name          what it distills (default taps)              extra modules / stages
============  ==========================================  =============================
kd            logits (KL, T=4; CE 0.1, KD 0.9)             -
fitnet        middle stage output, MSE (x100)              regressor; optional hint stage
at            stage outputs, attention maps (x1000)        -
sp            last stage, batch similarity (x3000)         -
cc            pooled feature, correlation (x0.02)          linear embeddings
vid           stage outputs, Gaussian NLL (x1)             regressors + variances
rkd           pooled feature, distance x25 + angle x50     -
pkt           pooled feature, similarity KL (x30000)       -
ab            stage outputs, activation boundaries (init)  connectors; init stage
ft            last stage, factor L1 (x200)                 paraphraser (init stage), translator
fsp           stem + stages, FSP matrices (init, x1)       init stage
nst           stage outputs, polynomial MMD (x50)          -
crd           pooled feature, NCE (x0.8)                   embeddings + memory queues
reviewkd      stages + pooled feature, HCL (x1)            ABF fusion modules
dkd           logits, TCKD x1 + NCKD x0.5 (T=1)            -
mlld          logits, instance/batch/class over T=2..6     -
red_kd        RED blocks + pairs, plus KD on the logits    RED blocks (deployed)
============  ==========================================  =============================

Training-only modules live in the method, never in the student: ``deploy`` returns the
student unchanged (with its RED blocks for ``red_kd``).
"""

from redistill.distill.baselines import feature_methods, logit_methods, relation_methods  # noqa: F401

__all__ = ["feature_methods", "logit_methods", "relation_methods"]
