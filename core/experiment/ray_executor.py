"""The Ray executor (``--executor ray``; docs/scale-out.md): every (row, n, seed) of a comparison
is one Ray task, and so is training a victim that the store does not have yet.

- The victim is trained (or taken from the store's cache) once per configuration, in a Ray task
  that asks for the same resources as a defense, and put once into Ray's object store; every
  defense task of the comparison reads it from there, never retraining it.
- Each task runs ``tasks.run_task``, the function the local executor runs, with the same seeds:
  the same numbers. It logs its nested run straight to the tracking store, under the comparison's
  parent run (by id), so every worker must reach the store: an ``http://`` tracking server, or a
  sqlite file on a file system every node shares.
- A task asks for ``gpus_per_task`` GPUs (fractions pack several onto one GPU) when the comparison
  runs on CUDA, and for ``cpus_per_task`` cores; torch in the worker uses that many threads.
- One progress line for the whole comparison: done / running / failed. Ctrl-C or a signal cancels
  every task, ends their runs KILLED (a task killed in its worker cannot end its own run), and
  propagates, as the local executor does.
- A task whose worker dies (out of memory, a crash) gives a FAILED outcome for that task alone,
  and its run is ended FAILED.

``ray`` is an optional dependency (``pip install 'bdtool[ray]'``); it is imported only here.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bdtool.core import tracking
from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError, first_line
from bdtool.core.experiment.progress import ProgressPrinter
from bdtool.core.experiment.tasks import RunOutcome, RunTask, TaskJob, run_task
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.victim import get_victim
from bdtool.core.experiment.victim_spec import Victim, VictimSpec


@dataclass(frozen=True)
class WorkerEnv:
    """What a worker needs to rebuild a ``RunEnv`` (a ``RunEnv`` holds the plugin registries and a
    progress printer, which stay in the driver)."""

    device_type: str
    data_dir: str | None
    download: bool
    tracking_uri: str
    experiment: str
    threads: int

    def run_env(self, registries: Any = None) -> RunEnv:
        import torch

        torch.set_num_threads(max(1, self.threads))
        tracking.setup_tracking(self.tracking_uri)
        # "cuda" is the GPU Ray gave this task (it sets CUDA_VISIBLE_DEVICES).
        return RunEnv(registries=registries, device=torch.device(self.device_type), data_dir=self.data_dir,
                      download=self.download, tracking_uri=self.tracking_uri, experiment=self.experiment,
                      progress=ProgressPrinter(enabled=False))


def absolute_tracking_uri(uri: str) -> str:
    """A relative sqlite path made absolute: a worker's working folder is not the driver's."""
    uri = tracking.resolve_tracking_uri(uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((Path.cwd() / Path(uri[len(prefix):]).expanduser()).resolve())
    return uri


def _victim_task(spec: VictimSpec, worker: WorkerEnv, registries_factory: Callable[[], Any]) -> Victim:
    env = worker.run_env(registries_factory())
    return get_victim(spec, env)


def _defense_task(victim: Victim, task: RunTask, worker: WorkerEnv, job: TaskJob) -> RunOutcome:
    return run_task(task, victim, worker.run_env(), job)


class RayExecutor:
    """Run a comparison's tasks on a Ray cluster (``address``: None starts a local instance with
    this machine's cores; ``auto`` or ``ray://HOST:PORT`` joins one)."""

    name = "ray"

    def __init__(self, registries_factory: Callable[[], Any], address: str | None = None,
                 gpus_per_task: float = 1.0, cpus_per_task: float = 1.0, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise BdtoolError("--executor ray needs Ray: pip install 'bdtool[ray]'") from None
        if gpus_per_task <= 0 or cpus_per_task <= 0:
            raise BdtoolError("--gpus-per-task and --cpus-per-task must be positive (fractions allowed)")
        self._ray = ray
        self.registries_factory = registries_factory
        self.gpus_per_task = gpus_per_task
        self.cpus_per_task = cpus_per_task
        self.address, self.num_cpus = address, num_cpus
        self._started = False

    def _ensure_started(self) -> None:
        """Start or join Ray on first use, so that a comparison refused by its checks starts nothing."""
        ray, address, num_cpus = self._ray, self.address, self.num_cpus
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.WARNING, "configure_logging": True}
            if address is None:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            else:
                kwargs["address"] = address
            handlers = _signal_handlers()
            try:
                with warnings.catch_warnings():  # Ray Client warns before it raises: one line is said below
                    warnings.simplefilter("ignore")
                    ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise BdtoolError(f"could not start or join Ray at {address or 'a local instance'}: "
                                  f"{first_line(exc)}") from None
            finally:
                _restore_signal_handlers(handlers)
            self._started = True

    def _options(self, device: Any) -> dict[str, Any]:
        gpus = self.gpus_per_task if device.type == "cuda" else 0
        return {"num_cpus": self.cpus_per_task, "num_gpus": gpus, "max_retries": 0}

    def _worker_env(self, env: RunEnv) -> WorkerEnv:
        return WorkerEnv(device_type=env.device.type, data_dir=env.data_dir, download=env.download,
                         tracking_uri=absolute_tracking_uri(env.tracking_uri), experiment=env.experiment,
                         threads=max(1, math.floor(self.cpus_per_task)))

    def get_victim(self, spec: VictimSpec, env: RunEnv, bundle: DataBundle) -> Victim:
        if spec.source is not None or ":" in spec.dataset:
            # the user's weights file or image folder is a path on this machine: read here, then
            # handed to the tasks through the object store like any victim
            return get_victim(spec, env, bundle=bundle)
        self._ensure_started()
        ray = self._ray
        remote = ray.remote(_victim_task).options(**self._options(env.device))
        env.progress.message(f"victim {spec.dataset}/{spec.model}/{spec.attack}: in a Ray task")
        try:
            victim = ray.get(remote.remote(spec, self._worker_env(env), self.registries_factory))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            if isinstance(cause, BdtoolError):
                raise cause from None
            raise
        env.progress.message(("reusing" if victim.reused else "trained") + f" victim {victim.config_hash} "
                             f"(run {victim.run_id}): ACC {victim.before.acc:.3f}, ASR {victim.before.asr:.3f}")
        return victim

    def run(self, tasks: list[RunTask], victim: Victim, env: RunEnv, job: TaskJob,
            done_before: int = 0, total: int | None = None) -> list[RunOutcome]:
        self._ensure_started()
        ray = self._ray
        total = done_before + len(tasks) if total is None else total
        if not tasks:
            env.progress("compare", total, total)
            return []
        victim_ref = ray.put(victim)
        worker = self._worker_env(env)
        remote = ray.remote(_defense_task).options(**self._options(env.device))
        refs = {remote.remote(victim_ref, task, worker, job): task for task in tasks}
        outcomes: dict[int, RunOutcome] = {}
        pending = list(refs)
        slots = self._slots(env.device)
        failed = 0
        try:
            while pending:
                running = min(len(pending), slots)
                env.progress(f"compare ({running} running, {failed} failed, ray)", done_before + len(outcomes), total)
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    task = refs[ref]
                    outcome = self._collect(ref, task, job)
                    if outcome.status != "FINISHED":
                        failed += 1
                        env.progress.message(f"  {task.row.label} n={task.n} seed={task.seed} failed: {outcome.error}")
                    outcomes[task.index] = outcome
        except KeyboardInterrupt:  # Ray may re-raise our Interrupted plainly: the CLI reads the pending signal
            self._cancel(pending, job)
            raise
        env.progress("compare", total, total)
        return [outcomes[task.index] for task in tasks]

    def _collect(self, ref: Any, task: RunTask, job: TaskJob) -> RunOutcome:
        """The task's outcome; a task whose worker died is FAILED, and so is its run."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            error = f"{type(exc).__name__}: {first_line(exc, 300)}"
            run_id = _end_open_runs(job, "FAILED", task=task, error=error)
            return RunOutcome(label=task.row.label, defense=task.row.defense_name, n=task.n, seed=task.seed,
                              knowledge=task.row.knowledge_label, status="FAILED", run_id=run_id, error=error)

    def _cancel(self, pending: list[Any], job: TaskJob) -> None:
        ray = self._ray
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already done or gone
                pass
        try:
            ray.wait(pending, num_returns=len(pending), timeout=10.0)
        except Exception:  # noqa: BLE001 - cancelled tasks resolve with an error
            pass
        _end_open_runs(job, "KILLED")

    def _slots(self, device: Any) -> int:
        resources = self._ray.cluster_resources()
        if device.type == "cuda":
            return max(1, int(resources.get("GPU", 0) / self.gpus_per_task))
        return max(1, int(resources.get("CPU", 1) / self.cpus_per_task))

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _signal_handlers() -> dict[int, Any]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
            if signum is not None}


def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
    """``ray.init`` replaces the driver's SIGTERM handler (with ``sys.exit``, and a C handler that
    aborts): put back the ones bdtool installed, so that a signal ends the runs KILLED and exits
    128 + N here as it does with the local executor (bdtool.cli.signals)."""
    import signal

    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)


def _end_open_runs(job: TaskJob, status: str, task: RunTask | None = None, error: str | None = None) -> str | None:
    """End the comparison's RUNNING child runs (only ``task``'s, when given) with ``status``; a
    task killed in its worker cannot end its own run. Returns the last run id ended."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([job.experiment_id], filter_string=(
        f"tags.mlflow.parentRunId = '{job.parent_run_id}' and attributes.status = 'RUNNING'"), max_results=50000)
    ended = None
    for run in runs:
        if task is not None and (run.data.tags.get(tracking.ROW_TAG) != task.row.label
                                 or run.data.params.get("n") != str(task.n)
                                 or run.data.params.get("seed") != str(task.seed)):
            continue
        if error:
            client.set_tag(run.info.run_id, tracking.ERROR_TAG, error[:5000])
        client.set_terminated(run.info.run_id, status)
        ended = run.info.run_id
    return ended
