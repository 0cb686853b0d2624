"""Hostile and broken checkpoint files for ckptsurgeon's safety tests.

Use ``tests.hostile.corpus.build_corpus(root, marker)`` (or ``hostile.corpus`` under
pytest's default rootdir-based imports) to write every case into a temporary folder.
"""
