"""`cvtool sweep`: grid and TPE spaces parsed by train's own options, continuing a study, racing
workers on SQLite and PostgreSQL, pruning, lost and interrupted trials, the missing extra."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_image_folder
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from cvtool.cli import app  # noqa: E402
from cvtool.cli.options import OptionError  # noqa: E402
from cvtool.cli.sweep_cmd import SWEEP_EXTRA_HINT, TrainFlags  # noqa: E402
from cvtool.train.config import TrainConfig  # noqa: E402
from cvtool.train.sweep import HEARTBEAT_ENV, Param, decide, open_storage, parse_space  # noqa: E402

# The smallest net, two epochs, a few dozen 32×32 images: a trial takes about a second.
FAST = ["--arch", "mlp", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--val-split", "0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("sweep") / "shapes", per_class=12, seed=4)


def _study(out: Path, name: str | None = None, storage: str | None = None):
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    return optuna.load_study(study_name=name or out.name, storage=open_storage(url))  # the CLI's driver


def _trained(study) -> list:
    """Trials that trained (not skipped as duplicates)."""
    return [t for t in study.get_trials() if not t.user_attrs.get("skipped") and t.user_attrs.get("run")]


def _cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cvtool", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, **popen,
    )  # fmt: skip


# --- the space, parsed as train parses its options ------------------------------------------------


def test_space_values_are_parsed_by_the_train_command(data):
    flags = TrainFlags([str(data), "--epochs", "2"])
    grid = parse_space(
        ["lr=0.1,0.01", "batch-size=32,64", "hflip=true,false", "arch=cnn4,mlp"], [], flags.convert
    )
    assert grid.kind == "grid"
    assert [p.name for p in grid.params] == ["lr", "batch_size", "hflip", "arch"]
    assert grid.params[0].choices == (0.1, 0.01) and grid.params[1].choices == (32, 64)
    assert grid.params[2].choices == (True, False) and grid.params[3].choices == ("cnn4", "mlp")
    assert len(grid.combinations()) == 16

    tpe = parse_space([], ["lr=1e-4..1e-1:log", "dropout=0..0.5", "subset=2..8", "batch_size=32,64,128"],
                      flags.convert)  # fmt: skip
    lr, dropout, subset, bs = tpe.params
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-4, 0.1, True, False)
    assert (dropout.low, dropout.high, dropout.log, dropout.integer) == (0.0, 0.5, False, False)
    assert (subset.low, subset.high, subset.integer) == (2, 8, True)
    assert bs.choices == (32, 64, 128)
    # A whole-number range of a float option is a float range (dropout 0..1 is not {0, 1}).
    assert parse_space([], ["weight_decay=0..1"], flags.convert).params[0].integer is False

    for bad, message in [
        ((["optimizer=sgd,sgdd"], []), "'sgdd' is not one of"),
        ((["nosuch=1,2"], []), "cvtool train has no option --nosuch"),
        ((["batch_size=0,2"], []), "greater than or equal to 1"),
        ((["lr=0.1"], ["lr=1..2"]), "alternatives"),
        (([], ["subset=1.5..3"]), "valid integer"),
        (([], ["lr=0..1:log"]), "log range must start above 0"),
        (([], ["arch=a..b"]), "not one of"),
        (([], ["lr=0.1..0.01"]), "from low to high"),
        ((["arch"], []), "NAME=VALUES"),
        ((["out=a,b"], []), "not a setting to sweep"),
        ((["epochs=3,4"], []), "swept and also given"),
    ]:
        with pytest.raises((OptionError, ValueError), match=message):
            parse_space(*bad, flags.convert)


def test_every_train_option_reaches_the_training_config(data):
    # The pass-through parser maps each train parameter to a TrainConfig field: a new train option
    # that is neither a field nor in sweep_cmd's exceptions must fail here, not silently vanish.
    flags = TrainFlags([str(data), "--epochs", "3", "--optimizer", "sgd", "--hflip", "--val-dir", str(data)])
    cfg = flags.config({"lr": 0.05, "batch_size": 16}, Path("sw/trial-0"), "val_loss")
    assert isinstance(cfg, TrainConfig)
    assert (cfg.epochs, cfg.optimizer, cfg.hflip, cfg.lr, cfg.batch_size) == (3, "sgd", True, 0.05, 16)
    assert (cfg.val_dir, cfg.out, cfg.data) == (str(data), "sw/trial-0", str(data))
    assert cfg.monitor == "val_loss"  # best.pt is picked by the sweep's metric unless --monitor is given
    fields = {f for f in TrainConfig.__dataclass_fields__}
    unmapped = [n for n in flags.options if n not in fields | {"out", "resume", "list_archs", "labels"}]
    assert unmapped == []
    line = flags.command_line({"lr": 0.05, "hflip": False}, "val_loss")
    assert line == (f"cvtool train {data} --epochs 3 --optimizer sgd --hflip --val-dir {data} "
                    "--lr 0.05 --no-hflip --monitor val_loss --out runs/best")  # fmt: skip


def test_grid_param_suggests_its_values_in_optuna():
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"lr": [0.1, 0.01]}, seed=0))
    p = Param("lr", choices=(0.1, 0.01))
    study.optimize(lambda t: p.suggest(t), n_trials=2)
    assert sorted(t.params["lr"] for t in study.trials) == [0.01, 0.1]


# --- duplicates between racing workers ------------------------------------------------------------


def _t(number, state, params, **attrs):
    return SimpleNamespace(number=number, state=state, params=params, user_attrs=attrs)


def test_decide_lets_exactly_one_of_two_racing_trials_train():
    x, y = {"lr": 0.1}, {"lr": 0.01}
    R, C, F, P = TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED
    # Done, or failed with an error that would recur: skip.
    assert decide([_t(0, C, x)], 1, x, None) == "same values as trial 0 (COMPLETE)"
    assert decide([_t(0, F, x, error="diverged")], 1, x, None) == "same values as trial 0 (FAIL)"
    # Killed (FAIL, no error) or skipped trials do not count: train again.
    assert decide([_t(0, F, x), _t(1, P, x, skipped="dup")], 2, x, None) is None
    # Two racing trials with the same values: the lower number trains, the higher one skips...
    assert decide([_t(3, R, x)], 4, x, None) == "same values as trial 3, running"
    # ...and the lower one, seeing the higher still deciding, waits for it; once it has claimed
    # the values (it read before the lower one wrote them), the lower one skips instead.
    assert decide([_t(4, R, x)], 3, x, None) == "wait"
    assert decide([_t(4, R, x, claimed=True)], 3, x, None) == "same values as trial 4, running"
    assert decide([_t(4, R, x, skipped="dup")], 3, x, None) is None
    # Other values do not matter; a trial not showing its values yet does not either.
    assert decide([_t(0, R, y, claimed=True), _t(1, R, {})], 2, x, None) is None
    # --trials: a trial trains only while fewer lower-numbered trials count.
    done = [_t(0, C, y), _t(1, P, {"lr": 1.0}), _t(2, F, {"lr": 2.0})]  # the lost one does not count
    assert decide(done, 3, x, 3) is None
    assert decide([*done, _t(3, R, {"lr": 3.0})], 4, x, 3) == "the study has its 3 trials"


# --- one process ----------------------------------------------------------------------------------


def test_grid_runs_every_combination_once_and_continues(data, tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", str(data), "--out", str(out), "--grid", "lr=0.01,0.001", "--grid", "optimizer=adam,sgd",
            *FAST]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    study = _study(out)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    combos = [dict(lr=lr, optimizer=o) for lr, o in itertools.product((0.01, 0.001), ("adam", "sgd"))]
    assert sorted(map(json.dumps, (t.params for t in trials))) == sorted(map(json.dumps, combos))
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{t.number}" for t in trials]
    for t in trials:
        run = out / f"trial-{t.number}"
        assert (run / "best.pt").is_file() and (run / "run.json").is_file()
        # The trial's value is its best epoch's val_acc, as metrics.csv records it.
        rows = (run / "metrics.csv").read_text().splitlines()[1:]
        header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
        accs = [float(line.split(",")[header.index("val_acc")]) for line in rows]
        assert t.value == pytest.approx(max(accs))
        assert json.loads((run / "config.json").read_text())["lr"] == t.params["lr"]
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == study.best_trial.number and best["value"] == study.best_trial.value
    assert best["params"] == study.best_trial.params
    assert best["command"].startswith(f"cvtool train {data} --arch mlp --epochs 2")
    assert best["command"].endswith(
        f"--lr {best['params']['lr']!r} --optimizer {best['params']['optimizer']} --out runs/best"
    )
    assert "4 trial(s) trained by this process" in r.output
    assert best["command"] in r.output and "trial-3" in r.output and "COMPLETE" in r.output

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(_study(out).get_trials()) == 4
    assert "0 trial(s) trained by this process" in again.output
    assert json.loads((out / "best.json").read_text()) == best
    assert best["command"] in again.output

    # The same folder with another grid is another study: refused, nothing run.
    other = CliRunner().invoke(app, [*args[:5], "lr=0.1,0.01", *args[6:]])
    assert other.exit_code == 2 and "give another --out or --study" in other.output
    assert len(_study(out).get_trials()) == 4


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test's own ask() stands in for a worker
def test_a_duplicate_of_a_running_trial_is_skipped_not_trained(data, tmp_path):
    out = tmp_path / "sw"
    base = ["sweep", str(data), "--out", str(out), "--grid", "lr=0.01,0.003,0.001", *FAST]
    r = CliRunner().invoke(app, [*base, "--trials", "1"])
    assert r.exit_code == 0, r.output
    study = _study(out)
    first = study.get_trials()[0].params["lr"]
    taken, left = [v for v in (0.01, 0.003, 0.001) if v != first]
    # Another worker is training `taken` (claimed), and a second copy of it waits in the queue,
    # as racing workers can leave behind: this worker must skip it and train only `left`.
    study.enqueue_trial({"lr": taken})
    other = study.ask()
    other.suggest_categorical("lr", [0.01, 0.003, 0.001])
    other.set_user_attr("claimed", True)
    study.enqueue_trial({"lr": taken})
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 0, r.output
    trials = _study(out).get_trials()
    skipped = [t for t in trials if t.user_attrs.get("skipped")]
    assert len(skipped) == 1 and skipped[0].params == {"lr": taken} and skipped[0].state == TrialState.PRUNED
    assert skipped[0].user_attrs["skipped"] == f"same values as trial {other.number}, running"
    assert not (out / f"trial-{skipped[0].number}").exists()
    complete = [t.params["lr"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted([first, left])
    assert "1 still running elsewhere" in r.output


def test_prune_stops_a_trial_whose_curve_is_below_the_median(data, tmp_path):
    # lr 1e-9 cannot learn: its validation loss stays where it starts, while lr 3e-3 falls. With
    # one finished trial as the median, the flat one is pruned at the first epoch allowed.
    good, bad = 3e-3, 1e-9
    # GridSampler's order is seeded; list the values so the good one runs first.
    for values in ([good, bad], [bad, good]):
        probe = optuna.create_study(sampler=optuna.samplers.GridSampler({"lr": values}, seed=0))
        probe.optimize(lambda t, v=values: t.suggest_categorical("lr", v), n_trials=2)
        if probe.trials[0].params["lr"] == good:
            break
    out = tmp_path / "sw"
    r = CliRunner().invoke(app, [
        "sweep", str(data), "--out", str(out), "--grid", "lr=" + ",".join(map(repr, values)),
        "--metric", "val_loss", "--prune", "--prune-startup", "1", "--prune-warmup", "1",
        *FAST[:2], "--epochs", "5", *FAST[4:],
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    trials = _study(out).get_trials()
    by_lr = {t.params["lr"]: t for t in trials}
    assert by_lr[good].state == TrialState.COMPLETE and len(by_lr[good].intermediate_values) == 5
    pruned = by_lr[bad]
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs["pruned_at"] == 2
    assert sorted(pruned.intermediate_values) == [1, 2]  # stopped after epoch 2 of 5
    assert pruned.intermediate_values[2] > by_lr[good].intermediate_values[2]
    run = json.loads((out / f"trial-{pruned.number}" / "run.json").read_text())
    assert run["epochs_run"] == 2 and run["finished"] is False
    assert "pruned at epoch 2" in r.output
    assert json.loads((out / "best.json").read_text())["params"] == {"lr": good}


def test_tpe_search_stops_at_the_requested_trials_in_total(data, tmp_path):
    out = tmp_path / "sw"
    space = ["--search", "lr=1e-4..1e-1:log", "--search", "dropout=0..0.5", "--sampler-seed", "1"]
    args = ["sweep", str(data), "--out", str(out), *space, *FAST]
    assert CliRunner().invoke(app, [*args, "--trials", "2"]).exit_code == 0
    trials = _study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert 1e-4 <= t.params["lr"] <= 0.1 and 0 <= t.params["dropout"] <= 0.5
        cfg = json.loads((out / f"trial-{t.number}" / "config.json").read_text())
        assert (cfg["lr"], cfg["dropout"]) == (t.params["lr"], t.params["dropout"])
    more = CliRunner().invoke(app, [*args, "--trials", "3"])
    assert more.exit_code == 0, more.output
    assert len(_study(out).get_trials()) == 3  # until 3 have finished in the study in total
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--search needs --trials N or --timeout" in r.output


# --- several processes ----------------------------------------------------------------------------


def _race(data: Path, out: Path, extra: list[str]) -> list:
    """Two workers started together on one study; returns the study's trials."""
    args = ["sweep", str(data), "--out", str(out), "--grid", "lr=0.01,0.001", "--grid", "optimizer=adam,sgd",
            *extra, *FAST]  # fmt: skip
    procs = [_cli(*args) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stdout + stderr
        # Each ends on the same best, whichever worker trained it.
        assert "best: trial " in stdout and "the study has all its trials" in stdout
    return results


def _assert_each_combination_trained_once(study, out: Path) -> None:
    trained = _trained(study)
    combos = [dict(lr=lr, optimizer=o) for lr, o in itertools.product((0.01, 0.001), ("adam", "sgd"))]
    assert sorted(json.dumps(t.params, sort_keys=True) for t in trained) == sorted(
        json.dumps(c, sort_keys=True) for c in combos
    )  # each once: no combination trained twice, none missing
    assert all(t.state == TrialState.COMPLETE for t in trained)
    assert sorted(p.name for p in out.glob("trial-*")) == sorted(f"trial-{t.number}" for t in trained)


def test_two_workers_share_one_sqlite_study(data, tmp_path):
    out = tmp_path / "sw"
    _race(data, out, [])
    _assert_each_combination_trained_once(_study(out), out)


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a free local port (as the postgres user when root)."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (CI's .ci/run does)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver: pip install psycopg2-binary (dev extra)")
    root = Path(tempfile.mkdtemp(prefix="cvtool-pg-"))
    as_user: list[str] = []
    if os.getuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    db = root / "db"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    try:
        run(str(pg / "initdb"), "-D", str(db), "-A", "trust", "-U", "postgres")
        run(str(pg / "pg_ctl"), "-D", str(db), "-w", "-l", str(root / "log"),
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (db / "postmaster.pid").exists():
            subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(db), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(data, tmp_path, postgres_url):
    out = tmp_path / "sw"
    _race(data, out, ["--storage", postgres_url, "--study", "race"])
    assert not (out / "study.db").exists()
    _assert_each_combination_trained_once(_study(out, "race", postgres_url), out)


# --- lost and interrupted trials ------------------------------------------------------------------


def _start_long_trial(data: Path, out: Path, env: dict) -> tuple[subprocess.Popen, list[str]]:
    args = ["sweep", str(data), "--out", str(out), "--grid", "lr=0.01,0.001", *FAST[:2], "--epochs", "4",
            *FAST[4:]]  # fmt: skip
    proc = _cli(*args, env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("trial-0/metrics.csv")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the first trial ended before it could be stopped"
    return proc, args


def test_a_killed_trial_is_failed_by_the_next_run_and_trained_again(data, tmp_path):
    out = tmp_path / "sw"
    env = {HEARTBEAT_ENV: "1,2"}  # heartbeat every second; FAIL 2 s after the last one
    proc, args = _start_long_trial(data, out, env)
    proc.kill()  # SIGKILL: no cleanup, the trial stays RUNNING in the study
    proc.communicate(timeout=60)
    killed = _study(out).get_trials()[0]
    assert killed.state == TrialState.RUNNING
    time.sleep(3)  # past the grace period
    again = _cli(*args, env=env)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stdout + stderr
    assert "trial 0 " in stdout and "sent no heartbeat: marked FAIL" in stdout
    trials = _study(out).get_trials()
    assert trials[0].state == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in complete) == [0.001, 0.01]
    assert killed.params in [t.params for t in complete]  # its combination, trained again
    assert "lost (no heartbeat)" in stdout


def test_sigterm_fails_the_running_trial_and_exits_143(data, tmp_path):
    out = tmp_path / "sw"
    proc, args = _start_long_trial(data, out, {})
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == (
        "error: interrupted: the running trial is marked FAIL; run the same command to continue the study"
    )
    assert "Traceback" not in stderr
    trial = _study(out).get_trials()[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] == "SIGTERM"


# --- without the extra ----------------------------------------------------------------------------


def test_without_optuna_one_line_names_the_extra(data, tmp_path):
    code = (
        "import sys\nsys.modules['optuna'] = None\nfrom cvtool.cli.app import main\n"
        f"main(['sweep', {str(data)!r}, '--out', {str(tmp_path / 'sw')!r}, '--grid', 'lr=0.1,0.01'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {SWEEP_EXTRA_HINT}"]
    assert not (tmp_path / "sw").exists()
