"""The population launcher (hydra/launcher=population), run as a user runs it: real multiruns of ./train.py (tiny step
counts, the small data fixture), their job dirs, logs and summary tables read back; the grouping rules on configs
composed as ./train.py composes them.

Tests that need a population of more than one really trained together (the engine, makemore_lab.population's
train_population) say so in their name (`..._by_the_engine`); without the engine every job runs alone and they fail.
"""

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_config, run_script
from makemore_lab.population import population_key
from makemore_lab.population.grouping import group_jobs
from test_interrupt_resume import saved_step, start_train_py, wait_for
from test_sweeps import check_rows_match_jobs, job_overrides, job_summary, needs, read_rows, with_tests_on_path

POPULATION = ["hydra/launcher=population", "~callbacks.progress_bar"]


# ---------------------------------------------------------------------------------------------------------------------
# Grouping rules, on composed configs.


def compose_jobs(tmp_path: Path, *jobs: list[str]) -> list:
    """One resolved train config per job (a list of overrides), each with its own job dir, as the launcher sees them."""
    cfgs = [compose_config(*TINY, f"paths.output_dir={tmp_path / str(num)}", *job) for num, job in enumerate(jobs)]
    for cfg in cfgs:
        OmegaConf.resolve(cfg)
    return cfgs


@pytest.mark.slow
def test_shape_preserving_differences_share_one_population(tmp_path):
    cfgs = compose_jobs(
        tmp_path,
        [],
        ["optimizer.lr=0.03", "optimizer.momentum=0.9", "optimizer.weight_decay=1e-4"],
        ["seed=7", "data.seed=3", "model.init=naive"],
        ["schedule.at=0.8", "schedule.factor=0.3"],
        ["model=mlp_bn", "model.gain=1.0"],
        ["model=mlp_bn", "model.init=torch", "seed=2"],
        ["optimizer=adamw", "model=transformer", "optimizer.betas=[0.8,0.9]", "optimizer.eps=1e-6"],
        ["optimizer=adamw", "model=transformer", "optimizer.lr=3e-3"],
    )
    grouping = group_jobs(cfgs)
    assert grouping.groups == [[0, 1, 2, 3], [4, 5], [6, 7]]
    # each job's own dir (and what is built on it) counts as the same value
    assert cfgs[0].callbacks.model_checkpoint.dirpath != cfgs[1].callbacks.model_checkpoint.dirpath
    # jobs 4-7 could not join the first group: one line each, naming what differs
    assert sorted(grouping.reasons) == [4, 5, 6, 7]
    assert (
        "cannot join job(s) 0,1,2,3" in grouping.reasons[4]
        and "model_name ('mlp_bn', not 'mlp')" in grouping.reasons[4]
    )
    assert grouping.reasons[6].startswith("is in a population of 2: it cannot join job(s)")


SHAPE_OR_LOOP_DIFFERENCES = {  # override -> how the reason line names it
    "model.n_hidden=100": "model.n_hidden (100, not 200)",
    "block_size=4": "block_size (4, not 3)",
    "data.batch_size=64": "data.batch_size (64, not 32)",
    "trainer.max_steps=40": "trainer.max_steps (40, not 20)",
    "data.split_seed=1": "data.split_seed (1, not 42)",
    "optimizer=adam": "optimizer._target_ ('torch.optim.Adam', not 'torch.optim.SGD')",
    "schedule=cosine": "schedule._target_ ('makemore_lab.schedules.cosine', not 'makemore_lab.schedules.step_decay')",
    "+optimizer.nesterov=true": "optimizer.nesterov (only in this job)",
    "~callbacks.diagnostics": "callbacks.diagnostics.",
}


def test_a_shape_or_loop_difference_is_its_own_group_with_the_key_named(tmp_path):
    overrides = list(SHAPE_OR_LOOP_DIFFERENCES)
    names = [10 + n for n in range(2 + len(overrides))]
    grouping = group_jobs(compose_jobs(tmp_path, [], [], *([o] for o in overrides)), names=names)
    assert grouping.groups == [[0, 1], *([n] for n in range(2, len(names)))]
    assert list(grouping.reasons) == list(range(2, len(names)))
    for index, override in enumerate(overrides, start=2):
        reason = grouping.reasons[index]
        assert reason.startswith("runs alone: it cannot join job(s) 10,11, differing in "), reason
        assert SHAPE_OR_LOOP_DIFFERENCES[override] in reason, reason
        assert f"job {names[index]} {reason}" in grouping.describe()


