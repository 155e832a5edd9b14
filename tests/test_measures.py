"""Tr(F_i), max Tr(F) and the best epoch (fisherlab.training.measures) on hand-made records, and
the trainer's dense-then-sparse cadence and ``until="crossing"``."""

from __future__ import annotations

import functools
import math

import pandas as pd
import pytest

from fisherlab.training.measures import best_epoch, crossed, crossing, max_trace_fisher


def rows(*triples, steps_per_epoch=10):
    """Curvature rows from (step, Tr(F), running loss) triples, as curvature.csv holds them."""
    return [{"step": s, "epoch": s / steps_per_epoch, "trace_fisher": f, "train_loss_running": loss}
            for s, f, loss in triples]  # fmt: skip


def test_the_crossing_between_two_measurements_is_interpolated():
    # loss 2.0 at step 10 and 1.0 at step 20; epsilon 1.2 is 80% of the way: step 18
    c = crossing(rows((0, 1.0, math.nan), (10, 100.0, 2.0), (20, 200.0, 1.0), (30, 50.0, 0.5)), 1.2)
    assert c.status == "ok"
    assert c.trace_fisher_i == pytest.approx(100 + 0.8 * 100)
    assert c.step == pytest.approx(18.0) and c.epoch == pytest.approx(1.8)


def test_the_records_may_come_in_any_order_and_as_a_csv():
    r = rows((20, 200.0, 1.0), (0, 1.0, math.nan), (10, 100.0, 2.0))
    from_csv = pd.DataFrame(r).to_dict("records")
    assert crossing(r, 1.2) == crossing(from_csv, 1.2) == crossing(sorted(r, key=lambda x: x["step"]), 1.2)


def test_a_crossing_at_the_first_measurement_takes_that_measurement():
    c = crossing(rows((0, 1.0, math.nan), (10, 70.0, 1.1), (20, 90.0, 0.9)), 1.2)
    assert c == (70.0, 10.0, 1.0, "at first measurement")


def test_a_run_that_never_crosses_is_recorded_as_not_reached():
    c = crossing(rows((0, 1.0, math.nan), (10, 70.0, 2.1), (20, 90.0, 1.9)), 1.2)
    assert c.status == "not reached" and math.isnan(c.trace_fisher_i) and math.isnan(c.step)
    assert crossing([], 1.2).status == "not reached"
    assert crossing(rows((10, 70.0, 0.1)), None).status == "not reached"


def test_a_diverged_window_never_counts_as_a_crossing():
    c = crossing(rows((10, 70.0, 2.0), (20, math.nan, math.nan), (30, 90.0, 1.0)), 1.5)
    assert c.status == "ok" and c.step == pytest.approx(20.0)  # between steps 10 and 30, across the NaN row


def test_a_crossing_without_a_finite_trace_is_not_reached():
    """The weights diverged by the measurement whose running loss (the steps before it) is
    still below epsilon: no Tr(F_i) to give, so "not reached", never a status that
    promises a number (found by config.yaml in miniature: ResNet-52 at lr 0.1)."""
    first = crossing(rows((0, 1066.5, math.nan), (2, math.nan, 14.2)), 1000.0)
    between = crossing(rows((10, 70.0, 2.0), (20, math.inf, 1.0)), 1.5)
    for c in (first, between):
        assert c.status == "not reached" and math.isnan(c.trace_fisher_i) and math.isnan(c.step), c


def test_crossed():
    assert crossed(rows((10, 1.0, 1.0)), 1.2) and not crossed(rows((10, 1.0, 1.3)), 1.2)
    assert not crossed(rows((10, 1.0, 1.0)), None)


def test_max_trace_fisher_counts_from_the_first_epoch_on():
    r = rows((0, 1000.0, math.nan), (5, 900.0, 2.0), (10, 30.0, 1.5), (20, 50.0, 1.0), (25, math.nan, math.nan))
    assert max_trace_fisher(r) == 50.0
    assert max_trace_fisher(r, from_epoch=0) == 1000.0
    assert math.isnan(max_trace_fisher(r[:2]))


def test_best_epoch_is_the_first_best_validation_epoch():
    m = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "val_acc": 0.7}]
    assert best_epoch(m)["epoch"] == 2
    nan = [{"epoch": 1, "val_acc": math.nan}, {"epoch": 2, "val_acc": math.nan}]
    assert best_epoch(nan)["epoch"] == 2 and best_epoch([]) == {}


# --------------------------------------------------------------------- in the trainer


