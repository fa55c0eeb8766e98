"""Projectors compute what their names say."""

import pytest
import torch
import torch.nn.functional as F

from projector import build_projector, calibrate_projector


def test_linear_is_one_affine_map():
    torch.manual_seed(0)
    proj = build_projector("linear", 8, 6)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(proj(x), x @ proj.weight.T + proj.bias)


def test_mlp2x_gelu_is_linear_gelu_linear():
    torch.manual_seed(0)
    proj = build_projector("mlp2x_gelu", 8, 6)
    first, second = proj[0], proj[2]
    assert (first.in_features, first.out_features, second.out_features) == (8, 6, 6)
    x = torch.randn(3, 8)
    torch.testing.assert_close(proj(x), F.gelu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias)


def test_unknown_type_lists_the_choices():
    with pytest.raises(ValueError, match="linear, mlp2x_gelu"):
        build_projector("qformer", 8, 6)


@pytest.mark.parametrize("projector_type", ["linear", "mlp2x_gelu"])
def test_calibration_standardises_the_input_and_matches_the_target_norm(projector_type):
    torch.manual_seed(0)
    # Features like a ViT's residual stream: a large shared component plus a small per-patch part.
    shared = torch.randn(16) * 10
    features = shared + torch.randn(4, 49, 16) * torch.linspace(0.1, 2.0, 16)
    projector = build_projector(projector_type, 16, 24)
    first = next(m for m in projector.modules() if isinstance(m, torch.nn.Linear))
    stats = calibrate_projector(projector, features, target_norm=3.0)
    with torch.no_grad():
        out = projector(features)
        hidden = first(features.reshape(-1, 16))
    assert out.norm(dim=-1).mean().item() == pytest.approx(3.0, rel=1e-4)
    assert stats["norm_after"] == pytest.approx(3.0, rel=1e-4) and stats["norm_before"] > 10
    # The first Linear now sees standardised inputs: its outputs are zero-mean over the sample,
    # and equal to W_old applied to the standardised features (up to the later rescale).
    assert hidden.mean(dim=0).abs().max().item() < 1e-4
    if projector_type == "linear":
        assert out.reshape(-1, 24).mean(dim=0).abs().max().item() < 1e-5
    # Patches now differ from each other as much as from the average token (the shared part is gone).
    spread = (out - out.mean(dim=(0, 1))).norm(dim=-1).mean()
    assert spread.item() > 0.5 * out.norm(dim=-1).mean().item()


def test_calibration_rejects_bad_input():
    projector = build_projector("linear", 4, 8)
    with pytest.raises(ValueError, match="target_norm must be positive"):
        calibrate_projector(projector, torch.randn(10, 4), target_norm=0)
    with pytest.raises(ValueError, match="at least two"):
        calibrate_projector(projector, torch.randn(1, 4), target_norm=1.0)
    with pytest.raises(ValueError, match="nn.Linear"):
        calibrate_projector(torch.nn.GELU(), torch.randn(10, 4), target_norm=1.0)
