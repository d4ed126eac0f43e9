"""The ``rlthf`` command: ``rlthf run``, ``rlthf label``, ``rlthf experiment``, ``rlthf tune`` (``--config FILE``) and ``rlthf annotate serve|export|import --run DIR``.

Exit status: 0 done, 2 a bad config or bad input (the message names the key or the record), 3 waiting for
human answers (the message says which file to hand out and how to resume).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_BAD_INPUT = 2
EXIT_ANNOTATION_PENDING = 3


def _config_command(sub, name: str, help: str, example: str, set_example: str, *,
                    default: str | None = None) -> argparse.ArgumentParser:
    command = sub.add_parser(name, help=help)
    command.add_argument("--config", required=default is None, default=default,
                         help=f"YAML config, e.g. {example}" + (f" (default: {default})" if default else ""))
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help=f"override a config value, e.g. --set {set_example} (repeatable)")
    return command


def _parser() -> argparse.ArgumentParser:
    from rlthf.config import DEFAULT_RUN_CONFIG

    parser = argparse.ArgumentParser(prog="rlthf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run_command = _config_command(sub, "run", "run (or resume) RLTHF as a config says", "configs/demo.yaml",
                                  "selection.iterations=3", default=str(DEFAULT_RUN_CONFIG))
    run_command.add_argument("--serve", action="store_true", help="file_queue: serve the annotation page and wait "
                             "for people's answers in place, instead of exiting with status 3 at each batch")
    run_command.add_argument("--host", default="127.0.0.1", help="--serve: address; not loopback needs --token")
    run_command.add_argument("--port", type=int, default=8765, help="--serve: port (default 8765)")
    run_command.add_argument("--token", default=os.environ.get("RLTHF_ANNOTATE_TOKEN"),
                             help="--serve: the page's secret (?token=...); default $RLTHF_ANNOTATE_TOKEN")
    run_command.add_argument("--lease-minutes", type=float, default=15.0, help="--serve: how long a pair shown "
                             "to one person is kept from the others")
    _config_command(sub, "label", "label the shard with the configured LLM judge (section judge)",
                    "configs/demo_judge.yaml", "data.max_pairs=200")
    experiment = _config_command(sub, "experiment", "baselines, selectors and ablations over seeds: one report",
                                 "configs/experiment_hh_rlhf.yaml", "'seeds=[0]'")
    experiment.add_argument("--methods", nargs="+", default=None, help="run only these methods (default: all)")
    _config_command(sub, "tune", "Ray Tune search of the alpha/beta schedules and the batch size (ASHA)",
                    "configs/tune_demo.yaml", "num_samples=4")
    _config_command(sub, "dpo", "DPO on Ray Train on a run's curated pairs (section dpo)", "configs/downstream.yaml",
                    "dpo.max_steps=10")
    _config_command(sub, "downstream", "the paper's table 2: DPO on AI-only, Random, Human and RLTHF labels, "
                    "win rates", "configs/downstream.yaml", "dpo.max_steps=10")
    winrate = _config_command(sub, "winrate", "win rate of a policy against a reference, judged in both orders",
                              "configs/downstream.yaml", "winrate.num_prompts=16")
    winrate.add_argument("--policy", default=None, help="policy model folder (default: <output_dir>/dpo/merged)")
    winrate.add_argument("--reference", default=None, help="reference model (default: dpo.model, dpo.gguf_file)")
    winrate.add_argument("--reference-gguf", default=None, help="a GGUF file inside --reference")
    winrate.add_argument("--out", default=None, help="output folder (default: <output_dir>/winrate)")
    export_rm = sub.add_parser("export-rm", help="a reward checkpoint as a Hugging Face sequence-classification model")
    export_rm.add_argument("checkpoint", help="an rlthf reward checkpoint, e.g. runs/demo/iterations/iter_5/checkpoint")
    export_rm.add_argument("out", help="the model folder to write")

    annotate = sub.add_parser("annotate", help="human annotation: the page, files, Label Studio, Argilla")
    annotate_sub = annotate.add_subparsers(dest="annotate_command", required=True)
    imp = annotate_sub.add_parser("import", help="import human answers for the open annotation request")
    imp.add_argument("--run", required=True, help="the run directory (the config's output_dir)")
    imp.add_argument("--format", choices=["jsonl", "labelstudio", "argilla"], default="jsonl",
                     help="jsonl: lines of {\"id\", \"label\"}; labelstudio: Label Studio's JSON export; argilla: "
                          "the folder of Dataset.to_disk (or its records.json)")
    imp.add_argument("answers", help='the answers: a jsonl file of {"id": ..., "label": "a" | "b"}, or as --format')
    serve = annotate_sub.add_parser("serve", help="serve the annotation page for the open request")
    serve.add_argument("--run", required=True, help="the run directory (the config's output_dir)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs --token")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    serve.add_argument("--token", default=os.environ.get("RLTHF_ANNOTATE_TOKEN"),
                       help="a secret people open the page with (?token=...); default $RLTHF_ANNOTATE_TOKEN")
    serve.add_argument("--lease-minutes", type=float, default=15.0,
                       help="how long a pair shown to one person is kept from the others")
    export = annotate_sub.add_parser("export", help="export the open request for Label Studio or Argilla")
    export.add_argument("--run", required=True, help="the run directory (the config's output_dir)")
    export.add_argument("--format", choices=["labelstudio", "argilla"], required=True,
                        help="labelstudio: OUT.json tasks and OUT.xml labeling config; argilla: folder OUT as "
                             "Dataset.to_disk writes it")
    export.add_argument("out", help="where the export goes")
    return parser


# --- one function a command: each takes the parsed arguments and imports what it needs when it runs ---------

def _config(args):
    from rlthf.config import load_config

    return load_config(args.config, args.overrides)


def _run(args) -> None:
    from rlthf.run.driver import make_annotator, run

    config = _config(args)
    if not args.serve:
        run(config)
        return
    from rlthf.annotation.served import PageAddress

    address = PageAddress(args.host, args.port, args.token, args.lease_minutes)
    with make_annotator(config, config.output_dir, serve=address) as annotator:  # one page for the whole run
        run(config, annotator=annotator)


def _label(args) -> None:
    from rlthf.run.driver import label_shard

    label_shard(_config(args))


def _experiment(args) -> None:
    from rlthf.studies.experiment import load_experiment, run_experiment

    config = load_experiment(args.config, args.overrides)
    run_experiment(config, methods=args.methods)
    print(f"report: {config.output_dir}/report.md")


def _tune(args) -> None:
    from rlthf.studies.tune import load_tune, run_tune

    run_tune(load_tune(args.config, args.overrides))


def _dpo(args) -> None:
    from rlthf.policy.dpo import run_dpo

    run_dpo(_config(args))


def _winrate(args) -> None:
    from rlthf.policy.winrate import run_winrate

    run_winrate(_config(args), policy=args.policy, reference=args.reference, reference_gguf=args.reference_gguf,
                out=args.out)


def _downstream(args) -> None:
    from rlthf.studies.downstream import run_downstream

    run_downstream(_config(args))


def _export_rm(args) -> None:
    from rlthf.reward.export import export_reward_model

    print(f"exported {export_reward_model(args.checkpoint, args.out)}")


def _annotate_serve(args) -> None:
    from rlthf.annotation.page import serve

    serve(args.run, host=args.host, port=args.port, token=args.token, lease_minutes=args.lease_minutes)


def _annotate_export(args) -> None:
    from rlthf.annotation.formats import export_request

    for line in export_request(args.run, args.format, args.out):
        print(line)


def _annotate_import(args) -> None:
    from rlthf.annotation.importing import import_answers

    iteration, count = import_answers(args.run, args.answers, format=args.format)
    print(f"imported {count} answers for iteration {iteration}; resume with `rlthf run --config ...`")


COMMANDS = {"run": _run, "label": _label, "experiment": _experiment, "tune": _tune, "dpo": _dpo,
            "winrate": _winrate, "downstream": _downstream, "export-rm": _export_rm,
            ("annotate", "serve"): _annotate_serve, ("annotate", "export"): _annotate_export,
            ("annotate", "import"): _annotate_import}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rlthf.annotation.annotators import AnnotationPending

    command = (args.command, args.annotate_command) if args.command == "annotate" else args.command
    try:
        COMMANDS[command](args)
    except AnnotationPending as pending:
        print(str(pending), file=sys.stderr)
        return EXIT_ANNOTATION_PENDING
    except (ValueError, FileNotFoundError) as err:  # ConfigError, InvalidRecord, InvalidAnswer among them
        print(f"rlthf: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
