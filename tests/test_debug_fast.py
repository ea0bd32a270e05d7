"""debug=fast's warts (issue 36, item 8): its anomaly mode must not print torch's forward traceback (~79 lines)
before a divergence's one line, and its callbacks=none must not leave Lightning's default checkpoint in the
TensorBoard dir."""

from pathlib import Path

from conftest import run_script
from test_sweeps import with_tests_on_path


def test_a_divergence_under_debug_fast_is_one_line_without_torchs_anomaly_warning(tmp_path, small_names, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())  # exploding_model.py
    result = run_script(
        "train.py",
        "debug=fast",
        "threads=1",
        f"data.path={small_names}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "model._target_=exploding_model.ExplodingMLP",
        "+model.explode_at_call=5",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Error detected in" not in result.stderr and "UserWarning" not in result.stderr, result.stderr[-3000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: anomaly detection: Function 'LogSoftmaxBackward0' returned nan values")
    )


def test_callbacks_none_leaves_no_lightning_checkpoint_in_the_tensorboard_dir(compose_train, small_names):
    from makemore_lab.train import train

    cfg = compose_train(f"data.path={small_names}", "callbacks=none")
    train(cfg)
    out_dir = Path(cfg.paths.output_dir)
    assert sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.ckpt")) == ["checkpoints/last.ckpt"]
