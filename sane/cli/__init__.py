"""The `sane` command, one package: the parser and the explanation commands (:mod:`sane.cli.main`),
the research commands (:mod:`sane.cli.research`), the serving commands (:mod:`sane.cli.serving`)
and the model options they share (:mod:`sane.cli.model_args`)."""

from sane.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