MODEL_VARIATIONS = [  # (model, override): the launcher and the engine must agree on each
    ("transformer", "model.dropout=0.1"),
    ("wavenet", "model.dropout=0.2"),
    ("mlp", "model.init=naive"),
    ("mlp_bn", "model.gain=1.0"),
    ("mlp", "model.n_hidden=100"),
    ("wavenet", "model.n_hidden=64"),
]


@pytest.mark.parametrize("model,override", MODEL_VARIATIONS)
def test_the_launcher_and_the_engine_group_by_one_rule(tmp_path, model, override):
    """A model key the launcher lets differ is one the engine stacks, and the other way round."""
    cfgs = compose_jobs(tmp_path, [f"model={model}"], [f"model={model}", override])
    members = [
        SimpleNamespace(
            cfg=cfg, start_step=0, net=instantiate(cfg.model, vocab_size=27, block_size=cfg.block_size or 16)
        )
        for cfg in cfgs
    ]
    launcher_joins = group_jobs(cfgs).groups == [[0, 1]]
    assert launcher_joins == (population_key(members[0]) == population_key(members[1]))
    assert launcher_joins == (override.split("=")[0] in ("model.init", "model.gain", "model.dropout"))


def test_refused_and_bad_jobs_run_alone_with_their_reason(tmp_path):
    cfgs = compose_jobs(tmp_path, [], ["optimizer.lr=-1"], [], ["trainer=ddp"], [])
    refusal = "trainer=ddp: a DDP run is one process per device"
    grouping = group_jobs(cfgs, refusals=[None, None, None, refusal, None])
    assert grouping.groups == [[0, 2, 4], [1], [3]]
    assert grouping.reasons == {
        1: "runs alone: bad value: optimizer.lr must be a positive number below 1e30, got -1",
        3: f"runs alone: {refusal}",
    }
    lines = grouping.describe()
    assert lines[0] == "5 jobs in 3 group(s), run one after another (sizes [3, 1, 1])"
    assert "group 0: job(s) 0,2,4 as one population of 3" in lines and "group 2: job(s) 3 alone" in lines


class CountingLoader:
    """A config loader that composes by copying its master config, with the overrides recorded, and counts."""

    def __init__(self):
        self.calls = 0

    def load_sweep_config(self, master_config, sweep_overrides):
        self.calls += 1
        cfg = OmegaConf.create(OmegaConf.to_container(master_config))
        cfg.overrides = list(sweep_overrides)
        return cfg

    def get_search_path(self):
        return "search path"


def test_the_sweepers_check_composes_each_job_and_the_launcher_reuses_it():
    from hydra.types import HydraContext

    from hydra_plugins.makemore_population_launcher.population_launcher import ComposedOnce, PopulationLauncher

    loader, master = CountingLoader(), OmegaConf.create({"lr": 0.1})
    context = HydraContext(config_loader=loader, callbacks=None)
    PopulationLauncher().setup(hydra_context=context, task_function=None, config=master)
    wrapped = context.config_loader  # the sweeper's context too: it holds the same object
    assert isinstance(wrapped, ComposedOnce) and wrapped.get_search_path() == "search path"
    checked = wrapped.load_sweep_config(master_config=master, sweep_overrides=["lr=0.3"])  # as the sweeper calls it
    checked.overrides.append("changed by the sweeper")
    launched = wrapped.load_sweep_config(master, ["lr=0.3"])  # the launcher's prepare()
    assert loader.calls == 1 and list(launched.overrides) == ["lr=0.3"]  # its own copy, as composed
    launched.overrides.append("changed by the launcher")
    assert list(wrapped.load_sweep_config(master, ["lr=0.3"]).overrides) == ["lr=0.3"] and loader.calls == 2
    wrapped.load_sweep_config(master, ["lr=0.4"])
    wrapped.load_sweep_config(OmegaConf.create({"lr": 0.1}), ["lr=0.4"])  # another master config: composed anew
    assert loader.calls == 4
    PopulationLauncher().setup(hydra_context=context, task_function=None, config=master)  # a second batch's setup
    assert context.config_loader is wrapped


# ---------------------------------------------------------------------------------------------------------------------
# A real sweep: two populations (n_hidden 50 and 64), each with a member that diverges (lr=100: the example;
# the loss stays finite but jumps to ~80x its first step's, engine.divergence), and a bad value (lr=-1) in each,
# which runs alone.


