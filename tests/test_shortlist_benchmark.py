"""The shortlist benchmark judges the shortlist against the product's default metric, ties included."""
import numpy as np

from hubscout.scores import DEFAULT_METRIC, DEFAULT_METRICS


def test_variants_sharing_a_backbone_tie_on_the_default_metric_and_any_of_them_counts(quick_repo):
    from benchmarks import shortlist as bench
    from hubscout.sources import demo_target
    from hubscout.spec import zoo_class_keys
    from hubscout.spec._images import class_sample

    metrics = bench.default_metrics()
    assert metrics[0] == DEFAULT_METRIC and set(metrics) == set(DEFAULT_METRICS)
    base = quick_repo.get("fashion-footwear")
    variants = bench.make_variants([base], 4, seed=0)  # the base and three class-subset / head-noise variants
    feats = bench.BaseFeatures(base)
    feats.calibrate(np.concatenate([class_sample(*k, n=20) for k in zoo_class_keys(base)]))
    exact = bench.exact_scores(variants, {base.id: feats}, demo_target("footwear", 10, seed=0), {}, metrics)
    ids = [v.id for v in variants]

    h = np.array([exact[DEFAULT_METRIC][t] for t in ids])
    ot = np.array([exact["ot"][t] for t in ids])
    # H-score reads the backbone's features alone: every variant has its base's; OT reads the head too.
    assert np.ptp(h) <= 1e-9 * abs(h[0]) and np.ptp(ot) > 1e-3
    loss = bench._loss(DEFAULT_METRIC, h)
    assert bench._best(loss).tolist() == [0, 1, 2, 3]
    keep = np.array([False, False, True, False])
    assert bench._rule_on(keep, loss) == {"top1_run": 1.0, "top1_share": 0.25, "n_tied": 4, "n_run": 1,
                                          "regret_run": 0.0}
    # Judged by OT, the same run set keeps the top-1 only if it holds OT's own best.
    ot_loss = bench._loss("ot", ot)
    assert bench._rule_on(keep, ot_loss)["top1_run"] == float(np.argmin(ot) == 2)
