"""The `pretrainer` command: one small function per verb.

Each verb composes the config (no TensorFlow), then imports its stage inside
the function body, so `pretrainer --help` and `--cfg` stay fast.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
from typing_extensions import Annotated

from pretrainer import errors
from pretrainer.config import DEFAULT_EXPERIMENT, Config, compose, list_experiments, to_yaml
from pretrainer.errors import Terminated, UserError

app = typer.Typer(
    name="pretrainer",
    help="Pretrain a backbone on unlabeled data, finetune it on a few labels, evaluate, deploy.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from pretrainer import __version__

        typer.echo(f"pretrainer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Pretrain a backbone on unlabeled data, finetune it on a few labels, evaluate, deploy."""

Overrides = Annotated[Optional[List[str]], typer.Argument(
    help="Hydra overrides KEY=VALUE (see the examples above); a=1,2 with -m sweeps.",
    show_default=False)]
ConfigName = Annotated[str, typer.Option(
    "--config", "-c", help="Experiment: configs/NAME.yaml (see `pretrainer configs`).")]
ConfigDir = Annotated[Optional[str], typer.Option(
    "--config-dir", help="Extra directory of configs, searched before the built-in ones.")]
RunDir = Annotated[Optional[str], typer.Option(
    "--run", help="Run directory to consume (default: the latest finished one).")]
PrintCfg = Annotated[bool, typer.Option(
    "--cfg", help="Print the resolved config and exit (also `--cfg job`).", metavar="")]
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.", metavar="")]
Multirun = Annotated[bool, typer.Option(
    "--multirun", "-m", help="Sweep: run every combination of comma-separated override "
                             "values (a=1,2 b=x,y) as its own run, then one table; with "
                             "hydra/sweeper=optuna and interval(), an Optuna search.",
    metavar="")]


