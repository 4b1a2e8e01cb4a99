import json

import pytest

from palate.eval.monitor import Monitor, MonitorConfig, monitor_metrics, present_signals, read_metrics, slope


def test_slope_hand_values():
    assert slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2.0)
    assert slope([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert slope([5, 5], [1, 2]) == 0.0


def _hacking_run():
    """Proxy rises every step; gold rises to a peak at step 10 then falls (reward hacking)."""
    for step in range(1, 21):
        gold = step / 10 if step <= 10 else 1.0 - (step - 10) * 0.05
        yield step, 0.1 * step, gold


def test_proxy_gold_divergence_triggers_and_names_best_step():
    mon = Monitor(MonitorConfig(window=5, gold_tolerance=0.1))
    first = None
    for step, proxy, gold in _hacking_run():
        alerts = mon.update(step, proxy=proxy, gold=gold)
        if alerts and first is None:
            first = alerts[0]
    assert first is not None and first.check == "proxy_gold"
    # gold 1.0 at step 10; below 1.0 − 0.1 from step 13 on (0.85): that is the first alert
    assert first.step == 13 and first.severity == "warning"
    assert mon.best_gold_step == 10 and mon.best_gold == pytest.approx(1.0)
    assert "step 10" in first.message
    assert len([a for a in mon.alerts if a.check == "proxy_gold"]) == 1  # raised once while it holds
    assert not mon.should_stop


def test_no_alert_when_proxy_and_gold_both_rise():
    mon = Monitor(MonitorConfig(window=5, gold_tolerance=0.1))
    for step in range(1, 31):
        assert mon.update(step, proxy=0.1 * step, gold=0.05 * step + (0.04 if step % 2 else 0)) == []
    assert mon.best_gold_step in (29, 30)


def test_no_alert_when_gold_falls_but_proxy_falls_too():
    mon = Monitor(MonitorConfig(window=4, gold_tolerance=0.1))
    for step in range(1, 15):
        assert mon.update(step, proxy=2 - 0.1 * step, gold=1 - 0.1 * step) == []


def test_no_alert_when_the_heldout_proxy_falls_with_the_gold():
    """The training proxy rises (0.1/step) but on the held-out answers the proxy fell with the gold: step 4's
    gold 0.5 is 0.5 below its best (1.0 at step 3), and the held-out proxy fell 0.6 (1.2 -> 0.6): they agree
    (−0.6 <= −0.5 + 0.1), so no alert. At step 5 the held-out proxy rose to 1.4 (+0.2 > −0.6 + 0.1) while the
    gold fell to 0.4: that is the divergence."""
    mon = Monitor(MonitorConfig(window=3, gold_tolerance=0.1))
    rows = [(1, 0.2, 0.2), (2, 0.8, 0.9), (3, 1.0, 1.2), (4, 0.5, 0.6), (5, 0.4, 1.4)]
    raised = {step: mon.update(step, proxy=0.1 * step, gold=gold, heldout_proxy=held) for step, gold, held in rows}
    assert [step for step, alerts in raised.items() if alerts] == [5]
    assert mon.best_gold_step == 3 and "step 3" in raised[5][0].message
    # without the held-out proxy the same gold drop at step 4 is an alert (nothing says the two agree)
    plain = Monitor(MonitorConfig(window=3, gold_tolerance=0.1))
    assert [s for s, g, _ in rows if plain.update(s, proxy=0.1 * s, gold=g)] == [4]


def test_stop_action():
    mon = Monitor(MonitorConfig(window=3, gold_tolerance=0.0, action="stop"))
    for step, proxy, gold in _hacking_run():
        mon.update(step, proxy=proxy, gold=gold)
    assert mon.should_stop and mon.alerts[0].severity == "stop"
    with pytest.raises(ValueError, match="warn or stop"):
        MonitorConfig(action="halt")


def test_length_correlation_over_window_and_within_step():
    # reward = length / 100: every change of length moves the reward
    lengths = [50, 60, 55, 70, 65, 80, 90]
    mon = Monitor(MonitorConfig(window=5, length_corr=0.8))
    got = []
    for step, n in enumerate(lengths, 1):
        got += mon.update(step, reward=n / 100, length=n)
    assert [a.check for a in got] == ["length"] and got[0].step == 6  # first step with 5 changes
    # both drift up (levels correlate, r = 0.90) but reward does not move with length: the changes
    # Δreward (.1 .2 .1 .2 .1 .15) against Δlength (10 −5 15 −5 15 10) correlate negatively -> no alert
    quiet = Monitor(MonitorConfig(window=5))
    for step, (r, n) in enumerate(zip([0.1, 0.2, 0.4, 0.5, 0.7, 0.8, 0.95], lengths), 1):
        assert quiet.update(step, reward=r, length=n) == []
    # changes anti-correlated: Δreward = (+1, −1, +1, −1, +1) against Δlength = (−1, +1, −1, +1, −1)
    anti = Monitor(MonitorConfig(window=5))
    for step, (r, n) in enumerate([(1, 50), (2, 49), (1, 50), (2, 49), (1, 50), (2, 49)], 1):
        assert anti.update(step, reward=r, length=n) == []
    # per-sample lists of one step
    one = Monitor(MonitorConfig(length_corr=0.9))
    assert one.update(1, reward=[1.0, 2.0, 3.0, 4.0], length=[10, 21, 29, 41])[0].check == "length"
    assert Monitor().update(1, reward=[1.0, 2.0, 3.0, 4.0], length=[40, 10, 30, 20]) == []


def test_repetition_ensemble_and_kl_checks():
    mon = Monitor(MonitorConfig(repetition=0.3, ensemble_factor=2.0, baseline_points=3, kl_budget=5.0))
    assert mon.update(1, repetition=0.1, ensemble_std=0.10, kl=1.0) == []
    assert mon.update(2, repetition=[0.2, 0.3], ensemble_std=0.12, kl=2.0) == []
    assert mon.update(3, ensemble_std=0.08) == []  # baseline = mean(0.10, 0.12, 0.08) = 0.10
    assert mon.update(4, ensemble_std=0.19) == []  # 1.9x
    assert [a.check for a in mon.update(5, ensemble_std=0.25, repetition=0.5, kl=6.0)] == ["repetition", "ensemble", "kl"]
    assert mon.update(6, ensemble_std=0.3, repetition=0.6, kl=7.0) == []  # still active: not repeated
    assert mon.update(7, repetition=0.1) == []  # clears repetition
    assert [a.check for a in mon.update(8, repetition=0.9)] == ["repetition"]
    assert [a.check for a in Monitor().update(1, kl=100.0)] == []  # no budget: not checked
    with pytest.raises(ValueError, match="unknown monitor signals"):
        mon.update(9, entropy=1.0)


def test_offline_over_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for step, proxy, gold in _hacking_run():
            row = {"step": step, "reward": proxy, "kl": 0.5 * step, "response_length": 30 + step % 3}
            if step % 2 == 0:
                row["gold_reward"] = gold
            f.write(json.dumps(row) + "\n")
    mon = monitor_metrics(path, MonitorConfig(window=5, gold_tolerance=0.1, kl_budget=8.0))
    checks = {a.check: a.step for a in mon.alerts}
    assert checks["proxy_gold"] == 14  # gold measured at even steps: 0.8 at step 14 < 1.0 − 0.1
    assert checks["kl"] == 17  # first step with KL 8.5 > 8
    assert mon.best_gold_step == 10
    assert present_signals([json.loads(line) for line in path.read_text().splitlines()]) >= {"proxy", "gold", "kl"}
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        monitor_metrics(tmp_path / "bad.jsonl")
    (tmp_path / "live.jsonl").write_text('{"step": 1, "kl": 1}\n{"step": 2, "k')  # a run writing its next line
    assert read_metrics(tmp_path / "live.jsonl", allow_partial_last=True) == [{"step": 1, "kl": 1}]
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(tmp_path / "live.jsonl")
