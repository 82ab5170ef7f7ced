"""Tests of ldm_minimal.attention: cross-attention (Eq. 3), masks, the SDPA fast path and the SpatialTransformer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm_minimal.attention import (
    GEGLU,
    BasicTransformerBlock,
    CrossAttention,
    SpatialTransformer,
    aggregate_attention,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _mask() -> torch.Tensor:
    # sample 0 keeps 3 of 5 tokens, sample 1 keeps all
    return torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])


def test_cross_attention_matches_eq3_written_out() -> None:
    attn = CrossAttention(query_dim=16, context_dim=12, heads=2, dim_head=8).eval()
    x, c = torch.randn(2, 10, 16), torch.randn(2, 5, 12)
    out = attn(x, c)
    # Eq. 3 per head with the layer's own weights: softmax(Q K^T / sqrt(d)) V, then the output projection
    q, k, v = x @ attn.to_q.weight.T, c @ attn.to_k.weight.T, c @ attn.to_v.weight.T
    heads = []
    for h in range(2):
        sl = slice(8 * h, 8 * (h + 1))
        p = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 8**0.5, dim=-1)
        heads.append(p @ v[..., sl])
    expected = attn.to_out[0](torch.cat(heads, dim=-1))
    assert out.shape == (2, 10, 16)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_self_attention_when_no_context() -> None:
    attn = CrossAttention(query_dim=16, heads=2, dim_head=8).eval()
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(attn(x), attn(x, x))
    out, maps = attn(x, return_attention=True)
    assert maps.shape == (2, 2, 10, 10)


def test_maps_sum_to_one_and_masked_tokens_get_zero() -> None:
    attn = CrossAttention(16, 12, heads=2, dim_head=8)
    x, c = torch.randn(2, 10, 16), torch.randn(2, 5, 12)
    _, maps = attn(x, c, context_mask=_mask(), return_attention=True)
    assert maps.shape == (2, 2, 10, 5)
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 10))
    assert (maps[0, :, :, 3:] == 0).all()
    assert (maps[0, :, :, :3] > 0).all()


def test_masking_equals_dropping_the_padding_tokens() -> None:
    attn = CrossAttention(16, 12, heads=2, dim_head=8).eval()
    x, c = torch.randn(1, 10, 16), torch.randn(1, 5, 12)
    keep = torch.tensor([[True, False, True, True, False]])
    for explicit in (False, True):
        masked = attn(x, c, context_mask=keep, return_attention=explicit)
        masked = masked[0] if explicit else masked
        torch.testing.assert_close(masked, attn(x, c[:, keep[0]]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_mask", [False, True])
def test_sdpa_fast_path_equals_explicit_path(use_mask: bool) -> None:
    attn = CrossAttention(24, 20, heads=3, dim_head=8).eval()
    x, c = torch.randn(2, 7, 24), torch.randn(2, 5, 20)
    mask = _mask() if use_mask else None
    fast = attn(x, c, context_mask=mask)
    slow, _ = attn(x, c, context_mask=mask, return_attention=True)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)


def test_integer_mask_accepted_and_fully_masked_sample_attends_to_nothing() -> None:
    attn = CrossAttention(16, 12, heads=2, dim_head=8).eval()
    x, c = torch.randn(2, 4, 16), torch.randn(2, 5, 12)
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 0, 1, 1]])  # a tokenizer's attention_mask (int64)
    fast = attn(x, c, context_mask=mask)
    slow, maps = attn(x, c, context_mask=mask, return_attention=True)
    assert torch.isfinite(fast).all() and torch.isfinite(maps).all()
    # no token to attend to: the attention output is zero, so the layer returns its output bias only
    torch.testing.assert_close(fast[0], attn.to_out[0].bias.expand(4, 16))
    assert (maps[0] == 0).all()
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)


def test_wrong_context_width_is_a_clear_error() -> None:
    attn = CrossAttention(16, 12, heads=2, dim_head=8)
    with pytest.raises(ValueError, match=r"width 7.*context_dim=12.*context_dim=7.*project"):
        attn(torch.randn(2, 4, 16), torch.randn(2, 5, 7))


def test_bad_masks_and_contexts_are_clear_errors() -> None:
    attn = CrossAttention(16, 12, heads=2, dim_head=8)
    x, c = torch.randn(2, 4, 16), torch.randn(2, 5, 12)
    with pytest.raises(ValueError, match=r"context_mask has shape \(2, 4\).*\(2, 5\)"):
        attn(x, c, context_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bool or integer.*\.bool\(\)"):
        attn(x, c, context_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"\(B, L, 12\)"):
        attn(x, torch.randn(2, 12))
    with pytest.raises(ValueError, match=r"batch size 1.*expand"):
        attn(x, c[:1])
    with pytest.raises(ValueError, match=r"needs a context of width 12"):
        attn(x)


def test_geglu_is_value_times_gelu_gate() -> None:
    g = GEGLU(6, 4)
    x = torch.randn(3, 6)
    value, gate = (x @ g.proj.weight.T + g.proj.bias).split(4, dim=-1)
    torch.testing.assert_close(g(x), value * F.gelu(gate))


def test_spatial_transformer_starts_as_identity_and_keeps_shape() -> None:
    st = SpatialTransformer(32, heads=2, dim_head=16, depth=2, context_dim=12, norm_groups=8)
    x, c = torch.randn(2, 32, 4, 6), torch.randn(2, 5, 12)
    out, maps = st(x, c, return_attention=True)
    torch.testing.assert_close(out, x)  # zero-initialised proj_out
    assert len(maps) == 2 and all(m.shape == (2, 2, 24, 5) for m in maps)
    # once proj_out is trained the layer changes its input, and the change depends on the context
    torch.nn.init.normal_(st.proj_out.weight, std=0.1)
    out1, out2 = st(x, c), st(x, torch.randn(2, 5, 12))
    assert not torch.allclose(out1, x) and not torch.allclose(out1, out2)


def test_unconditional_block_uses_self_attention_and_rejects_a_context() -> None:
    block = BasicTransformerBlock(16, heads=2, dim_head=8, context_dim=None)
    x = torch.randn(2, 9, 16)
    out, maps = block(x, return_attention=True)
    assert out.shape == x.shape and maps is None
    with pytest.raises(ValueError, match="without context_dim"):
        block(x, torch.randn(2, 3, 16))
    cross = BasicTransformerBlock(16, heads=2, dim_head=8, context_dim=12)
    with pytest.raises(ValueError, match="got no context"):
        cross(x)


def test_aggregate_attention_gives_per_token_pictures() -> None:
    st8 = torch.softmax(torch.randn(2, 3, 64, 5), -1)  # an 8x8 layer
    st4 = torch.softmax(torch.randn(2, 3, 16, 5), -1)  # a 4x4 layer
    pics = aggregate_attention({"a": st8, "b": st4}, 8)
    assert pics.shape == (2, 5, 8, 8)
    torch.testing.assert_close(pics.sum(1), torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="return_attention=True"):
        aggregate_attention({}, 8)