def _execute(config: str, config_dir: Optional[str], overrides: Optional[List[str]],
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
        _note_ignored(verb, overrides, cfg)
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
        damage = _explain_damage(locals().get("cfg"), exc)
        if damage:
            error(damage)
            raise typer.Exit(2) from None
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        error(f"unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback)")
        raise typer.Exit(1) from None


# verbs that finetune, and the trainer keys a finetune.* key of the same name replaces
FINETUNING_VERBS = ("finetune", "pipeline", "study")
FINETUNE_OWNS = ("epochs", "batch_size")


def _note_ignored(verb: str, overrides: List[str], cfg: Config) -> None:
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


def _explain_damage(cfg: Optional[Config], exc: Exception) -> Optional[str]:
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


@app.command()
def collect(overrides: Overrides = None, config: ConfigName = DEFAULT_EXPERIMENT,
            config_dir: ConfigDir = None, cfg: PrintCfg = False, multirun: Multirun = False,
            debug: Debug = False) -> None:
    """Load the data source and write data/<dataset>/ (TFRecord splits + manifest.json).

    [bold]Example[/bold]: pretrainer collect -c folder_ae data.path=~/photos data.image_size=[64,64]
    """
    def body(c: Config):
        from pretrainer.stages import collect as stage

        return stage.run(c)

    _execute(config, config_dir, overrides, cfg, debug, body, multirun, "collect")


@app.command()
def pretrain(overrides: Overrides = None, config: ConfigName = DEFAULT_EXPERIMENT,
             config_dir: ConfigDir = None, cfg: PrintCfg = False, multirun: Multirun = False,
             debug: Debug = False) -> None:
    """Pretrain the backbone on the unlabeled split with the pretext task.

    [bold]Example[/bold]: pretrainer pretrain -c fashion_simclr trainer.epochs=20 trainer.batch_size=256
    """
    def body(c: Config):
        from pretrainer.stages import pretrain as stage

        return stage.run(c)

    _execute(config, config_dir, overrides, cfg, debug, body, multirun, "pretrain")


@app.command()
def finetune(overrides: Overrides = None, config: ConfigName = DEFAULT_EXPERIMENT,
             config_dir: ConfigDir = None, run: RunDir = None, cfg: PrintCfg = False,
             multirun: Multirun = False,
             debug: Debug = False) -> None:
    """Attach a head to the backbone (pretrained run, or finetune.init=scratch) and train it.

    [bold]Example[/bold]: pretrainer finetune -m finetune.learning_rate=1e-3,3e-4 finetune.mode=full,linear_probe
    """
    def body(c: Config):
        from pretrainer.stages import finetune as stage

        return stage.run(c, run=run)

    _execute(config, config_dir, overrides, cfg, debug, body, multirun, "finetune")


@app.command()
def evaluate(overrides: Overrides = None, config: ConfigName = DEFAULT_EXPERIMENT,
             config_dir: ConfigDir = None, run: RunDir = None, cfg: PrintCfg = False,
             compare: Annotated[Optional[List[str]], typer.Option(
                 "--compare", help="Evaluate runs (or finetune runs) to print side by side; "
                                   "repeat the option.")] = None,
             multirun: Multirun = False,
             debug: Debug = False) -> None:
    """Score a finetune run on the test split: metrics.json, report.md, confusion matrix.

    [bold]Example[/bold]: pretrainer evaluate --run runs/fashion_ae/finetune-20261201-120100 evaluate.explain=8
    """
    if compare:
        from pretrainer.console import error
        from pretrainer.report import compare_runs

        try:
            compare_runs(compare)
        except UserError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        return

    def body(c: Config):
        from pretrainer.stages import evaluate as stage

        return stage.run(c, run=run)

    _execute(config, config_dir, overrides, cfg, debug, body, multirun, "evaluate")


@app.command()
def deploy(overrides: Overrides = None, config: ConfigName = DEFAULT_EXPERIMENT,
           config_dir: ConfigDir = None, run: RunDir = None, cfg: PrintCfg = False,
           multirun: Multirun = False,
           debug: Debug = False) -> None:
    """Export a finetune run (SavedModel, LiteRT, ONNX) and check each against Keras.

    [bold]Example[/bold]: pretrainer deploy deploy=all deploy.quantize=int8
    """
    def body(c: Config):
        from pretrainer.stages import deploy as stage

        return stage.run(c, run=run)

    _execute(config, config_dir, overrides, cfg, debug, body, multirun, "deploy")


@app.command()
def pipeline(overrides: Overrides = None, config: ConfigName = DEFAULT_EXPERIMENT,
             config_dir: ConfigDir = None, cfg: PrintCfg = False, multirun: Multirun = False,
             debug: Debug = False) -> None:
    """collect, pretrain, finetune (pretrained and scratch), evaluate both, deploy.

    [bold]Example[/bold]: pretrainer pipeline -c cifar_ae trainer.epochs=5
    """
    def body(c: Config):
        from pretrainer.stages import pipeline as stage

        return stage.run(c)

    _execute(config, config_dir, overrides, cfg, debug, body, multirun, "pipeline")


@app.command()
def study(overrides: Overrides = None, config: ConfigName = DEFAULT_EXPERIMENT,
          config_dir: ConfigDir = None,
          run: Annotated[Optional[str], typer.Option(
              "--run", help="Pretrain run to reuse (default: pretrain once for the study).")]
          = None, cfg: PrintCfg = False, multirun: Multirun = False,
          debug: Debug = False) -> None:
    """Pretrained vs scratch across label fractions and seeds: study.json, study.md, a plot.

    [bold]Example[/bold]: pretrainer study 'study.fractions=[0.01,0.1]' study.seeds=3
    """
    def body(c: Config):
        from pretrainer.stages import study as stage

        return stage.run(c, pretrain_run=run)

    _execute(config, config_dir, overrides, cfg, debug, body, multirun, "study")


@app.command()
def serve(config: ConfigName = DEFAULT_EXPERIMENT, config_dir: ConfigDir = None,
          run: Annotated[Optional[str], typer.Option(
              "--run", help="Deploy run to serve (default: the experiment's model, marked by "
                            "pipeline, else the latest finished one).")] = None,
          host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes it.")]
          = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port (TF Serving's REST port is 8501).")]
          = 8501,
          workers: Annotated[int, typer.Option(help="Worker threads answering requests.")]
          = 8,
          debug: Debug = False) -> None:
    """Serve a deploy run's SavedModel over TF Serving's REST API (POST /v1/models/NAME:predict).

    [bold]Examples[/bold]: pretrainer serve -c fashion_ae, then from another shell, an image
    file of any size (decoded and resized in the model):

    curl -d '{"instances": [{"b64": "'"$(base64 -w0 shoe.png)"'"}]}' localhost:8501/v1/models/fashion_ae:predict


    A text model (pretrainer serve -c text_mlm):

    curl -d '{"instances": ["a line of text"]}' localhost:8501/v1/models/text_mlm:predict
    """
    if workers < 1:
        from pretrainer.console import error

        error(f"--workers must be >= 1, got {workers}")
        raise typer.Exit(2)

    def body(c: Config):
        from pretrainer.stages import serve as stage

        stage.run(run, c.paths.runs, c.experiment, host, port, workers)

    _execute(config, config_dir, [], False, debug, body)


@app.command()
def predict(input: Annotated[str, typer.Argument(
                help="An image folder, a text file (one example per line) or a .csv file.",
                show_default=False)],
            run: Annotated[Optional[str], typer.Option(
                "--run", help="Deploy or finetune run (default: the latest finetune run).")]
            = None,
            output: Annotated[str, typer.Option(
                "--output", "-o", help="Where to write: .csv, or .jsonl for JSON Lines.")]
            = "predictions.csv",
            batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per batch.")]
            = 256,
            config: ConfigName = DEFAULT_EXPERIMENT, config_dir: ConfigDir = None,
            debug: Debug = False) -> None:
    """Predict labels for every input: label, class name and probabilities per line.

    [bold]Example[/bold]: pretrainer predict photos/ --run runs/fashion_ae/deploy-... -o out.csv
    """
    def body(c: Config):
        from pretrainer.stages import predict as stage

        stage.run(c, input, run=run, output=output, batch_size=batch_size)

    _execute(config, config_dir, [], False, debug, body)


@app.command()
def embed(source: Annotated[Optional[str], typer.Argument(
              help="A split of the run's store (unlabeled, train, val, test) or an image "
                   "folder, text file or .csv.", show_default="test")] = None,
          run: Annotated[Optional[str], typer.Option(
              "--run", help="Pretrain or finetune run (default: the latest pretrain run).")]
          = None,
          output: Annotated[Optional[str], typer.Option(
              "--output", "-o", help="Output folder (default: RUN/embeddings/NAME/).")] = None,
          limit: Annotated[int, typer.Option("--limit", help="At most this many examples.")]
          = 10000,
          config: ConfigName = DEFAULT_EXPERIMENT, config_dir: ConfigDir = None,
          debug: Debug = False) -> None:
    """Write the backbone's embeddings (.npy + TSV) for TensorBoard's embedding projector.

    [bold]Example[/bold]: pretrainer embed test --run runs/fashion_ae/pretrain-...; then
    tensorboard --logdir runs/fashion_ae/pretrain-.../embeddings/test
    """
    def body(c: Config):
        from pretrainer.stages import embed as stage

        stage.run(c, source, run=run, output=output, limit=limit)

    _execute(config, config_dir, [], False, debug, body)


@app.command()
def doctor(overrides: Overrides = None, config: ConfigName = DEFAULT_EXPERIMENT,
           config_dir: ConfigDir = None,
           runs_dir: Annotated[Optional[str], typer.Option(
               "--runs-dir", help="Where runs are written (default: paths.runs).")] = None,
           debug: Debug = False) -> None:
    """Check versions, devices, strategy, precision, a training step, an export and disk.

    Takes the strategy overrides a training verb would get, e.g. on a TPU VM:
    [bold]pretrainer doctor trainer.strategy=tpu trainer.tpu=local[/bold]
    """
    result = {}

    def body(c: Config):
        from pretrainer.stages import doctor as stage

        result["ok"] = stage.run(runs_dir or c.paths.runs, c.trainer.strategy, c.trainer.tpu,
                                 c.trainer.connect_timeout)

    _execute(config, config_dir, overrides, False, debug, body)
    if not result.get("ok"):
        raise typer.Exit(1)


@app.command()
def init(name: Annotated[str, typer.Argument(help="Experiment name: every verb then takes -c NAME.")],
         data: Annotated[str, typer.Option(
             "--data", "-d", help="A folder of images (class folders label them), a folder "
                                  "of .txt files, or a CSV file.")],
         target: Annotated[Optional[str], typer.Option(
             help="CSV: the column to predict (omit for unlabeled rows).")] = None,
         text_split: Annotated[Optional[str], typer.Option(
             help="Text: file (one example per file), line, or a regex between examples.")] = None,
         out: Annotated[Optional[str], typer.Option(
             "--dir", help="Where to write NAME.yaml (default ./experiments, which every verb "
                           "searches).")] = None,
         force: Annotated[bool, typer.Option(help="Replace an existing NAME.yaml.")] = False,
         ) -> None:
    """Write an experiment file for your data, so every verb takes -c NAME.

    pretrainer init shoes --data ~/photos/shoes

    pretrainer init reviews --data reviews/ --text-split line

    pretrainer init houses --data houses.csv --target price
    """
    from pretrainer import scaffold
    from pretrainer.console import error, esc, info

    try:
        path, found = scaffold.write(name, data, out_dir=out, target=target,
                                     text_split=text_split, force=force)
    except UserError as exc:
        error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    info(f"wrote {esc(path)}: {esc(found)}")
    hint = "" if path.parent.resolve() == Path("experiments").resolve() else \
        f" --config-dir {path.parent}"
    info(esc(f"next: pretrainer pipeline -c {name}{hint}   (or collect, pretrain, finetune, "
             f"evaluate, deploy, serve, predict -c {name}{hint})"))



@app.command()
def configs(config_dir: ConfigDir = None) -> None:

    """List the experiments (configs/*.yaml) with their one-line descriptions."""
    from pretrainer.console import console, error, table

    try:
        found = list_experiments(config_dir)
    except UserError as exc:
        error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    rows = [[name + (" (default)" if name == DEFAULT_EXPERIMENT else ""), desc]
            for name, (desc, _) in found.items()]
    console.print(table("experiments (pretrainer <verb> --config NAME)",
                        ["name", "description"], rows))


def main() -> None:
    app(prog_name="pretrainer")


if __name__ == "__main__":
    sys.exit(main())