@pytest.fixture(scope="module")
def population_sweep(tmp_path_factory, small_names):
    root = tmp_path_factory.mktemp("population")
    sweep_dir, events = root / "sweep", root / "job_events.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", with_tests_on_path())  # job_events.py
        result = run_script(
            "train.py",
            "-m",
            *POPULATION,
            "model=mlp",
            "model.n_hidden=50,64",
            "optimizer.lr=0.01,100,-1",
            *TINY,
            f"data.path={small_names}",
            f"hydra.sweep.dir={sweep_dir}",
            "+hydra.callbacks.job_events._target_=job_events.JobEvents",
            f"+hydra.callbacks.job_events.path={events}",
        )
    assert result.returncode == 0, result.stderr[-3000:]
    by_overrides = {
        (o["model.n_hidden"], o["optimizer.lr"]): job
        for job in sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
        for o in [job_overrides(sweep_dir, job)]
    }
    return sweep_dir, result.stdout + result.stderr, by_overrides, [json.loads(line) for line in events.open()]


def launcher_lines(output: str) -> list[str]:
    """The launcher's log lines, without Hydra's time and logger prefix."""
    return [
        re.sub(r"^\[[^]]*\]\[[^]]*\](\[[A-Z]+\])?( - )? ?", "", line)
        for line in output.splitlines()
        if "group" in line or re.search(r"\] job \d+ ", line)
    ]


@pytest.mark.slow
def test_the_launcher_logs_its_groups_and_why_each_job_could_not_join(population_sweep):
    _, output, jobs, _ = population_sweep
    lines = launcher_lines(output)
    assert "6 jobs in 4 group(s), run one after another (sizes [2, 2, 1, 1])" in lines
    assert not [line for line in lines if "earlier run" in line]  # a fresh sweep: every summary.json is its own
    for n_hidden in ("50", "64"):
        members = ",".join(sorted((jobs[(n_hidden, "0.01")], jobs[(n_hidden, "100")]), key=int))
        assert any(re.fullmatch(rf"group \d: job\(s\) {members} as one population of 2", line) for line in lines)
        bad = jobs[(n_hidden, "-1")]
        assert f"job {bad} runs alone: bad value: optimizer.lr must be a positive number below 1e30, got -1" in lines
    for lr in ("0.01", "100"):  # the second population's members: cannot join the first, for their width
        assert any(
            line.startswith(f"job {jobs[('64', lr)]} is in a population of 2: it cannot join job(s) ")
            and "model.n_hidden (64, not 50)" in line
            for line in lines
        )


@pytest.mark.slow
def test_each_members_console_lines_name_it_and_its_train_log_has_them_as_a_solo_runs(population_sweep):
    sweep_dir, output, jobs, _ = population_sweep
    for n_hidden in ("50", "64"):
        good, diverged = jobs[(n_hidden, "0.01")], jobs[(n_hidden, "100")]
        assert re.search(rf"\[#{good}\] step 10: val loss \d", output)
        # the job's one console line is its losses; which step it reports and with what overrides, its train.log
        assert re.search(
            r"\] - final report at step 20 \(.*optimizer\.lr=0\.01", (sweep_dir / good / "train.log").read_text()
        )
        assert re.search(rf"\[#{diverged}\] the loss became .* training diverged", output)
        for job in (good, diverged):
            log = (sweep_dir / job / "train.log").read_text()
            assert f"[#{job}]" not in log and "Seed set to" in log
        assert re.search(r"\] - step 10: val loss \d", (sweep_dir / good / "train.log").read_text())
        # the second member's data is the first's: a line for its train.log, not for the console
        second = max(good, diverged, key=int)
        assert "the population's copy" in (sweep_dir / second / "train.log").read_text()
    assert "the population's copy" not in output
    assert re.search(r"\[#\d+\] data: [\d,]+ items", output)  # each population's first member: the data line


