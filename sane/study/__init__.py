"""The human study of the seed's §3 as a tool: triplet quizzes that measure whether explanations help
people predict a similarity model (`sane study build`, `sane study score`, `sane study simulate`)."""

from sane.study.build import VARIANTS, build_study
from sane.study.explanations import LibrarySource, PairExplanation
from sane.study.participants import simulate_participant, write_simulated
from sane.study.score import format_score, read_answers, read_key, score_study, write_score

__all__ = ["VARIANTS", "LibrarySource", "PairExplanation", "build_study", "format_score", "read_answers",
           "read_key", "score_study", "simulate_participant", "write_score", "write_simulated"]
