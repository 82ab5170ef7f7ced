"""FID, KID and precision/recall on the shapes judge's features (issue 5 metrics), on known inputs."""

import pytest
import torch

from ldm_minimal.evaluation.attributes import load_attribute_classifier, render_single
from ldm_minimal.evaluation.metrics import fid, kid, precision_recall


@pytest.fixture(scope="module")
def judge():
    return load_attribute_classifier()


@pytest.fixture(scope="module")
def real():
    images, _ = render_single(range(200), 1_000_000)
    return images


def test_fid_of_a_set_with_itself_is_about_zero_and_of_noise_is_large(judge, real):
    same = fid(real, real, judge)
    assert abs(same) < 1e-3
    other, _ = render_single(range(200, 400), 1_000_000)  # same world, other pictures
    noise = torch.rand_like(real) * 2 - 1
    near, far = fid(real, other, judge), fid(real, noise, judge)
    assert near < far / 10, (near, far)


def test_kid_orders_similar_below_different(judge, real):
    other, _ = render_single(range(200, 400), 1_000_000)
    blurred = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1)
    similar, _ = kid(real, other, judge, subsets=10)
    different, _ = kid(real, -real, judge, subsets=10)  # colours inverted
    assert similar < different
    assert kid(real, blurred, judge, subsets=10)[0] < different


def test_precision_recall_bounds_and_known_cases(judge, real):
    feats = judge.features(real)
    pr = precision_recall(feats, feats)
    assert pr == {"precision": 1.0, "recall": 1.0}
    # fake points far from the data: no precision; and a collapsed fake set covers little of the real variety
    far = precision_recall(feats, feats + 1e3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    collapsed = precision_recall(feats, feats[:1].repeat(50, 1) + 1e-6 * torch.randn(50, feats.shape[1]))
    assert 0.0 <= collapsed["recall"] < 0.2 and 0.0 <= collapsed["precision"] <= 1.0


def test_feature_metrics_reject_bad_input(judge, real):
    with pytest.raises(ValueError, match="same D"):
        precision_recall(torch.zeros(10, 4), torch.zeros(10, 5))
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(torch.randn(3, 4), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        fid(real[:1], real, judge)
    with pytest.raises(TypeError, match="features"):
        fid(real, real, torch.nn.Linear(2, 2))


def test_inception_features_fail_with_a_clear_message_offline(real):
    # here torch-fidelity is not installed (it breaks torchmetrics next to this torch): the message names the fix
    pytest.importorskip("torchmetrics")
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed; the guarded path is not reachable")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="pip install torch-fidelity"):
        fid(real[:4], real[:4], "inception")
    with pytest.raises(ValueError, match="inception"):
        fid(real[:4], real[:4], "vgg")
