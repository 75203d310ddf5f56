"""The `pretrainer` command: one small function per verb.

Each verb composes the config (no TensorFlow), then imports its stage inside
the function body, so `pretrainer --help` and `--cfg` stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from pretrainer.cli.running import execute
from pretrainer.config import DEFAULT_EXPERIMENT, Config, list_experiments
from pretrainer.errors import UserError

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

    execute(config, config_dir, overrides, cfg, debug, body, multirun, "collect")


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

    execute(config, config_dir, overrides, cfg, debug, body, multirun, "pretrain")


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

    execute(config, config_dir, overrides, cfg, debug, body, multirun, "finetune")


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

    execute(config, config_dir, overrides, cfg, debug, body, multirun, "evaluate")


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

    execute(config, config_dir, overrides, cfg, debug, body, multirun, "deploy")


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

    execute(config, config_dir, overrides, cfg, debug, body, multirun, "pipeline")


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

    execute(config, config_dir, overrides, cfg, debug, body, multirun, "study")


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

    execute(config, config_dir, [], False, debug, body)


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

    execute(config, config_dir, [], False, debug, body)


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

    execute(config, config_dir, [], False, debug, body)


@app.command("data-service")
def data_service(role: Annotated[str, typer.Argument(
                     help="dispatcher (one per cluster) or worker (one per CPU machine).",
                     show_default=False)],
                 port: Annotated[int, typer.Option(
                     help="Port to listen on (a worker's 0: any free one).")] = 5050,
                 dispatcher: Annotated[Optional[str], typer.Option(
                     help="worker: the dispatcher, grpc://HOST:PORT.")] = None,
                 host: Annotated[Optional[str], typer.Option(
                     help="worker: the name trainers reach it by (default: this host's).")]
                 = None,
                 work_dir: Annotated[Optional[str], typer.Option(
                     "--work-dir", help="dispatcher: keep its state here to survive a "
                                        "restart.")] = None,
                 debug: Debug = False) -> None:
    """Run a tf.data service dispatcher or worker: training verbs given
    data.service=grpc://HOST:PORT read their training examples from its workers.

    [bold]Example[/bold] (docs/architecture.md): pretrainer data-service dispatcher --port 5050,
    on each CPU machine pretrainer data-service worker --dispatcher grpc://HOST:5050, then
    pretrainer pretrain -c fashion_ae data.service=grpc://HOST:5050
    """
    def body(_: Config):
        from pretrainer.data import service

        if role == "dispatcher":
            service.run_dispatcher(port, work_dir)
        elif role == "worker":
            if not dispatcher:
                raise UserError("a worker needs --dispatcher grpc://HOST:PORT")
            service.run_worker(dispatcher, port, host)
        else:
            raise UserError(f"unknown role '{role}'. Choose from: dispatcher, worker")

    execute(DEFAULT_EXPERIMENT, None, [], False, debug, body)


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

    execute(config, config_dir, overrides, False, debug, body)
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
