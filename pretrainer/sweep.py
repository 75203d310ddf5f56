"""`-m/--multirun`: Hydra's sweep syntax over any training verb, one run per combination.

    pretrainer finetune -m finetune.learning_rate=1e-3,3e-4 finetune.mode=full,linear_probe

Sweeps are parsed by Hydra's own override parser (`a=1,2`, `choice(1,2)`, `range(1,4)`,
`glob(...)`), expanded into their cartesian product, and run one after another in this
process, each as its own run directory. The sweep's state lives in
runs/<experiment>/sweep-<verb>-<key>/sweep.json (key: the verb, config and overrides),
written after every combination: running the same command again skips the finished
combinations and resumes the interrupted one from its checkpoint. It ends with one
table comparing the runs, also written as sweep.md.

Searches take the syntax of Hydra's Optuna sweeper (hydra-optuna-sweeper):

    pretrainer finetune -m hydra/sweeper=optuna hydra.sweeper.n_trials=12 \
        'finetune.learning_rate=tag(log, interval(1e-4, 1e-2))' \
        'finetune.label_smoothing=interval(0, 0.2)' finetune.mode=full,linear_probe

`interval(a, b)` is a uniform float (int when both ends are ints), `tag(log, interval())`
log-uniform, `range(a, b)` an int, a list or `choice()` categorical, as in the plugin.
Any interval, or `hydra/sweeper=optuna`, makes the sweep a search: Optuna's TPE sampler
(seed `hydra.sweeper.sampler.seed`, default 0) proposes `hydra.sweeper.n_trials` trials
(default 20) one after another, each its own run, scored by `hydra.sweeper.metric`
(default: val_accuracy, else accuracy, val_loss, loss; pretrainer's key, the plugin
scores a task's return value) in `hydra.sweeper.direction` (default: maximize for
accuracies, minimize for losses). A killed search continues: finished trials are told
to a fresh study from sweep.json and the interrupted one runs again first (resuming its
checkpoint).

Why not Hydra's multirun launcher and the plugin itself: pretrainer composes configs
with Hydra's compose API (no @hydra.main app), so launcher and sweeper plugins do not
apply, and hydra-optuna-sweeper pins optuna<3. Optuna itself (`pretrainer[optuna]`)
does the sampling here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Callable, Optional

from pretrainer import files
from pretrainer.errors import ConfigError

METRICS = ("accuracy", "f1_macro", "mse", "r2", "val_accuracy", "val_loss", "loss",
           "gain_points")


def expand(overrides: list[str]) -> tuple[list[list[str]], list[str]]:
    """(every combination of the overrides, the keys that vary)."""
    parsed = _parse(overrides)
    axes, swept = [], []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            if o.is_interval_sweep():
                raise ConfigError(f"{o.input_line}: interval() is a search; add "
                                  f"hydra/sweeper=optuna (see pretrainer.sweep)")
            values = list(o.sweep_string_iterator())
            axes.append([f"{key}={v}" for v in values])
            swept.append(key)
        else:
            axes.append([o.input_line])
    return [list(c) for c in itertools.product(*axes)], swept


def _sweep_dir(verb: str, config: str, overrides: list[str], runs_root: str, experiment: str,
               fresh: dict) -> tuple[Path, Path, dict]:
    """(runs/<exp>/sweep-<verb>-<key>, its sweep.json, the state: the saved one, or a new
    one with `fresh`'s fields). The key hashes the verb, config and overrides."""
    from pretrainer import runs

    key = hashlib.sha256(json.dumps([verb, config, list(overrides)]).encode()).hexdigest()[:10]
    out = runs.experiment_dir(runs_root, experiment) / f"sweep-{verb}-{key}"
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "sweep.json"
    state = (json.loads(state_file.read_text()) if state_file.is_file() else
             {"verb": verb, "config": config, "overrides": list(overrides), **fresh,
              "combinations": []})
    return out, state_file, state


def summary(result) -> dict:
    """Headline numbers of a stage's result: a run directory, or pipeline's dict."""
    if isinstance(result, dict):  # pipeline
        out = {"gain_points": result.get("gain_points")}
        for init, r in result.get("results", {}).items():
            m = r.get("metrics", {})
            key = "accuracy" if "accuracy" in m else "mse"
            out[f"{init}_{key}"] = m.get(key)
        return {k: v for k, v in out.items() if v is not None}
    path = Path(str(result))
    found: dict = {}
    if (path / "metrics.json").is_file():
        m = json.loads((path / "metrics.json").read_text())
        found.update({k: m[k] for k in METRICS if isinstance(m.get(k), (int, float))})
    manifest = path / "manifest.json"
    if manifest.is_file():
        final = json.loads(manifest.read_text()).get("final_metrics") or {}
        found.update({k: final[k] for k in METRICS if k in final and k not in found})
    return found


def run(verb: str, config: str, overrides: list[str], runs_root: str, experiment: str,
        run_one: Callable[[list[str]], object],
        echo: Callable[[str], None] = print) -> Path:
    """Run every combination (skipping those a killed sweep already finished)."""
    from pretrainer import runs

    combos, swept = expand(overrides)
    out, state_file, state = _sweep_dir(verb, config, overrides, runs_root, experiment,
                                        {"swept": swept})
    done = {tuple(c["overrides"]): c for c in state["combinations"] if c["status"] == "done"}
    runs.lock_run(out)  # one process per sweep
    try:
        for i, combo in enumerate(combos, 1):
            label = " ".join(o for o in combo if o.split("=", 1)[0] in swept)
            if tuple(combo) in done:
                echo(f"sweep {i}/{len(combos)}: {label}: finished earlier "
                     f"({Path(done[tuple(combo)]['run']).name})")
                continue
            echo(f"sweep {i}/{len(combos)}: {label}")
            t0 = time.perf_counter()
            result = run_one(combo)
            run_dir = result["deploy"] if isinstance(result, dict) else result  # pipeline: a dict
            entry = {"overrides": combo, "status": "done", "run": str(run_dir),
                     "seconds": round(time.perf_counter() - t0, 1), "metrics": summary(result)}
            state["combinations"] = [c for c in state["combinations"]
                                     if c["overrides"] != combo] + [entry]
            done[tuple(combo)] = entry
            files.atomic_write_json(state_file, state)
    finally:
        files.release_lock(out / runs.LOCK)
    rows = [done[tuple(c)] for c in combos]
    _write_table(out, state, verb, overrides, swept, rows)
    return out


def _write_table(out: Path, state: dict, verb: str, overrides: list[str], swept: list[str],
                 rows: list[dict], head: str = "") -> None:

    metric_keys = [k for k in dict.fromkeys(k for r in rows for k in r["metrics"])]
    header = [*swept, *metric_keys, "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        values = dict(o.split("=", 1) for o in r["overrides"])
        cells = [values.get(k, "") for k in swept]
        cells += [_num(r["metrics"].get(k)) for k in metric_keys]
        lines.append("| " + " | ".join([*cells, Path(r["run"]).name]) + " |")
    table = "\n".join(lines) + "\n"
    files.atomic_write_text(out / "sweep.md", f"# {verb} sweep: {' '.join(overrides)}\n\n"
                           + head + table)
    state["table"] = {"columns": header, "rows": [line for line in lines[2:]]}
    files.atomic_write_json(out / "sweep.json", state)


# --- searches (Optuna) -------------------------------------------------------------------

SWEEPER = "hydra.sweeper."
MAXIMIZE = ("accuracy", "f1_macro", "r2", "val_accuracy", "gain_points")
DEFAULT_METRICS = ("val_accuracy", "accuracy", "val_loss", "loss", "r2", "mse")


def is_search(overrides: list[str]) -> bool:
    """True when the overrides ask for a search rather than a grid."""
    if any(o.replace(" ", "") in ("hydra/sweeper=optuna", "hydra.sweeper=optuna")
           or o.startswith(SWEEPER) for o in overrides):
        return True
    return any(o.is_interval_sweep() for o in _parse(overrides))


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        return parser.parse_overrides(list(overrides))
    except HydraException as exc:
        for ov in overrides:  # which one, and the usual cause: a value that needs quotes
            try:
                parser.parse_overrides([ov])
            except HydraException:
                key, _, value = ov.partition("=")
                if value and not value.startswith(("'", '"')):
                    raise ConfigError(
                        f"cannot parse the override {ov}: quote a value with spaces, "
                        f"brackets or non-ASCII characters inside the override, e.g. "
                        f"\"{key}='{value}'\"") from exc
                raise ConfigError(f"cannot parse the override {ov}: "
                                  f"{str(exc).splitlines()[0]}") from exc
        raise ConfigError(f"cannot parse the overrides: {str(exc).splitlines()[0]}") from exc


def _settings(overrides: list[str]) -> tuple[dict, list[str]]:
    """(hydra.sweeper.* settings, the other overrides)."""
    settings, rest = {}, []
    for o in overrides:
        if o.replace(" ", "") in ("hydra/sweeper=optuna", "hydra.sweeper=optuna"):
            continue
        if o.startswith(SWEEPER):
            k, _, v = o[len(SWEEPER):].partition("=")
            settings[k] = v
        else:
            rest.append(o)
    return settings, rest


def fixed_overrides(overrides: list[str]) -> list[str]:
    """A search's overrides that do not vary (to compose its first config)."""
    return [o.input_line for o in _parse(_settings(overrides)[1]) if not o.is_sweep_override()]


def search_space(overrides: list[str]) -> tuple[dict, list[str], dict]:
    """(Optuna distributions by key, fixed overrides, hydra.sweeper settings)."""
    import optuna.distributions as od

    settings, rest = _settings(overrides)
    unknown = set(settings) - {"n_trials", "direction", "metric", "sampler.seed"}
    if unknown:
        raise ConfigError(f"hydra.sweeper.{sorted(unknown)[0]}: not a setting here; valid: "
                          f"n_trials, direction, metric, sampler.seed")
    space, fixed = {}, []
    for o in _parse(rest):
        key = o.get_key_element()
        if not o.is_sweep_override():
            fixed.append(o.input_line)
        elif o.is_interval_sweep():
            v = o.value()
            lo, hi, log = v.start, v.end, "log" in v.tags
            if isinstance(lo, int) and isinstance(hi, int):
                space[key] = od.IntDistribution(int(lo), int(hi), log=log)
            else:
                space[key] = od.FloatDistribution(float(lo), float(hi), log=log)
        else:
            values = list(o.sweep_string_iterator())
            ints = [int(x) for x in values if x.lstrip("-").isdigit()]
            if o.is_range_sweep() and len(ints) == len(values) > 1:
                space[key] = od.IntDistribution(ints[0], ints[-1], step=ints[1] - ints[0])
            else:
                space[key] = od.CategoricalDistribution(values)
    if not space:
        raise ConfigError("a search needs at least one swept key, e.g. "
                          "'finetune.learning_rate=tag(log, interval(1e-4, 1e-2))'")
    return space, fixed, settings


def _as_override(key: str, value) -> str:
    return f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}"


def _objective(metrics: dict, metric: Optional[str]) -> tuple[str, Optional[float]]:
    if metric is None:
        metric = next((m for m in DEFAULT_METRICS if m in metrics), None)
        if metric is None:
            raise ConfigError(f"the run reports none of {', '.join(DEFAULT_METRICS)}; set "
                              f"hydra.sweeper.metric to one of {', '.join(metrics) or '-'}")
    elif metric not in metrics:
        raise ConfigError(f"hydra.sweeper.metric={metric}: the run reports "
                          f"{', '.join(metrics) or 'no metrics'}")
    return metric, metrics[metric]


def search(verb: str, config: str, overrides: list[str], runs_root: str, experiment: str,
           run_one: Callable[[list[str]], object],
           echo: Callable[[str], None] = print) -> Path:
    """Optuna's TPE search, one run per trial; a killed search continues where it stopped."""
    from pretrainer import runs

    try:
        import optuna
    except ImportError:
        raise ConfigError("searches need Optuna: pip install 'pretrainer[optuna]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, fixed, settings = search_space(overrides)
    try:
        n_trials = int(settings.get("n_trials", 20))
        seed = int(settings.get("sampler.seed", 0))
    except ValueError as exc:
        raise ConfigError(f"hydra.sweeper: {exc}") from None
    if n_trials < 1:
        raise ConfigError("hydra.sweeper.n_trials must be at least 1")
    out, state_file, state = _sweep_dir(verb, config, overrides, runs_root, experiment, {
        "search": {"sampler": "TPESampler", "seed": seed, "n_trials": n_trials,
                   "metric": settings.get("metric"), "direction": settings.get("direction"),
                   "space": {k: repr(d) for k, d in space.items()}},
        "swept": list(space)})
    conf = state["search"]
    if conf["direction"] not in (None, "maximize", "minimize"):
        raise ConfigError(f"hydra.sweeper.direction={conf['direction']}: valid: maximize, "
                          f"minimize")

    def direction() -> str:
        return conf["direction"] or ("maximize" if conf["metric"] in MAXIMIZE else "minimize")

    study, study_direction = None, None
    runs.lock_run(out)  # one process per search
    try:
        trials = state["combinations"]
        pending = [t for t in trials if t["status"] != "done"]
        while (n_done := sum(t["status"] == "done" for t in trials)) < n_trials:
            if study_direction != direction():  # the first trial decides the metric
                # seeded by the trials already told, so a continued search does not
                # propose its first (random) trials again
                study, study_direction = _study(optuna, direction(), seed + n_done, space,
                                                trials), direction()
            if pending:  # the interrupted trial first: its run resumes from its checkpoint
                study.enqueue_trial(pending.pop(0)["params"])
            trial = study.ask(space)
            params = trial.params
            combo = fixed + [_as_override(k, params[k]) for k in space]
            echo(f"trial {n_done + 1}/{n_trials}: {' '.join(combo[len(fixed):])}")
            entry = {"overrides": combo, "params": params, "status": "running"}
            trials[:] = [t for t in trials if t["status"] == "done"] + [entry]
            files.atomic_write_json(state_file, state)
            t0 = time.perf_counter()
            result = run_one(combo)
            metrics = summary(result)
            conf["metric"], value = _objective(metrics, conf["metric"])
            entry.update(status="done", run=str(result["deploy"] if isinstance(result, dict)
                                                else result),
                         seconds=round(time.perf_counter() - t0, 1), metrics=metrics,
                         objective=conf["metric"], value=value)
            if study_direction == direction():
                study.tell(trial, value)
            files.atomic_write_json(state_file, state)
    finally:
        files.release_lock(out / runs.LOCK)
    done = [t for t in state["combinations"] if t["status"] == "done"]
    sign = -1 if direction() == "maximize" else 1
    done.sort(key=lambda t: sign * t["value"] if t["value"] == t["value"] else float("inf"))
    best = done[0]
    state["best"] = {"overrides": best["overrides"], "params": best["params"],
                     conf["metric"]: best["value"], "run": best["run"]}
    head = (f"{len(done)} Optuna TPE trials ({direction()} {conf['metric']}), best first. "
            f"Best: {' '.join(best['overrides'][len(fixed):])} -> {conf['metric']} "
            f"{_num(best['value'])} ({Path(best['run']).name})\n\n")
    _write_table(out, state, verb, overrides, list(space), done, head)
    return out


def _study(optuna, direction: str, seed: int, space: dict, trials: list[dict]):
    """A fresh study that has been told every finished trial."""
    study = optuna.create_study(direction=direction,
                                sampler=optuna.samplers.TPESampler(seed=seed))
    for t in trials:
        if t["status"] == "done" and t["value"] == t["value"]:  # NaN: a failed trial
            study.add_trial(optuna.trial.create_trial(
                params={k: _clip(space[k], v) for k, v in t["params"].items()},
                distributions=space, value=t["value"]))
    return study


def _clip(dist, value):
    """A value as its override wrote it (6 significant digits) may fall a hair outside."""
    if hasattr(dist, "low") and isinstance(value, float):
        return min(max(value, dist.low), dist.high)
    return value


def _num(v: Optional[float]) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)
