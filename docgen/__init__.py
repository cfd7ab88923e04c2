"""The reference pages of the documentation, generated from the code so they cannot drift.

`python -m docgen` writes `docs/reference/*.md`; `python -m docgen --check` exits 1
when a committed page differs from what the code gives (tests/unit/test_docs_reference.py).
"""
