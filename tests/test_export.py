"""`hpo results export`: a finished run's trials into MLflow (a sqlite file, a local mlruns folder) and TensorBoard
(event files with the HParams plugin's data), read back with MLflow's own client and TensorBoard's own reader."""

from __future__ import annotations

import pytest
import yaml
from conftest import spec_dict

from orchestrator.results import config_of, load_results, load_trials

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory) -> str:
    from orchestrator.api import run
    from orchestrator.spec import load_spec

    root = tmp_path_factory.mktemp("export")
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(spec_dict(name="export-job", storage=str(root / "results"))))
    return run(load_spec(path), progress=lambda line: None).results_uri


def _expected(uri: str):
    trials = {t["trial_id"]: t for t in load_trials(uri).to_pylist()}
    curves: dict = {}
    for row in load_results(uri).to_pylist():
        for metric in ("val_loss", "val_accuracy", "train_loss"):
            if row.get(metric) is not None:
                curves.setdefault((row["trial_id"], metric), []).append((row["iteration"], row[metric]))
    return trials, curves


@pytest.mark.parametrize("where", ["sqlite", "mlruns folder"])
def test_mlflow_gets_one_run_per_trial_with_params_metrics_by_step_and_tags_once(
    cli, finished, tmp_path, where
):
    from mlflow.tracking import MlflowClient

    target = f"sqlite:///{tmp_path / 'mlflow.db'}" if where == "sqlite" else str(tmp_path / "mlruns")
    done = cli("results", "export", finished, "--mlflow", target)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mlflow: 3 trial(s) of run "), done.stdout
    again = cli("results", "export", finished, "--mlflow", target)
    assert "mlflow: 0 trial(s)" in again.stdout and "3 were there already" in again.stdout, again.stdout

    trials, curves = _expected(finished)
    uri = target if where == "sqlite" else (tmp_path / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("export-job")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(trials) == 3
    for found in runs:
        trial = trials[found.data.tags["hpo.trial_id"]]
        assert found.data.params == {k: str(v) for k, v in config_of(trial).items()}
        assert found.data.tags["hpo.status"] == trial["status"]
        assert found.data.tags["hpo.trial_seed"] == str(trial["trial_seed"])
        assert found.info.status == "FINISHED"
        for metric in ("val_loss", "val_accuracy"):
            history = client.get_metric_history(found.info.run_id, metric)
            assert sorted((m.step, m.value) for m in history) == curves[(trial["trial_id"], metric)]


def test_tensorboard_gets_each_trials_curves_and_hparams(cli, finished, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    done = cli("results", "export", finished, "--tensorboard", str(tmp_path / "tb"))
    assert done.returncode == 0 and done.stdout.startswith("tensorboard: 3 trial(s) written under "), done
    trials, curves = _expected(finished)
    run_dir = next((tmp_path / "tb").iterdir())
    experiment = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    experiment.Reload()
    config = plugin_data_pb2.HParamsPluginData.FromString(
        experiment.PluginTagToContent("hparams")["_hparams_/experiment"]
    )
    searched = {k for t in trials.values() for k in config_of(t)}
    assert {
        "lr",
        "hidden",
        "batch_size",
    } <= searched  # the searched and fixed ones, the workload's defaults too
    assert {h.name for h in config.experiment.hparam_infos} == searched | {"status", "trial_seed"}
    assert {m.name.tag for m in config.experiment.metric_infos} >= {"val_loss", "val_accuracy"}
    for trial_id, trial in trials.items():
        events = EventAccumulator(str(run_dir / trial_id), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        for metric in ("val_loss", "val_accuracy"):
            got, want = [(e.step, e.value) for e in events.Scalars(metric)], curves[(trial_id, metric)]
            assert [step for step, _ in got] == [step for step, _ in want]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # stored as float32
        start = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        ).session_start_info
        assert start.hparams["status"].string_value == trial["status"]
        assert start.hparams["trial_seed"].number_value == trial["trial_seed"]
        assert start.hparams["hidden"].number_value == config_of(trial)["hidden"]


def test_export_without_a_target_is_a_one_line_error(cli, finished):
    done = cli("results", "export", finished)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--mlflow TRACKING_URI and/or --tensorboard DIR" in done.stderr
