"""The local and the Ray executor on the same comparison; a killed sweep resumed; a plan for Table 7.

    .venv/bin/python benchmarks/executors.py [--seeds 2] [--samples 50] [--skip-sweep] [--skip-server]

1. **Same numbers, two executors.** One comparison (digits, BadNets; ours, basicFT, NAD; n = 50;
   2 seeds) run with the local executor and with the Ray executor (a local Ray instance with this
   machine's cores, 1 core per task), in one process, each on a fresh store, torch limited to 1
   thread in both (the Ray tasks use 1 thread each; a float reduction's order depends on the thread
   count). It checks that every run's metrics are identical and reports both wall times (the Ray
   one includes starting the instance and its workers) and the ratio.
2. **One tracking server.** The Ray comparison again, every task logging to an ``mlflow server``
   started on 127.0.0.1 (``--skip-server`` leaves it out): its runs counted on the server.
3. **A killed sweep, resumed.** ``bdtool sweep table7 --samples 5 --seeds 1`` on digits, SIGTERM
   after 5 defense runs have FINISHED, then the same command with ``--resume``: how many runs the
   second command took from the store and how many it ran (``--skip-sweep`` leaves it out).
4. **A plan for Table 7 on CIFAR-10.** The supplement's own per-run times (Table 7, seconds on its
   GPU, mean over its seeds) for 9 rows × 4 sizes, plus the measured Ray overhead per task from (1),
   scheduled longest-first onto N GPUs with one task per GPU: GPU-hours and the makespan.
Results: benchmarks/results/executors_digits.{md,json}.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from bdtool.core.experiment.executor import LocalExecutor  # noqa: E402
from bdtool.core.experiment.ray_executor import RayExecutor  # noqa: E402
from bdtool.core.experiment.rows import parse_rows  # noqa: E402
from bdtool.core.experiment.runner import CompareConfig, run_comparison  # noqa: E402
from bdtool.core.experiment.env import RunEnv  # noqa: E402
from bdtool.core.experiment.victim_spec import VictimSpec  # noqa: E402
from bdtool.core.interfaces import Knowledge  # noqa: E402
from bdtool.plugins import get_registries  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ["ours", "basicft", "nad"]

# Supplement Table 7 (CIFAR-10, ResNet-18): Time (s) per run, by row and n, as the paper reports it.
TABLE7_SECONDS: dict[str, dict[int, float]] = {
    "actFT": {5000: 3.96, 500: 2.81, 50: 3.01, 5: 2.44},
    "BaEraser": {5000: 623.3, 500: 138.88, 50: 21.35, 5: 20.23},
    "Ours(BDK)": {5000: 0.81, 500: 0.58, 50: 0.38, 5: 0.38},
    "Ours(BDK) +repair": {5000: 49.66, 500: 67.7, 50: 72.02, 5: 70.39},
    "basicFT": {5000: 71.56, 500: 73.34, 50: 71.59, 5: 71.49},
    "NAD": {5000: 114.9, 500: 117.69, 50: 111.91, 5: 118.7},
    "Ours(¬BDK)": {5000: 0.81, 500: 0.51, 50: 0.36, 5: 0.4},
    "Ours(¬BDK) +repair": {5000: 49.4, 500: 68.96, 50: 73.86, 5: 74.43},
    "Retraining": {47500: 423.56},
}


def _numbers(result: Any) -> list[tuple]:
    return [(o.label, o.n, o.seed, o.status, tuple(sorted((k, v) for k, v in o.metrics.items() if not math.isnan(v))))
            for o in result.outcomes]


def _env(uri: str) -> RunEnv:
    return RunEnv(registries=get_registries(), device=torch.device("cpu"), tracking_uri=uri, experiment="executors")


def _config(env: RunEnv, samples: int, seeds: int) -> CompareConfig:
    return CompareConfig(spec=VictimSpec(), rows=parse_rows(ROWS, Knowledge.TRIGGER, env.registries),
                         samples=[samples], seeds=seeds, log_models=False)


def same_numbers(samples: int, seeds: int, tmp: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    uri = f"sqlite:///{tmp}/same.db"
    env = _env(uri)
    from bdtool.core.experiment.victim import get_victim

    get_victim(VictimSpec(), env)  # trained once, before either timing: both reuse it
    start = time.perf_counter()
    local = run_comparison(_config(env, samples, seeds), env, LocalExecutor())
    local_s = time.perf_counter() - start
    executor = RayExecutor(get_registries, cpus_per_task=1.0)
    start = time.perf_counter()
    distributed = run_comparison(_config(env, samples, seeds), env, executor)
    ray_s = time.perf_counter() - start
    identical = _numbers(local) == _numbers(distributed)
    slots = executor._slots(torch.device("cpu"))
    task_s = sum(o.defense_time_s + (o.repair_time_s or 0.0) for o in distributed.outcomes)
    return {"rows": ROWS, "samples": samples, "seeds": seeds, "runs": len(local.outcomes), "identical": identical,
            "local_wall_s": local_s, "ray_wall_s": ray_s, "ratio_ray_to_local": ray_s / local_s,
            "defense_seconds_in_ray_tasks": task_s,
            # core-seconds the Ray run used beyond the local run's, per task
            "ray_overhead_per_task_s": max(0.0, (ray_s * slots - local_s) / len(distributed.outcomes)),
            "local_parent": local.parent_run_id, "ray_parent": distributed.parent_run_id,
            "table": [{"label": o.label, "seed": o.seed, "acc": o.result.acc, "asr": o.result.asr,
                       "score": o.metrics.get("score")} for o in distributed.outcomes], "executor": executor}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracking_server(executor: RayExecutor, samples: int, seeds: int, tmp: Path) -> dict[str, Any]:
    port = _free_port()
    env_vars = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--artifacts-destination", str(tmp / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_vars)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("mlflow server did not start")
                time.sleep(0.5)
        env = _env(uri)
        start = time.perf_counter()
        result = run_comparison(_config(env, samples, seeds), env, executor)
        wall = time.perf_counter() - start
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("executors")
        children = client.search_runs([exp.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
        return {"uri": uri, "wall_s": wall, "runs_on_server": len(children),
                "finished": sum(r.info.status == "FINISHED" for r in children),
                "victim_trained_in_ray_task": not result.victim.reused}
    finally:
        server.terminate()
        server.wait(30)


def killed_sweep(tmp: Path, kill_after: int = 5) -> dict[str, Any]:
    uri = f"sqlite:///{tmp}/sweep.db"
    cmd = [sys.executable, "-m", "bdtool.cli", "sweep", "table7", "--samples", "5", "--seeds", "1", "--device", "cpu",
           "--no-log-models", "--tracking-uri", uri, "--experiment", "sweep"]
    from mlflow.tracking import MlflowClient

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = MlflowClient(tracking_uri=uri)
    start = time.perf_counter()
    finished_at_kill = 0
    while proc.poll() is None:
        try:
            exp = client.get_experiment_by_name("sweep")
            runs = [] if exp is None else client.search_runs(
                [exp.experiment_id], "tags.`bdtool.kind` = 'defense' and attributes.status = 'FINISHED'")
        except Exception:  # noqa: BLE001 - the store is being created
            runs = []
        if len(runs) >= kill_after:
            finished_at_kill = len(runs)
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    proc.wait(120)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    resumed = subprocess.run(cmd + ["--resume", "--json"], capture_output=True, text=True)
    second_s = time.perf_counter() - start
    payload = json.loads(resumed.stdout)["comparisons"][0]
    exp = client.get_experiment_by_name("sweep")
    parents = client.search_runs([exp.experiment_id], "tags.`bdtool.kind` = 'comparison'")
    return {"command": " ".join(cmd[3:]), "first_exit": proc.returncode, "finished_when_killed": finished_at_kill,
            "first_wall_s": first_s, "resume_exit": resumed.returncode, "resume_wall_s": second_s,
            "runs_total": payload["runs_total"], "runs_taken_from_store": payload["runs_resumed"],
            "runs_run_on_resume": payload["runs_total"] - payload["runs_resumed"],
            "comparison_runs_in_store": len(parents), "same_parent": parents[0].info.run_id == payload["parent_run_id"]}


def table7_plan(overhead_s: float, seeds: int = 3, gpus: tuple[int, ...] = (1, 4, 8, 16)) -> dict[str, Any]:
    tasks = [seconds + overhead_s for sizes in TABLE7_SECONDS.values() for seconds in sizes.values()
             for _ in range(seeds)]
    plan = []
    for n_gpus in gpus:
        load = [0.0] * n_gpus
        heapq.heapify(load)
        for seconds in sorted(tasks, reverse=True):  # longest first onto the least-loaded GPU
            heapq.heappush(load, heapq.heappop(load) + seconds)
        plan.append({"gpus": n_gpus, "makespan_min": max(load) / 60})
    return {"tasks": len(tasks), "seeds": seeds, "gpu_hours": sum(tasks) / 3600, "overhead_per_task_s": overhead_s,
            "longest_task_s": max(tasks), "plan": plan}


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "executors_digits.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    same = results["same_numbers"]
    lines = ["# Executors: local vs Ray, resume, a plan for Table 7", "",
             f"`{results['command']}` on {results['machine']}.", "",
             "## Same comparison, both executors", "",
             f"Digits BadNets, rows {', '.join(same['rows'])}, n = {same['samples']}, {same['seeds']} seeds "
             f"({same['runs']} runs), torch 1 thread in both.", "",
             "| executor | wall s | metrics of every run |", "|---|---:|---|",
             f"| local | {same['local_wall_s']:.1f} | — |",
             f"| ray (local instance, 1 core per task) | {same['ray_wall_s']:.1f} | "
             f"{'identical to local' if same['identical'] else 'DIFFERENT from local'} |", "",
             f"Ratio Ray / local: {same['ratio_ray_to_local']:.2f}. Defense time inside the Ray tasks: "
             f"{same['defense_seconds_in_ray_tasks']:.1f} s; overhead per task (start-up of the instance and "
             f"workers included): {same['ray_overhead_per_task_s']:.1f} s.", ""]
    if "server" in results:
        server = results["server"]
        lines += ["## One tracking server", "",
                  f"The Ray comparison with `--tracking-uri {server['uri']}` (an `mlflow server` on 127.0.0.1): "
                  f"{server['runs_on_server']} runs on the server, {server['finished']} FINISHED, "
                  f"{server['wall_s']:.1f} s; the victim was "
                  f"{'trained in a Ray task' if server['victim_trained_in_ray_task'] else 'reused'}.", ""]
    if "sweep" in results:
        sweep = results["sweep"]
        lines += ["## A killed sweep, resumed", "",
                  f"`bdtool {sweep['command']}`: SIGTERM once {sweep['finished_when_killed']} defense runs had "
                  f"finished (exit {sweep['first_exit']}, {sweep['first_wall_s']:.1f} s); then the same command with "
                  f"`--resume` (exit {sweep['resume_exit']}, {sweep['resume_wall_s']:.1f} s): "
                  f"{sweep['runs_taken_from_store']} of {sweep['runs_total']} runs taken FINISHED from the store, "
                  f"{sweep['runs_run_on_resume']} run; {sweep['comparison_runs_in_store']} comparison run in the "
                  f"store (the killed one, reopened: {sweep['same_parent']}).", ""]
    plan = results["table7_plan"]
    lines += ["## Plan: the supplement's Table 7 on CIFAR-10", "",
              f"{plan['tasks']} tasks (9 rows × 4 sizes, retraining once, × {plan['seeds']} seeds) with the "
              f"supplement's own per-run GPU times plus the measured {plan['overhead_per_task_s']:.1f} s of Ray "
              f"overhead per task: {plan['gpu_hours']:.2f} GPU-hours; longest task {plan['longest_task_s']:.0f} s "
              "(BaEraser at n = 5000). Victims (one ResNet-18 per configuration) are not included.", "",
              "| GPUs | makespan (min) |", "|---:|---:|"]
    lines += [f"| {p['gpus']} | {p['makespan_min']:.1f} |" for p in plan["plan"]]
    (RESULTS / "executors_digits.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"command": "python benchmarks/executors.py " + " ".join(argv or sys.argv[1:]),
                               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                          f"load average {os.getloadavg()[0]:.1f} at the start"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        same = same_numbers(args.samples, args.seeds, tmp)
        executor = same.pop("executor")
        results["same_numbers"] = same
        print(f"same numbers: {same['identical']}; local {same['local_wall_s']:.1f} s, ray {same['ray_wall_s']:.1f} s")
        if not args.skip_server:
            results["server"] = tracking_server(executor, args.samples, args.seeds, tmp)
            print(f"server: {results['server']}")
        executor.close()
        if not args.skip_sweep:
            results["sweep"] = killed_sweep(tmp)
            print(f"sweep: {results['sweep']}")
    results["table7_plan"] = table7_plan(same["ray_overhead_per_task_s"])
    write(results)
    print((RESULTS / "executors_digits.md").read_text())
    return 0 if same["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
