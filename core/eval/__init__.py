"""Measuring retrieval: BEIR data, trec_eval metrics, the evaluation harness."""
