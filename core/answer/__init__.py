"""Answers with evidence: routing, rewriting, generation, citation alignment, table SQL."""
