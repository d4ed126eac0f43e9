"""The ``rlthf`` command: ``rlthf run``, ``rlthf label`` (``--config FILE``) and ``rlthf annotate import --run DIR FILE``.

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlthf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) RLTHF as a config says")
    run.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set selection.iterations=3 (repeatable)")

    label = sub.add_parser("label", help="label the shard with the configured LLM judge (section judge)")
    label.add_argument("--config", required=True, help="YAML config, e.g. configs/judge_smollm2.yaml")
    label.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value (repeatable)")

    annotate = sub.add_parser("annotate", help="human annotation through files")
    annotate_sub = annotate.add_subparsers(dest="annotate_command", required=True)
    imp = annotate_sub.add_parser("import", help="import human answers for the open annotation request")
    imp.add_argument("--run", required=True, help="the run directory (the config's output_dir)")
    imp.add_argument("answers", help='JSON lines: {"id": ..., "label": "a" | "b"}')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rlthf.annotators import AnnotationPending
    from rlthf.config import load_config

    try:
        if args.command == "run":
            from rlthf.loop import run

            run(load_config(args.config, args.overrides))
        elif args.command == "label":
            from rlthf.loop import label_shard

            label_shard(load_config(args.config, args.overrides))
        else:
            from rlthf.annotators import import_answers

            iteration, count = import_answers(args.run, args.answers)
            print(f"imported {count} answers for iteration {iteration}; resume with `rlthf run --config ...`")
    except AnnotationPending as pending:
        print(str(pending), file=sys.stderr)
        return EXIT_ANNOTATION_PENDING
    except (ValueError, FileNotFoundError) as err:  # ConfigError, InvalidRecord, InvalidAnswer among them
        print(f"rlthf: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
