"""``python -m bench.shards``: its arguments (the run itself is tests/test_shards_process.py's, at 24 rollouts)."""

from __future__ import annotations

import pytest

from bench import shards


@pytest.mark.parametrize("argv", [["--replicas", "1"], ["--rollouts", "0"], ["--shards", "0"]])
def test_a_run_that_could_not_show_a_take_over_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        shards.main(argv)
    assert exited.value.code == 2 and "at least" in capsys.readouterr().err
