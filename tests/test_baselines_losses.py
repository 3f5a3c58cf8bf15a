"""Each baseline loss against a value worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from redistill.distill.baselines import crd as C
from redistill.distill.baselines import feature_losses as L
from redistill.distill.baselines import logit_losses as G
from redistill.distill.baselines import relation_losses as R
from redistill.distill.baselines.review import hcl_loss

LN3, LN2 = math.log(3.0), math.log(2.0)



def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


# --- logits -----------------------------------------------------------------------
def test_kd_loss_by_hand():
    # T = 2: z_t / T = [ln 3, 0] -> p_t = [3/4, 1/4]; z_s = 0 -> p_s = [1/2, 1/2]
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812; times T^2 = 4
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    close(G.kd_loss(t([0.0, 0.0]), t([2 * LN3, 0.0]), temperature=2.0), expected)
    # batch mean: a second identical pair leaves the value unchanged, a matching one halves it
    close(G.kd_loss(t([0.0, 0.0], [1.0, 1.0]), t([2 * LN3, 0.0], [5.0, 5.0]), 2.0), expected / 2)


def test_dkd_loss_by_hand():
    # target class 0; p_t = [1/2, 1/4, 1/4]; z_s = [0, ln 3, 0] -> p_s = [1/5, 3/5, 1/5]
    # TCKD: KL([.5, .5] || [.2, .8]) = .5 ln(.5/.2) + .5 ln(.5/.8) = 0.223144
    # NCKD: non-target teacher [1/2, 1/2], student [3/4, 1/4]: .5 ln(.5/.75) + .5 ln(.5/.25) = 0.143841
    out = G.dkd_loss(t([0.0, LN3, 0.0]), t([LN2, 0.0, 0.0]), torch.tensor([0]), temperature=1.0)
    close(out["tckd"], 0.5 * math.log(2.5) + 0.5 * math.log(0.625))
    close(out["nckd"], 0.5 * math.log(2 / 3) + 0.5 * math.log(2.0))


def test_mlld_levels_by_hand():
    # B = 1, K = 2, T = 1: p_t = [3/4, 1/4], p_s = [1/2, 1/2]
    # batch: P P^T = 9/16 + 1/16 = 0.625 vs 0.5 -> 0.125^2 / B = 0.015625
    # class: P^T P teacher [[9/16, 3/16], [3/16, 1/16]] vs all 1/4 -> squares sum
    #        (5/16)^2 + 2 (1/16)^2 + (3/16)^2 = 0.140625, / K = 0.0703125
    out = G.mlld_loss(t([0.0, 0.0]), t([LN3, 0.0]), temperatures=[1.0])
    close(out["instance"], 0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    close(out["batch"], 0.015625)
    close(out["class"], 0.0703125)
    # two temperatures sum their levels
    two = G.mlld_loss(t([0.0, 0.0]), t([LN3, 0.0]), temperatures=[1.0, 1.0])
    close(two["class"], 2 * 0.0703125)


# --- feature maps -------------------------------------------------------------------
def test_hint_loss_pools_teacher_to_student_size():
    # teacher 4x4 with a single 4 in the top-left 2x2 window -> pooled to 2x2: [[1, 0], [0, 0]]
    f_t = torch.zeros(1, 1, 4, 4)
    f_t[..., 0, 0] = 4.0
    f_s = torch.ones(1, 1, 2, 2)
    close(L.hint_loss(f_s, f_t), 3 / 4)  # squared errors [0, 1, 1, 1] / 4


def test_at_loss_by_hand():
    # student channels [3, 0] and [0, 0] -> mean of squares [4.5, 0] -> normalised [1, 0]
    # teacher [1, 1] -> [1/sqrt2, 1/sqrt2]; squared diffs (1 - .7071)^2 + .5 = 0.585786, mean / 2
    f_s = torch.tensor([[[[3.0, 0.0]], [[0.0, 0.0]]]])
    f_t = torch.tensor([[[[1.0, 1.0]]]])
    close(L.at_loss(f_s, f_t), ((1 - 1 / math.sqrt(2)) ** 2 + 0.5) / 2)


def test_nst_loss_by_hand():
    # samples = channels: student {[1, 0]}, teacher {[1, 0], [0, 1]}
    # k(t,t) mean = 2/4, k(s,s) = 1, k(s,t) = [1, 0] mean 1/2 -> 0.5 + 1 - 2 * 0.5
    f_s = torch.tensor([[[[1.0, 0.0]]]])
    f_t = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    close(L.nst_loss(f_s, f_t), 0.5)


def test_fsp_by_hand():
    # f0 = [1, 2]; f1 channels [3, 4], [1, 0]: G = [[1*3 + 2*4, 1*1 + 0]] / (H W = 2) = [[5.5, 0.5]]
    f0 = torch.tensor([[[[1.0, 2.0]]]])
    s1 = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]]])
    t1 = torch.tensor([[[[3.0, 4.0]], [[0.0, 1.0]]]])  # teacher G = [[5.5, 1.0]]
    assert L.fsp_matrix(f0, s1).tolist() == [[[5.5, 0.5]]]
    close(L.fsp_loss(f0, s1, f0, t1), 0.25 / 2)  # diffs [0, -0.5] squared, mean


def test_ab_loss_by_hand():
    # margin 1; teacher active, active, inactive, inactive
    # student 2 (beyond +m: 0), .5 ((.5-1)^2), -.5 ((-.5+1)^2), -2 (beyond -m: 0) -> 0.5 per sample
    f_s = torch.tensor([2.0, 0.5, -0.5, -2.0]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    f_t = torch.tensor([1.0, 1.0, -1.0, 0.0]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    close(L.ab_loss(f_s, f_t, margin=1.0), 0.5)
    assert L.ab_layer_weights(3) == [0.25, 0.5, 1.0]


def test_ft_loss_by_hand():
    # [3, 4] -> [.6, .8]; [1, 0] -> [1, 0]; |diff| = [.4, .8], mean 0.6
    close(L.ft_loss(torch.tensor([[[[3.0, 4.0]]]]), torch.tensor([[[[1.0, 0.0]]]])), 0.6)


def test_vid_by_hand():
    # 0.5 * ((1 - 3)^2 / 2 + ln 2)
    close(L.vid_nll(t([1.0]), t([2.0]), t([3.0])), 0.5 * (2 + LN2))
    vid = L.VIDLoss(2, 3, 4, init_pred_var=5.0)
    var = torch.nn.functional.softplus(vid.log_scale) + vid.eps
    assert torch.allclose(var, torch.full((4,), 5.0))


# --- relations ----------------------------------------------------------------------
def test_sp_loss_by_hand():
    # student Gram [[1, 0], [0, 0]] (rows normalised: unchanged); teacher [[1, 1], [1, 1]] -> 1/sqrt2
    # squared diffs (1 - .7071)^2 + 3 * .5, / B^2 = 4
    close(R.sp_loss(t([1.0], [0.0]), t([1.0], [1.0])), ((1 - 1 / math.sqrt(2)) ** 2 + 1.5) / 4)


def test_cc_loss_by_hand():
    # delta = e_s: <d0, d1> = 0, <d1, d2> = 1 -> mean 0.5
    close(R.cc_loss(t([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]), torch.zeros(3, 2)), 0.5)


def test_rkd_distance_by_hand():
    # teacher points 0, 1, 3: distances 1, 3, 2 (mean 2) -> .5, 1.5, 1
    # student points 0, 2, 4: distances 2, 4, 2 (mean 8/3) -> .75, 1.5, .75
    # |diff| .25 on 4 of the 9 matrix entries: smooth-L1 .5 * .25^2 each, mean over 9
    out = R.rkd_loss(t([0.0], [2.0], [4.0]), t([0.0], [1.0], [3.0]))
    close(out["distance"], 4 * 0.5 * 0.25**2 / 9)


def test_rkd_angle_by_hand():
    # teacher (0,0), (1,0), (0,1): cosines at the vertices 0, 1/sqrt2, 1/sqrt2
    # student (0,0), (1,0), (1,1): cosines 1/sqrt2, 0, 1/sqrt2
    # two vertices differ by 1/sqrt2, each on 2 of the 27 (i, j, k) entries: smooth-L1 .5 * .5
    out = R.rkd_loss(t([0.0, 0.0], [1.0, 0.0], [1.0, 1.0]), t([0.0, 0.0], [1.0, 0.0], [0.0, 1.0]))
    close(out["angle"], 4 * 0.25 / 27)


def test_pkt_loss_by_hand():
    # student cos [[1, 0], [0, 1]] -> (c+1)/2 rows [1, .5] -> [2/3, 1/3]; teacher all 1 -> [1/2, 1/2]
    # entries .5 ln(.5/(2/3)) and .5 ln(.5/(1/3)), twice each, mean over 4
    expected = 2 * (0.5 * math.log(0.75) + 0.5 * math.log(1.5)) / 4
    assert R.pkt_loss(t([1.0, 0.0], [0.0, 1.0]), t([1.0, 0.0], [1.0, 0.0])).item() == pytest.approx(expected, abs=1e-6)


# --- CRD, ReviewKD ------------------------------------------------------------------
def test_nce_contrast_loss_by_hand():
    # one positive P+ = 1, one negative P- = .5, n_data = 2 -> m Pn = .5
    # -(ln(1 / 1.5) + ln(.5 / 1)) = ln 3
    close(C.nce_contrast_loss(t([1.0, 0.5]), n_data=2), LN3)


def test_crd_queue_and_normaliser():
    crd = C.CRDLoss(s_dim=3, t_dim=5, feat_dim=4, nce_k=6, nce_t=0.1, n_data=100).train()
    f_s, f_t = torch.randn(4, 3), torch.randn(4, 5)
    loss = crd(f_s, f_t)
    assert torch.isfinite(loss)
    z_first = crd.z_s.item()
    assert z_first > 0 and not crd.filled
    # the first batch's embeddings fill queue rows 0..3; the second wraps the pointer at 6
    assert torch.allclose(crd.queue_s[:4], crd.embed_s(f_s).detach())
    crd(torch.randn(4, 3), torch.randn(4, 5))
    assert crd.ptr.item() == 2 and crd.filled
    # Z follows the data until the queue is full, then stays fixed
    crd(torch.randn(4, 3), torch.randn(4, 5))
    z_fixed = crd.z_s.item()
    crd(torch.randn(4, 3) * 5, torch.randn(4, 5))
    assert crd.z_s.item() == z_fixed != z_first
    crd.eval()
    before = crd.queue_t.clone()
    crd(f_s, f_t)
    assert torch.equal(crd.queue_t, before)  # evaluation does not touch the memory


def test_hcl_loss_by_hand():
    # [[1, 2], [3, 4]] vs 0: full MSE 7.5; 1x1 level (weight 1/2): mean 2.5 -> 6.25
    # (7.5 + .5 * 6.25) / 1.5
    f_s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    close(hcl_loss([f_s], [torch.zeros_like(f_s)]), (7.5 + 0.5 * 6.25) / 1.5)
