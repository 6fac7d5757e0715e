"""BLPSeg's losses against values computed by hand (plain Python math)."""

import math

import pytest
import torch

from blpseg.losses import BLPLoss, FocalLoss, PartialCrossEntropy, ScribbleLoss, build_seg_loss, pseudo_labels


def softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def as_map(pixels):
    """[[logit per class] per pixel] -> (1, C, 1, P)."""
    return torch.tensor(pixels, dtype=torch.float64).T[None, :, None, :]


# K = 2 classes; three pixels: class 0, class 1, not scribbled (K = 2), padding.
SEG = [[2.0, -1.0], [0.5, 0.3], [1.0, 1.0], [0.0, 4.0]]
SCRIB = [[1.0, 0.0, 0.5], [0.2, 1.5, -0.5], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]
TARGET = torch.tensor([[[0, 1, 2, 255]]])


def test_scribble_loss_weights_the_unscribbled_class():
    loss = ScribbleLoss(num_classes=2, unlabeled_weight=0.02)(as_map(SCRIB), TARGET)
    nll = [-math.log(softmax(SCRIB[i])[t]) for i, t in enumerate([0, 1, 2])]
    expected = (nll[0] + nll[1] + 0.02 * nll[2]) / (1 + 1 + 0.02)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _blp_terms(gamma=2.0):
    terms = []
    for i, t in enumerate([0, 1]):
        p_seg = softmax(SEG[i])[t]
        p_scrib = softmax(SCRIB[i])[t]  # over K+1 classes
        w = (1 - p_scrib * p_seg) ** gamma
        terms.append((w, -math.log(p_seg)))
    return terms


def test_blp_loss_weights_normalisation():
    terms = _blp_terms()
    expected = sum(w * n for w, n in terms) / sum(w for w, _ in terms)
    assert BLPLoss(normalize="weights")(as_map(SEG), as_map(SCRIB), TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_blp_loss_pixels_normalisation():
    terms = _blp_terms(gamma=1.5)
    expected = sum(w * n for w, n in terms) / 2
    loss = BLPLoss(gamma=1.5, normalize="pixels")(as_map(SEG), as_map(SCRIB), TARGET)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_blp_loss_averages_images_and_an_unlabeled_image_adds_zero():
    seg = torch.cat([as_map(SEG), as_map(SEG)])
    scrib = torch.cat([as_map(SCRIB), as_map(SCRIB)])
    target = torch.cat([TARGET, torch.full_like(TARGET, 2)])
    single = BLPLoss()(as_map(SEG), as_map(SCRIB), TARGET)
    assert BLPLoss()(seg, scrib, target).item() == pytest.approx(single.item() / 2, rel=1e-6)


def test_blp_factor_is_detached():
    seg = as_map(SEG).requires_grad_()
    scrib = as_map(SCRIB).requires_grad_()
    BLPLoss()(seg, scrib, TARGET).backward()
    assert scrib.grad is None or not scrib.grad.any()
    # The gradient is that of a cross entropy weighted by constants w.
    seg2 = as_map(SEG).requires_grad_()
    terms = _blp_terms()
    logp = torch.log_softmax(seg2, 1)
    manual = -(terms[0][0] * logp[0, 0, 0, 0] + terms[1][0] * logp[0, 1, 0, 1]) / (terms[0][0] + terms[1][0])
    manual.backward()
    torch.testing.assert_close(seg.grad, seg2.grad)


def test_cross_entropy_and_focal_on_scribbled_pixels_only():
    nll = [-math.log(softmax(SEG[i])[t]) for i, t in enumerate([0, 1])]
    ce = PartialCrossEntropy()(as_map(SEG), as_map(SCRIB), TARGET)
    assert ce.item() == pytest.approx(sum(nll) / 2, rel=1e-6)
    focal = FocalLoss(gamma=2.0)(as_map(SEG), as_map(SCRIB), TARGET)
    expected = sum((1 - math.exp(-n)) ** 2 * n for n in nll) / 2
    assert focal.item() == pytest.approx(expected, rel=1e-6)


def test_no_labeled_pixel_gives_zero_not_nan():
    target = torch.full_like(TARGET, 2)
    for loss in (BLPLoss(), BLPLoss(normalize="pixels"), PartialCrossEntropy(), FocalLoss()):
        assert loss(as_map(SEG), as_map(SCRIB), target).item() == 0.0
    assert ScribbleLoss(2)(as_map(SCRIB), torch.full_like(TARGET, 255)).item() == 0.0


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="normalize"):
        BLPLoss(normalize="mean")
    with pytest.raises(ValueError, match="loss.seg"):
        build_seg_loss("dice")


