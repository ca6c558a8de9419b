"""Report figures: images restored for display, the confidence gap, the most exposed records."""

import numpy as np
import torch

from mia_torch.report.pictures import ImageSource
from results_fixtures import make_results


def test_image_source_restores_pixels_and_refuses_tabular_data():
    from types import SimpleNamespace

    pixels = torch.rand(5, 3, 4, 4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    source = ImageSource.of(SimpleNamespace(x=normalised, mean=mean, std=std))
    shown = source.get([4, 1])
    assert shown.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(shown, pixels[[4, 1]].permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert ImageSource.of(SimpleNamespace(x=torch.zeros(5, 30), mean=(), std=())) is None  # tabular [N, F]
    assert ImageSource.of(SimpleNamespace(x=torch.zeros(5, 30, 1, 1), mean=(), std=())) is None


def test_confidence_figure_separates_members_and_nonmembers():
    from mia_torch.report.pictures import confidence_figure

    members = np.r_[np.ones(300, bool), np.zeros(200, bool)]
    conf = np.where(members, 0.999, 0.75)
    phi = np.log(conf / (1 - conf))
    fig = confidence_figure(conf, phi, members, title="t")
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["members (n=300): mean p_y 0.999, φ 6.91", "non-members (n=200): mean p_y 0.750, φ 1.10"]


def test_gallery_shows_the_targets_top_members_with_p_values():
    from mia_torch.report.write_run import exposed_records

    results, scores, keep, labels = make_results(targets=(0,))
    images = ImageSource(torch.rand(keep.shape[1], 1, 6, 6), (0.0,), (1.0,))
    fig = exposed_records(results, 0, scores=scores, keep=keep, eval_mask=np.ones(keep.shape[1], bool),
                          labels=labels, images=images, size=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    member_scores = scores["lira"][0][keep[0]]
    top = np.flatnonzero(keep[0])[np.argsort(-member_scores)[:4]]
    assert [t.split()[0] for t in titles] == [f"#{i}" for i in top]
    best = member_scores.max()
    p = (1 + np.sum(scores["lira"][0][~keep[0]] >= best)) / (1 + (~keep[0]).sum())
    assert f"p = {p:.2g}" in titles[0] and f"label {labels[top[0]]}" in titles[0]


def test_slice_heatmap_shows_every_slice_or_the_most_exposed_classes():
    from mia_torch.report.pictures import MAX_CLASS_ROWS, slices_figure

    results, _, _, _ = make_results(num_examples=400, targets=(0,), num_classes=4)
    rows = [t.get_text() for t in slices_figure(results).axes[0].get_yticklabels()]
    assert rows == ["class 0", "class 1", "class 2", "class 3", "correct", "misclassified"]

    results, _, _, _ = make_results(num_examples=2400, targets=(0,), num_classes=30, bootstrap=0)
    strongest = results.attacks[results.strongest_attack()]
    ranked = sorted((s for s in strongest.slices if s.kind == "class"), key=lambda s: -s.metrics.auc)
    fig = slices_figure(results)
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(rows) == MAX_CLASS_ROWS + 2 and rows[-2:] == ["correct", "misclassified"]
    assert {r.replace("class ", "class=") for r in rows[:-2]} == {s.name for s in ranked[:MAX_CLASS_ROWS]}
    assert f"the {MAX_CLASS_ROWS} most exposed of 30 classes" in fig.axes[0].get_title()
