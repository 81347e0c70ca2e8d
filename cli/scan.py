"""``bdtool scan``: is this model backdoored? The universal perturbation search
(``defenses/universal_search.py``; docs/method.md, "Unknown backdoor") on n clean samples, with no
trigger and no target: verdict, suspected target, score against its threshold, time."""

from __future__ import annotations

import time

import click

from bdtool.cli.main import emit_json, main, make_env, make_spec, report_orphans, say_plan
from bdtool.cli.options import INT_LIMIT, SEED, dry_run_option, env_options, victim_options, victim_source_option
from bdtool.cli.preflight import preflight


@main.command()
@victim_options
@victim_source_option
@env_options
@click.option("--samples", "-n", type=click.IntRange(min=2, max=INT_LIMIT), default=50, show_default=True,
              help="Clean samples (D_U) drawn from the unseen pool; the search sees nothing else.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Which draw of D_U (and the search's sampling).")
@dry_run_option
def scan(dataset, model, model_arg, normalize, attack, target, poison_rate, victim_seed, epochs, victim, device, data_dir, download,
         tracking_uri, experiment, json_, samples, seed, dry_run) -> None:
    """Say whether the model holds a backdoor, and which class it points at, from clean samples alone.

    \b
    Examples:
      bdtool scan                                  # the default digits victim (BadNets, target 0)
      bdtool scan --poison-rate 0                  # a clean victim: expect "no backdoor found"
      bdtool scan --victim model.safetensors --model small-cnn --dataset digits --json
    """
    from bdtool.core.errors import BdtoolError
    from bdtool.core.experiment.context import data_context
    from bdtool.core.experiment.victim import get_victim
    from bdtool.defenses.universal_search import UniversalSearchParams, detect_backdoor

    preflight(tracking_uri)
    env = make_env(device, data_dir, download, tracking_uri, experiment, quiet=json_)
    spec = make_spec(dataset, model, attack, target, poison_rate, victim_seed, epochs, source=victim, model_arg=model_arg,
                     normalize=normalize)
    from bdtool.core.experiment.components import load_dataset
    from bdtool.core.experiment.splits import split_test
    from bdtool.core.experiment.victim import check_victim_spec

    bundle = load_dataset(spec.dataset, env)
    check_victim_spec(spec, env, bundle)
    pool = len(split_test(bundle.test.y).pool_indices)
    if samples > pool:
        raise BdtoolError(f"--samples {samples}: the unseen pool holds only {pool} samples; use a smaller --samples")
    if dry_run:
        say_plan({"dry_run": True, "dataset": spec.dataset, "model": spec.model, "samples": samples, "seed": seed,
                  "pool": pool, "victim_kind": spec.victim_kind(), "source": spec.source},
                 f"a scan of the {spec.victim_kind()} {spec.dataset}/{spec.model} victim on {samples} of {pool} "
                 f"unseen samples (draw {seed})", json_)
        return
    report_orphans(tracking_uri)
    loaded = get_victim(spec, env, bundle=bundle)
    from bdtool.core.interfaces import Defense

    ctx = data_context(loaded.data, Defense, samples, seed, env.device, attack=None, target_class=None)
    params = UniversalSearchParams()
    started = time.perf_counter()
    detection = detect_backdoor(loaded.model, ctx.unlearn.x, ctx.unlearn.y, loaded.data.num_classes, params,
                                env.device, seed)
    seconds = time.perf_counter() - started
    result = {"backdoor": detection.detected, "suspected_target": detection.target, "family": detection.family,
              "score": detection.score, "threshold": detection.threshold, "seconds": seconds, "samples": samples,
              "seed": seed, "victim": loaded.config_hash, "gaps": detection.summary()["gaps"]}
    if json_:
        emit_json(result)
        return
    verdict = (f"backdoor found: target class {detection.target}" if detection.detected
               else f"no backdoor found (closest class {detection.target})")
    click.echo(f"{verdict}; score {detection.score:.2f} (threshold {detection.threshold:g}, {detection.family} "
               f"search), {samples} clean samples, {seconds:.2f} s")
