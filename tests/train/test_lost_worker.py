"""A worker that dies mid-run is named, and the CLI turns it into exit 4 with one line (no traceback),
whichever error the death caused first (a surviving rank's failed collective, say)."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@ray.remote(num_cpus=0)
class Idle:
    def ping(self) -> str:
        return "ok"


def test_dead_workers_names_the_dead_one(local_ray):
    from m3ad_rl.train.rcrl.trainer import RCRLTrainer

    trainer = RCRLTrainer.__new__(RCRLTrainer)  # only the worker handles matter here
    trainer.actor = trainer.ref = None
    trainer.rollout = [Idle.remote(), Idle.remote()]
    ray.get([w.ping.remote() for w in trainer.rollout])
    assert trainer.dead_workers() == []
    ray.kill(trainer.rollout[1])
    _wait_dead(trainer.rollout[1])  # ray.kill is asynchronous; a node that died is dead already
    assert trainer.dead_workers() == ["rollout worker 1"]


def _wait_dead(actor, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.2)
    raise AssertionError("the killed actor still answers")


def test_cli_reports_a_lost_worker_in_one_line(monkeypatch, capsys):
    from m3ad_rl import cli
    from m3ad_rl.cli import train
    from m3ad_rl.core.errors import EXIT_LOST_WORKER, LostWorkerError

    def died(args):
        try:
            raise RuntimeError("[gloo] Connection closed by peer")  # what rank 0 sees when rank 1's node goes
        except RuntimeError as e:
            raise LostWorkerError("actor rank 1 died (RayTaskError)") from e

    monkeypatch.setattr(train, "cmd_train_rcrl", died)
    assert cli.main(["train", "rcrl", "--config", "x.yaml"]) == EXIT_LOST_WORKER
    err = capsys.readouterr().err
    assert "a Ray worker or node was lost (actor rank 1 died" in err and "Traceback" not in err


def test_a_too_small_local_ray_is_a_clear_error_not_a_hang(local_ray, monkeypatch):
    """train_sft then train_rcrl in one process: SFT's 2-CPU local Ray cannot place RCRL's workers."""
    from m3ad_rl.core.errors import UsageError
    from m3ad_rl.train.rcrl.cluster import check_local_cpus

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_local_cpus(None, 2)
    with pytest.raises(UsageError, match=r"has 2 CPUs; this RCRL run needs 4\.5"):
        check_local_cpus(None, 4.5)
