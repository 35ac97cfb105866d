from __future__ import annotations

import math

import pytest
import torch

from tbptt.clipping import ErrorClip, NoClip, NormClip, ValueClip


def params_with_grads(*grads: list[float]) -> list[torch.nn.Parameter]:
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g)
        params.append(p)
    return params


def test_norm_clip_rescales_to_max_norm_and_records_the_pre_clip_norm():
    params = params_with_grads([3.0, 4.0], [0.0, 12.0])  # total L2 norm 13
    result = NormClip(max_norm=1.0)(params)
    assert result.norm_before == pytest.approx(13.0)
    assert result.clipped and result.norm_after == pytest.approx(1.0, rel=1e-5)
    assert params[0].grad.tolist() == pytest.approx([3 / 13, 4 / 13], rel=1e-5)


def test_norm_clip_leaves_small_gradients_alone():
    params = params_with_grads([0.3, 0.4])
    result = NormClip(max_norm=1.0)(params)
    assert not result.clipped and result.norm_before == pytest.approx(0.5)
    assert params[0].grad.tolist() == pytest.approx([0.3, 0.4])


def test_norm_clip_with_inf_norm_uses_the_largest_element():
    params = params_with_grads([1.0, -8.0])
    result = NormClip(max_norm=2.0, norm_type=math.inf)(params)
    assert result.norm_before == pytest.approx(8.0)
    assert params[0].grad.tolist() == pytest.approx([0.25, -2.0], rel=1e-5)


def test_value_clip_clamps_each_element():
    params = params_with_grads([3.0, -0.2, -5.0])
    result = ValueClip(clip_value=0.5)(params)
    assert params[0].grad.tolist() == pytest.approx([0.5, -0.2, -0.5])
    assert result.clipped and result.norm_before == pytest.approx(math.sqrt(9 + 0.04 + 25))
    assert result.norm_after == pytest.approx(math.sqrt(0.25 + 0.04 + 0.25))


def test_value_clip_reports_not_clipped_below_threshold():
    result = ValueClip(clip_value=10.0)(params_with_grads([3.0, -4.0]))
    assert not result.clipped and result.norm_after == pytest.approx(5.0)


def test_no_clip_measures_but_never_changes():
    params = params_with_grads([30.0, 40.0])
    result = NoClip()(params)
    assert (result.norm_before, result.clipped) == (pytest.approx(50.0), False)
    assert params[0].grad.tolist() == [30.0, 40.0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: NormClip(max_norm=0.0), "clip.max_norm must be > 0, got 0.0"),
        (lambda: NormClip(max_norm=1.0, norm_type=0.5), "clip.norm_type must be >= 1"),
        (lambda: ValueClip(clip_value=-1.0), "clip.clip_value must be > 0, got -1.0"),
    ],
)
def test_bad_thresholds_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_error_clip_clamps_at_the_threshold_and_counts():
    clip = ErrorClip(threshold=1.0)
    out = clip.hook(torch.tensor([0.5, -3.0, 2.0, 1.0]))
    assert out.tolist() == [0.5, -1.0, 1.0, 1.0]
    stats = clip.stats()
    assert (stats.clipped, stats.max_abs, stats.mean_abs) == (2, 3.0, pytest.approx(6.5 / 4))
    clip.reset()
    assert clip.stats().clipped == 0


def test_error_clip_rejects_a_non_positive_threshold():
    with pytest.raises(ValueError, match="clip.error_clip must be > 0, got 0"):
        ErrorClip(0)
