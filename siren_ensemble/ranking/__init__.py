"""Ranking candidate responses by safety: the SIREN score of each pair, or an SRR ranker (Du et al.)."""

from .result import RankedCandidate, RankResult

__all__ = ["RankResult", "RankedCandidate"]
