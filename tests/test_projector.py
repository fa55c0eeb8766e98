"""Projectors compute what their names say."""

import pytest
import torch
import torch.nn.functional as F

from projector import build_projector


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