@pytest.mark.slow
def test_every_member_is_a_job_dir_with_its_hydra_files_and_summary(population_sweep):
    sweep_dir, _, jobs, _ = population_sweep
    assert sorted(jobs.values(), key=int) == [str(n) for n in range(6)]
    for (n_hidden, lr), job in jobs.items():
        hydra_dir = sweep_dir / job / ".hydra"
        assert sorted(p.name for p in hydra_dir.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
        config = OmegaConf.load(hydra_dir / "config.yaml")
        assert config.model.n_hidden == int(n_hidden) and str(config.optimizer.lr) in (lr, f"{float(lr)}")
        assert OmegaConf.load(hydra_dir / "hydra.yaml").hydra.job.num == int(job)
        if lr == "0.01":
            assert job_summary(sweep_dir, job)["output_dir"] == str(sweep_dir / job)


@pytest.mark.slow
def test_the_sweep_table_has_one_row_per_job_and_the_failed_members_last(population_sweep):
    sweep_dir, _, jobs, _ = population_sweep
    rows = read_rows(sweep_dir)
    assert sorted(r["job"] for r in rows) == sorted(jobs.values())
    finished = [r for r in rows if not r["error"]]
    assert {(r["model.n_hidden"], r["optimizer.lr"]) for r in finished} == {("50", "0.01"), ("64", "0.01")}
    check_rows_match_jobs(sweep_dir, finished)
    failed = {(r["model.n_hidden"], r["optimizer.lr"]): r["error"] for r in rows[2:]}
    assert set(failed) == {(h, lr) for h in ("50", "64") for lr in ("100", "-1")}
    for n_hidden in ("50", "64"):
        assert failed[(n_hidden, "-1")] == "optimizer.lr must be a positive number below 1e30, got -1"
        assert "diverged" in failed[(n_hidden, "100")] and re.search(r"step \d+", failed[(n_hidden, "100")])
        for lr in ("100", "-1"):
            job_dir = sweep_dir / jobs[(n_hidden, lr)]
            assert json.loads((job_dir / "failure.json").read_text())["error"] == failed[(n_hidden, lr)]
            assert not (job_dir / "summary.json").exists()


@pytest.mark.slow
def test_hydra_callbacks_see_each_job_start_and_end_with_its_result(population_sweep):
    sweep_dir, _, jobs, events = population_sweep
    for job in jobs.values():
        mine = [e for e in events if e["num"] == int(job)]
        assert [e["event"] for e in mine] == ["start", "end"] and all(e["current"] == int(job) for e in mine)
        assert mine[0]["output_dir"] == str(sweep_dir / job)
        end = mine[1]
        assert end["overrides"] == [f"{k}={v}" if v else k for k, v in job_overrides(sweep_dir, job).items()]
        summary = sweep_dir / job / "summary.json"
        expected = json.loads(summary.read_text())["val_loss"] if summary.exists() else float("inf")
        assert end["return_value"] == expected


@pytest.mark.slow
def test_members_are_trained_together_by_the_engine(population_sweep):
    sweep_dir, _, jobs, events = population_sweep
    for n_hidden in ("50", "64"):
        assert job_summary(sweep_dir, jobs[(n_hidden, "0.01")])["population_size"] == 2
        # both members start before either ends: one population, not two runs one after the other
        members = {int(jobs[(n_hidden, lr)]) for lr in ("0.01", "100")}
        order = [e["event"] for e in events if e["num"] in members]
        assert order == ["start", "start", "end", "end"]


@pytest.mark.slow
def test_a_member_evaluates_on_its_own_by_the_engine(population_sweep, small_names):
    sweep_dir, _, jobs, _ = population_sweep
    job_dir = sweep_dir / jobs[("64", "0.01")]
    summary = job_summary(sweep_dir, jobs[("64", "0.01")])
    assert summary["population_size"] == 2
    ckpt = job_dir / "checkpoints" / "last.ckpt"
    evaluated = run_script("eval.py", f"ckpt_path={ckpt}", f"data.path={small_names}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"val_loss: {summary['val_loss']:.4f}" in evaluated.stdout


# ---------------------------------------------------------------------------------------------------------------------
# Optuna: each batch of n_jobs trials is one launch, grouped the same way.


@pytest.mark.slow
def test_optuna_trains_each_batch_of_trials_as_a_population_by_the_engine(tmp_path, small_names):
    needs("makemore_optuna_sweeper", "optuna")
    sweep_dir = tmp_path / "optuna"
    result = run_script(
        "train.py",
        "-m",
        "hparams_search=mlp_lr_population",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "~callbacks.progress_bar",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = launcher_lines(result.stdout + result.stderr)
    assert lines.count("2 jobs in 1 group(s), run one after another (sizes [2])") == 2
    assert "group 0: job(s) 0,1 as one population of 2" in lines
    assert "group 0: job(s) 2,3 as one population of 2" in lines  # the second batch: a launch of its own
    rows = read_rows(sweep_dir)
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    check_rows_match_jobs(sweep_dir, rows)
    assert all(job_summary(sweep_dir, r["job"])["population_size"] == 2 for r in rows)


@pytest.mark.slow
def test_the_same_population_sweep_run_again_continues_it_by_the_engine(tmp_path, small_names):
    """As under the basic launcher (sweep_policy.py): Ctrl-C, then the same command again resumes every interrupted
    member from its last.ckpt in one population; once more, and every finished job is kept, nothing retrained."""
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *POPULATION,
        "model=mlp",
        "optimizer.lr=0.02,0.05",
        "trainer.max_steps=3000",
        "trainer.val_check_interval=3000",
        "trainer.accelerator=cpu",
        "threads=1",
        "num_samples=1",
        "callbacks.last_checkpoint.every_seconds=0.5",
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for job in ("0", "1"):
        wait_for(sweep_dir / job / "checkpoints" / "last.ckpt", first)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "Traceback" not in err, err[-3000:]
    stopped = saved_step(sweep_dir / "0" / "checkpoints" / "last.ckpt")
    assert 0 < stopped < 3000 and not (sweep_dir / "0" / "summary.json").exists()

    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = launcher_lines(again.stdout + again.stderr)
    assert "group 0: job(s) 0,1 as one population of 2" in lines and not [line for line in lines if "refused" in line]
    for job in ("0", "1"):
        summary = job_summary(sweep_dir, job)
        assert (summary["steps"], summary["resumed_from_step"], summary["population_size"]) == (3000, stopped, 2)
        last = str(sweep_dir / job / "checkpoints" / "last.ckpt")  # its resume said once, by the member itself
        assert [line.split("] ", 1)[-1] for line in again.stdout.splitlines() if last in line] == [
            f"[#{job}] resumed from {last} at step {summary['resumed_from_step']}"
        ], again.stdout[-3000:]
    finished = {job: (sweep_dir / job / "summary.json").read_bytes() for job in ("0", "1")}

    third = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    lines = launcher_lines(third.stdout + third.stderr)
    assert [line for line in lines if "earlier run" in line] == [
        f"job {job} finished in an earlier run of this sweep: kept (val_loss {job_summary(sweep_dir, job)['val_loss']})"
        for job in ("0", "1")
    ]
    assert not [line for line in lines if "group" in line]  # nothing left to group or train
    assert {job: (sweep_dir / job / "summary.json").read_bytes() for job in ("0", "1")} == finished
    assert sorted(r["job"] for r in read_rows(sweep_dir) if r["val_loss"]) == ["0", "1"]


# ---------------------------------------------------------------------------------------------------------------------
# scripts/benchmark_population.py end to end on tiny step counts (its timings are never asserted: noise here).


@pytest.mark.slow
def test_benchmark_times_one_run_and_the_sweep_and_says_how_its_jobs_trained(tmp_path, small_names):
    out = tmp_path / "benchmark.json"
    result = run_script(
        "scripts/benchmark_population.py",
        "--models",
        "mlp",
        "--steps",
        "20",
        "--points",
        "2",
        "--launchers",
        "population",
        "--json",
        str(out),
        f"data.path={small_names}",
        "~callbacks.diagnostics",
        "logger=none",
        "num_samples=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = json.loads(out.read_text())["runs"]
    rows = run["rows"]
    assert [(r["launcher"], r["jobs"], r["failed"], r["steps"]) for r in rows] == [
        ("one run", 1, 0, 20),
        ("population", 2, 0, 20),
    ]
    population = rows[1]
    assert sum(size * count for size, count in population["population_sizes"]) == 2
    assert population["x_one_run"] == pytest.approx(population["seconds"] / rows[0]["seconds"])
    assert [line.split("|")[4].strip() for line in result.stdout.splitlines()[2:]] == ["one run", "population"]


@pytest.mark.slow
def test_each_group_is_one_submitit_job_with_the_same_records_as_here(tmp_path, small_names):
    """hydra/launcher=population_slurm, on submitit's local executor (the SLURM path without a cluster:
    tests/test_population_slurm.py runs it on a real one): two groups, two submitit jobs, each member its job dir,
    summary.json and row, as the population launcher gives them in its own process."""
    pytest.importorskip("submitit", reason="needs the submitit extra: pip install -e '.[submitit]'")
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=population_slurm",
        "hydra.launcher.submitit.cluster=local",
        "~callbacks.progress_bar",
        "~callbacks.diagnostics",
        "model=mlp,bigram",
        "optimizer.lr=0.1,0.2",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    submitted = re.findall(r"job\(s\) (\d,\d): local job (\d+)", output)
    assert [jobs for jobs, _ in submitted] == ["0,1", "2,3"]
    for job in "0123":
        summary = job_summary(sweep_dir, job)
        assert summary["population_size"] == 2 and summary["steps"] == 20
        assert (sweep_dir / job / ".hydra" / "overrides.yaml").is_file()
    logs = {p.parent.name for p in (sweep_dir / ".submitit").glob("*/*_log.out")}
    assert logs == {job_id for _, job_id in submitted}  # each group trained in its own submitit job
    check_rows_match_jobs(sweep_dir, read_rows(sweep_dir))


def early_stopping_sweep(sweep_dir: Path, data: Path, *overrides: str) -> list[str]:
    """A population sweep whose members stop early when their val loss stalls (Lightning's EarlyStopping)."""
    return [
        "-m",
        *POPULATION,
        "model=mlp",
        "model.n_hidden=16",
        "callbacks=[default,early_stopping]",
        "~callbacks.diagnostics",
        "logger=none",
        "trainer.max_steps=3000",
        "trainer.val_check_interval=100",
        "threads=1",
        "trainer.accelerator=cpu",
        "num_samples=1",
        f"data.path={data}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


@pytest.mark.slow
def test_a_member_whose_peer_stopped_early_resumes_alone_from_its_member_checkpoint(tmp_path, small_names):
    """Job 0 (lr=1e-9) stops early, job 1 trains on; Ctrl-C; the printed command runs the sweep again: job 0 is kept,
    job 1 is the only one left to train, and resumes from its population member's checkpoint (no Lightning loop
    state, which a run cannot resume) as a population of one, instead of failing."""
    sweep_dir = tmp_path / "sweep"
    args = early_stopping_sweep(
        sweep_dir, small_names, "optimizer.lr=1e-9,0.1", "callbacks.last_checkpoint.every_seconds=0.5"
    )
    proc = start_train_py(*args)
    wait_for(sweep_dir / "0" / "summary.json", proc, timeout=180)
    wait_for(sweep_dir / "1" / "checkpoints" / "last.ckpt", proc, timeout=60)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if "Resume with:" in line]
    stopped = saved_step(sweep_dir / "1" / "checkpoints" / "last.ckpt")
    assert 0 < job_summary(sweep_dir, "0")["steps"] <= stopped < 3000
    resume = shlex.split(line.split("Resume with: ", 1)[1])
    assert resume[:2] == ["python", str(ROOT / "train.py")] or resume[1].endswith("train.py")
    again = run_script("train.py", *resume[2:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "population of 1" in again.stdout + again.stderr
    summary = job_summary(sweep_dir, "1")
    assert summary["resumed_from_step"] == stopped < summary["steps"] <= 3000  # (it may stop early too)
    assert not (sweep_dir / "1" / "failure.json").exists()


@pytest.mark.slow
def test_ctrl_c_after_every_member_stopped_early_says_their_results_are_kept(tmp_path, small_names):
    """Both members stop early (lr too small to learn); a Ctrl-C once both summaries are written lands after the
    population (the launcher's between-jobs handler) or at its very end: either way one line that says the two
    jobs ended and keep their results, never "nothing was saved" or a resume from a step."""
    sweep_dir = tmp_path / "sweep"
    proc = start_train_py(*early_stopping_sweep(sweep_dir, small_names, "optimizer.lr=1e-9,2e-9"))
    wait_for(sweep_dir / "1" / "summary.json", proc, timeout=180)
    wait_for(sweep_dir / "0" / "summary.json", proc, timeout=10)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:  # the sweep had ended before the signal
        return
    assert proc.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(
        (
            "error: interrupted between sweep jobs; the 2 job(s) that ended keep their results.",
            "error: Ctrl-C after every member of the population of 2 had ended: their results are kept.",
        )
    ), stdout[-2000:] + stderr[-2000:]
    assert all(job_summary(sweep_dir, job)["steps"] < 3000 for job in ("0", "1"))


@pytest.mark.slow
@pytest.mark.parametrize("value", ["-1", "abc", "nan"])
def test_a_bad_memory_budget_refuses_the_sweep_in_one_line_before_any_job(tmp_path, value):
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        *POPULATION,
        "optimizer.lr=0.1,0.2",
        f"+population_max_memory_gb={value}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: population_max_memory_gb must be a positive number")
    )
    assert not sweep_dir.exists() or not list(sweep_dir.iterdir())  # no job dir, no multirun.yaml
