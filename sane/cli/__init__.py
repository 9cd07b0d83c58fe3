"""The `sane` command, one package: the parser, the explanation and model commands
(:mod:`sane.cli.command`), the research commands (:mod:`sane.cli.research`), the serving and deploy
commands (:mod:`sane.cli.serving`, :mod:`sane.cli.deploy`) and the model options they share
(:mod:`sane.cli.model_args`)."""

from sane.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