def test_pseudo_labels_keep_scribbles_and_use_present_classes():
    K = 3
    # pixels: scribbled | confident in class 1 | confident in class 2 | unsure | padding
    probs = [[0.1, 0.9, 0.0], [0.02, 0.95, 0.03], [0.02, 0.03, 0.95], [0.3, 0.5, 0.2], [0.0, 1.0, 0.0]]
    logits = as_map([[math.log(max(p, 1e-12)) for p in row] for row in probs])
    # scribbles hold classes 0 and 1: pixel 2's class 2 is absent from the image, so it stays
    # unlabeled (its best present class has 0.03 < 0.9)
    target = torch.tensor([[[0, K, K, K, 255]]])
    target_with_1 = torch.cat([target, torch.tensor([[[1, 1, 1, 1, 1]]])], dim=1)
    out = pseudo_labels(torch.cat([logits, logits], dim=2), target_with_1, threshold=0.9)
    assert out[0, 0].tolist() == [0, 1, K, K, 255]
    # with only class 0 scribbled, class 1 is absent too: nothing is pseudo-labelled
    assert pseudo_labels(logits, target, threshold=0.9).tolist() == target.tolist()
    # a lower threshold takes the unsure pixel
    assert pseudo_labels(torch.cat([logits, logits], dim=2), target_with_1, threshold=0.5)[0, 0].tolist() == [
        0,
        1,
        K,
        1,
        255,
    ]
    # classes given explicitly (from the whole image) override what the target shows
    present = torch.tensor([[True, False, True]])
    assert pseudo_labels(logits, target, threshold=0.9, present=present).tolist() == [[[0, K, 2, K, 255]]]


def test_seg_options_that_do_not_apply_name_the_option():
    from blpseg.losses import build_seg_loss

    with pytest.raises(ValueError, match=r"loss.seg_options \['normalize'\] do not apply to loss.seg='ce'"):
        build_seg_loss("ce", normalize="weights")
    assert build_seg_loss("focal", gamma=2.0) is not None


def test_the_config_names_each_loss_and_its_options_as_the_losses_do():
    # The config reads the loss names and options from config.SEG_OPTIONS (it imports no torch); the
    # modules are losses.SEG_LOSSES: the same names, each options section the loss's own keyword
    # arguments with the same defaults (but ignore_index, the padding value, which is not an option).
    import dataclasses
    import inspect
    import typing

    from blpseg.config import SEG_OPTIONS, LossConfig, resolve
    from blpseg.losses import SEG_LOSSES

    assert list(SEG_OPTIONS) == list(SEG_LOSSES)
    assert typing.get_args(typing.get_type_hints(LossConfig)["seg"]) == tuple(SEG_LOSSES)
    for name, loss in SEG_LOSSES.items():
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)  # not nn.Module's *args
        parameters = {k: p for k, p in inspect.signature(loss).parameters.items() if p.kind in named}
        options = {f.name: f.default for f in dataclasses.fields(SEG_OPTIONS[name])}
        assert options == {k: p.default for k, p in parameters.items() if k != "ignore_index"}, name
        cfg = resolve({"data": {"root": "r", "dataset": "voc"}, "loss": {"seg": name, "seg_options": {}}})
        assert cfg["loss"]["seg_options"] == options
    with pytest.raises(ValueError, match="loss.seg: expected one of 'blp', 'ce', 'focal', got 'dice'"):
        resolve({"data": {"root": "r", "dataset": "voc"}, "loss": {"seg": "dice"}})
