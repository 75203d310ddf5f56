"""Running one verb: compose the config, run the stage (or a sweep of them), and turn
what can go wrong into one line and an exit code (2: the user's input, 1: ours, 130 /
143: interrupted or terminated). `pretrainer.cli` holds the verbs; each calls `execute`.
"""

from __future__ import annotations

import signal
from typing import Callable, List, Optional

import typer

from pretrainer import errors
from pretrainer.config import Config, compose, to_yaml
from pretrainer.errors import Terminated, UserError


def execute(config: str, config_dir: Optional[str], overrides: Optional[List[str]],
             print_cfg: bool, debug: bool, body: Callable[[Config], object],
             multirun: bool = False, verb: str = "") -> None:
    """Compose, then run `body(cfg)`; user errors become one red line and exit code 2.
    With `multirun`, once per combination of the swept overrides (pretrainer.sweep)."""
    from pretrainer.console import error, quiet_tensorflow

    _terminate_like_ctrl_c()
    overrides = list(overrides or [])
    if print_cfg and overrides and overrides[0] in ("job", "all", "hydra"):
        overrides = overrides[1:]  # Hydra's `--cfg job`: the job config is all there is here
    try:
        from pretrainer import sweep

        searching = bool(overrides) and sweep.is_search(overrides)
        if searching and not multirun:
            raise UserError("interval() and hydra.sweeper settings run a search; add -m "
                            "(--multirun)")
        combos, swept = (([sweep.fixed_overrides(overrides)], []) if searching else
                         sweep.expand(overrides) if overrides else ([[]], []))
        if len(combos) > 1 and not multirun:
            raise UserError(f"{', '.join(swept)}: several values sweep over {len(combos)} "
                            f"runs; add -m (--multirun) to run each combination")
        cfg = compose(config, combos[0], config_dir)
        if print_cfg:
            typer.echo(to_yaml(cfg), nl=False)
            return
        if cfg.tracking.backend == "mlflow":  # before any work, not when the run is done
            from pretrainer.tracking import require_mlflow

            require_mlflow()
        if debug:
            from pretrainer import console as _console

            _console.TF_NOISE = True
        elif verb != "collect":  # collect decodes in forked processes before TF loads
            quiet_tensorflow()
        note_ignored(verb, overrides, cfg)
        if multirun:
            _sweep(verb, config, config_dir, overrides, cfg, body, searching)
        else:
            body(cfg)
        if errors.stop_requested is not None:  # its Terminated was swallowed in TF's C++
            raise Terminated(signal.Signals(errors.stop_requested).name)
    except UserError as exc:
        _discard_unstarted()
        if debug:
            raise
        error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        _discard_unstarted()
        error("interrupted; finished artifacts are kept, the unfinished run has no DONE marker")
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    except Exception as exc:  # an unexpected failure: say what, keep the traceback for --debug
        _discard_unstarted()
        if debug:
            raise
        damage = explain_damage(locals().get("cfg"), exc)
        if damage:
            error(damage)
            raise typer.Exit(2) from None
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        error(f"unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback)")
        raise typer.Exit(1) from None


# verbs that finetune, and the trainer keys a finetune.* key of the same name replaces
FINETUNING_VERBS = ("finetune", "pipeline", "study")
FINETUNE_OWNS = ("epochs", "batch_size")


def note_ignored(verb: str, overrides: List[str], cfg: Config) -> None:
    """One line when an override on the command line does not reach the finetune stage:
    `trainer.epochs=3` while the config sets finetune.epochs (every shipped finetune
    config does) would otherwise train 30 epochs in silence."""
    from pretrainer.console import warn

    if verb not in FINETUNING_VERBS:
        return
    given = {ov.split("=", 1)[0].lstrip("+~") for ov in overrides if "=" in ov}
    for key in FINETUNE_OWNS:
        mine = getattr(cfg.finetune, key)
        if f"trainer.{key}" in given and f"finetune.{key}" not in given and mine:
            scope = "pretraining" if verb != "finetune" else "pretraining, not finetuning"
            warn(f"trainer.{key}={getattr(cfg.trainer, key)} applies to {scope}: the config "
                 f"sets finetune.{key}={mine}, which finetuning uses; override "
                 f"finetune.{key} to change it")


def _sweep(verb: str, config: str, config_dir: Optional[str], overrides: List[str],
           first: Config, body: Callable[[Config], object], searching: bool = False) -> None:
    from pretrainer import sweep
    from pretrainer.console import console, info

    out = (sweep.search if searching else sweep.run)(verb, config, overrides, first.paths.runs, first.experiment,
                    lambda combo: body(compose(config, combo, config_dir)),
                    echo=lambda line: info(f"[bold]{line}[/bold]"))
    console.print((out / "sweep.md").read_text(), markup=False, highlight=False,
                  soft_wrap=True)
    info(f"sweep done: {out / 'sweep.json'}")


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (kill, a scheduler's preemption) unwinds like Ctrl-C: the default action
    ended the process at once, leaving a run directory with nothing a rerun could use."""
    import threading

    def handler(signum, frame):
        errors.stop_requested = signum
        raise Terminated(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _discard_unstarted() -> None:
    """A stage that stopped before its first checkpoint leaves no empty run directory."""
    from pretrainer import runs

    runs.discard_unstarted()


def explain_damage(cfg: Optional[Config], exc: Exception) -> Optional[str]:
    """One line for failures caused by damaged files or a full disk, not by our code."""
    import errno

    full = ((isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
            # TensorFlow's own writes (checkpoints, TFRecord shards) raise its OpErrors
            or "No space left on device" in str(exc))
    if full:
        where = getattr(exc, "filename", None) or "while writing"
        return (f"the disk is full ({where}). Free some space and "
                f"run the same command again: finished artifacts are kept and a checkpointed "
                f"run resumes")
    if type(exc).__name__ == "DataLossError" or "corrupted record" in str(exc):
        if cfg is None:
            return None
        from pretrainer.data.store import store_path, verify

        store = store_path(cfg)
        try:
            bad = verify(store)
        except Exception:  # noqa: BLE001 - the store itself is unreadable
            bad = []
        named = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return (f"the dataset store {store} is damaged"
                + (f": {named} fail(s) the checksum in its manifest" if bad else "")
                + ". Run `pretrainer collect` with the same config to rebuild it")
    return None