@functools.cache  # the same run serves several tests (read only)
def small_run(**overrides):
    from fisherlab import TrainConfig, TrainData, train
    from fisherlab.data import DeviceData, make_synthetic

    data = TrainData(DeviceData(make_synthetic(320, seed=0, split="train")),
                     DeviceData(make_synthetic(64, seed=0, split="val")))  # fmt: skip
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, fisher_examples=32, fisher_every=10, **overrides)
    return train(cfg, data)


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_the_cadence_is_dense_until_the_crossing_then_sparse():
    result = small_run(fisher_every_early=2, epsilon=2.0)
    steps = [r["step"] for r in result.curvature]
    c = crossing(result.curvature, 2.0)
    assert c.status == "ok", result.curvature
    early = [s for s in steps if 0 < s <= c.step + 2]
    late = [s for s in steps if s > c.step + 2]
    assert all(s % 2 == 0 for s in early) and len(early) >= 3
    # after the crossing: every 10 steps, plus the epoch ends (every 10 steps too here)
    assert late and all(s % 10 == 0 for s in late)
    assert result.summary["trace_fisher_i"] == pytest.approx(c.trace_fisher_i)
    assert result.summary["crossing_step"] == pytest.approx(c.step)


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_without_epoch_end_measurements_only_the_cadence_measures():
    """fisher_epoch_end=False (the Section 3 sweeps, 5,000 examples): Tr(F) every K steps
    and at initialisation, none at the epoch ends (10 steps an epoch here), the same
    values at the same steps, and an epoch's Tr(F) cell empty unless measured at its end."""
    from fisherlab import TrainConfig, TrainData, train
    from fisherlab.data import DeviceData, make_synthetic

    data = TrainData(DeviceData(make_synthetic(320, seed=0, split="train")),
                     DeviceData(make_synthetic(64, seed=0, split="val")))  # fmt: skip
    runs = {end: train(TrainConfig(epochs=2, batch_size=32, lr=0.05, fisher_examples=32, fisher_every=7,
                                   fisher_epoch_end=end), data) for end in (True, False)}  # fmt: skip
    sparse = {r["step"]: r["trace_fisher"] for r in runs[False].curvature}
    dense = {r["step"]: r["trace_fisher"] for r in runs[True].curvature}
    assert sorted(sparse) == [0, 7, 14]
    assert sorted(dense) == [0, 7, 10, 14, 20]
    assert all(sparse[s] == pytest.approx(dense[s], rel=1e-6) for s in sparse)
    assert all(math.isnan(m["trace_fisher"]) for m in runs[False].metrics)
    assert [m["trace_fisher"] for m in runs[True].metrics] == pytest.approx([dense[s] for s in (10, 20)])
    assert runs[False].summary["max_trace_fisher"] == pytest.approx(max(v for s, v in sparse.items() if s >= 10))
    with pytest.raises(ValueError, match="fisher_every > 0"):
        TrainConfig(fisher_every=0, fisher_epoch_end=False)


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_until_crossing_stops_right_after_the_crossing():
    full = small_run(fisher_every_early=2, epsilon=2.0)
    short = small_run(fisher_every_early=2, epsilon=2.0, until="crossing")
    c = crossing(full.curvature, 2.0)
    assert short.status == "ok" and short.summary["steps"] < full.summary["steps"]
    assert short.curvature[-1]["train_loss_running"] < 2.0
    assert short.summary["steps"] == short.curvature[-1]["step"]
    assert short.summary["trace_fisher_i"] == pytest.approx(c.trace_fisher_i)  # the same trajectory so far


def test_until_crossing_needs_an_epsilon():
    from fisherlab import TrainConfig

    with pytest.raises(ValueError, match="epsilon"):
        TrainConfig(until="crossing")
    with pytest.raises(ValueError, match="until"):
        TrainConfig(until="never", epsilon=1.0)


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_a_crossing_at_an_epoch_end_switches_the_cadence_there_in_a_resumed_run_too(tmp_path):
    """The cadence turns sparse after the measurement that crosses epsilon, the epoch-end
    one included, so a run stopped after every epoch and resumed from its checkpoint
    measures at the same steps as an uninterrupted one (CI once saw 64 rows against 67
    when a SIGKILL fell right after such an epoch)."""
    from fisherlab import TrainConfig, TrainData, train
    from fisherlab.data import DeviceData, make_synthetic

    data = TrainData(DeviceData(make_synthetic(320, seed=0, split="train")),
                     DeviceData(make_synthetic(64, seed=0, split="val")))  # fmt: skip
    base = dict(epochs=4, batch_size=32, lr=0.05, fisher_examples=32, fisher_every=10, fisher_every_early=3)
    dense = train(TrainConfig(**base, epsilon=1e-9), data).curvature  # never crosses: dense all along
    # an epoch end (10 steps an epoch; not a multiple of 3) whose running loss is below every earlier one
    lows = [i for i, r in enumerate(dense) if r["step"] % 10 == 0 and r["step"] % 3 and r["step"] > 0
            and i > 1 and all(r["train_loss_running"] < q["train_loss_running"] for q in dense[1:i])]  # fmt: skip
    assert lows, dense
    k = lows[0]
    earlier = min(q["train_loss_running"] for q in dense[1:k])  # the crossing is at k, not before
    epsilon = (dense[k]["train_loss_running"] + earlier) / 2
    cfg = TrainConfig(**base, epsilon=epsilon)
    whole = train(cfg, data)
    assert crossing(whole.curvature, epsilon).step <= dense[k]["step"]  # crossed at the epoch end k
    calls = iter(range(10**6))
    stop_after_each_epoch = lambda: next(calls) % 11 == 10  # noqa: E731  (10 steps, then the epoch end)
    ckpt, parts = tmp_path / "ckpt.pt", []
    while not parts or parts[-1].status == "preempted":
        parts.append(train(cfg, data, checkpoint=ckpt, should_stop=stop_after_each_epoch))
    assert len(parts) == 4
    assert [r["step"] for r in parts[-1].curvature] == [r["step"] for r in whole.curvature]
    pd.testing.assert_frame_equal(pd.DataFrame(parts[-1].curvature), pd.DataFrame(whole.curvature))
