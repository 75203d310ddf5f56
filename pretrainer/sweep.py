"""`-m/--multirun`: Hydra's sweep syntax over any training verb, one run per combination.

    pretrainer finetune -m finetune.learning_rate=1e-3,3e-4 finetune.mode=full,linear_probe

Sweeps are parsed by Hydra's own override parser (`a=1,2`, `choice(1,2)`, `range(1,4)`,
`glob(...)`), expanded into their cartesian product, and run one after another in this
process, each as its own run directory. The sweep's state lives in
runs/<experiment>/sweep-<verb>-<key>/sweep.json (key: the verb, config and overrides),
written after every combination: running the same command again skips the finished
combinations and resumes the interrupted one from its checkpoint. It ends with one
table comparing the runs, also written as sweep.md.

Why not Hydra's multirun launcher: pretrainer composes configs with Hydra's compose
API (no @hydra.main app), so the launcher and sweeper plugins do not apply; search
sweepers (Optuna's `interval(...)`) are refused with a message.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Callable, Optional

from pretrainer.errors import ConfigError

METRICS = ("accuracy", "f1_macro", "mse", "r2", "val_accuracy", "val_loss", "loss",
           "gain_points")


def expand(overrides: list[str]) -> tuple[list[list[str]], list[str]]:
    """(every combination of the overrides, the keys that vary)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"cannot parse the overrides: {str(exc).splitlines()[0]}") from exc
    axes, swept = [], []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception as exc:  # noqa: BLE001 - interval(): a search, not a list
                raise ConfigError(f"{o.input_line}: only listed sweeps run here (a=1,2, "
                                  f"choice(...), range(...)); interval() needs a search "
                                  f"sweeper, which pretrainer does not run") from exc
            axes.append([f"{key}={v}" for v in values])
            swept.append(key)
        else:
            axes.append([o.input_line])
    return [list(c) for c in itertools.product(*axes)], swept


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
    key = hashlib.sha256(json.dumps([verb, config, list(overrides)]).encode()).hexdigest()[:10]
    out = runs.experiment_dir(runs_root, experiment) / f"sweep-{verb}-{key}"
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "sweep.json"
    state = (json.loads(state_file.read_text()) if state_file.is_file() else
             {"verb": verb, "config": config, "overrides": list(overrides), "swept": swept,
              "combinations": []})
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
            runs.atomic_write_json(state_file, state)
    finally:
        runs.release_lock(out / runs.LOCK)
    rows = [done[tuple(c)] for c in combos]
    metric_keys = [k for k in dict.fromkeys(k for r in rows for k in r["metrics"])]
    header = [*swept, *metric_keys, "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        values = dict(o.split("=", 1) for o in r["overrides"])
        cells = [values.get(k, "") for k in swept]
        cells += [_num(r["metrics"].get(k)) for k in metric_keys]
        lines.append("| " + " | ".join([*cells, Path(r["run"]).name]) + " |")
    table = "\n".join(lines) + "\n"
    runs.atomic_write_text(out / "sweep.md", f"# {verb} sweep: {' '.join(overrides)}\n\n"
                           + table)
    state["table"] = {"columns": header, "rows": [line for line in lines[2:]]}
    runs.atomic_write_json(state_file, state)
    return out


def _num(v: Optional[float]) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)
