"""The engine seam (efficientad_fast.jobs.engines): the local runner's submit/gather contract,
which the Ray runner shares (tests/test_ray_engine.py runs report, train and predict through
both and compares their rows)."""

from __future__ import annotations

import pytest

from efficientad_fast.jobs.engines import LocalRunner, RayRunner, make_runner


def _square(x, log=None):
    if x < 0:
        raise ValueError(f"negative: {x}")
    if log is not None:
        log(f"squaring {x}")
    return x * x


def test_local_runner_reports_each_piece_and_goes_on_after_a_failure():
    logged, done, failed = [], {}, {}
    with LocalRunner(logged.append) as runner:
        for key, x in (("a", 2), ("b", -1), ("c", 3)):
            runner.submit(key, f"square {x}", _square, {"x": x}, local_log=True)
        runner.gather(lambda k, r: done.__setitem__(k, r), lambda k, e, d: failed.__setitem__(k, (e, d)))
    assert done == {"a": 4, "c": 9}
    error, details = failed["b"]
    assert error == "ValueError: negative: -1" and "Traceback" in details and "_square" in details
    assert logged == ["squaring 2", "squaring 3"]  # local_log: the piece got the runner's log


def test_ctrl_c_stops_the_local_runner():
    def interrupted():
        raise KeyboardInterrupt

    runner = LocalRunner()
    runner.submit(0, "stop", interrupted, {})
    runner.submit(1, "never", _square, {"x": 1})
    ran = []
    with pytest.raises(KeyboardInterrupt):
        runner.gather(lambda k, r: ran.append(k), lambda k, e, d: ran.append(k))
    assert ran == []


def test_make_runner_refuses_ray_options_for_the_local_engine_and_an_unknown_engine():
    assert isinstance(make_runner("local"), LocalRunner)
    assert isinstance(make_runner("local", ray_address=None), LocalRunner)
    with pytest.raises(ValueError, match="retries: options of the Ray engine"):
        make_runner("local", retries=2)
    with pytest.raises(ValueError, match="engine must be 'local' or 'ray'"):
        make_runner("dask")


def test_both_runners_have_the_same_interface():
    for name in ("submit", "gather", "device", "path", "__enter__", "__exit__"):
        assert callable(getattr(LocalRunner, name)) and callable(getattr(RayRunner, name)), name


def test_a_failure_on_a_full_disk_says_what_failed_not_error_txt(tmp_path, monkeypatch):
    """The probe's report on a full disk ended with 'no space left writing .../error.txt',
    hiding the checkpoint that could not be written first."""
    import errno

    from efficientad_fast.jobs import engines

    def full(path, text):
        raise OSError(errno.ENOSPC, f"no space left writing {path}")

    monkeypatch.setattr(engines, "atomic_write_text", full)
    first = "no space left writing rep/board/checkpoint.pt"
    with pytest.raises(OSError, match=r"the run failed \(no space left writing rep/board/checkpoint.pt\)"):
        engines.record_failure({}, tmp_path / "board", first, "Traceback ...")
