"""Evaluation: pairwise preference accuracy, reports and plots."""

from alignkit.eval.pairwise import PairScores, pairwise_report, score_pairs

__all__ = ["PairScores", "pairwise_report", "score_pairs"]
