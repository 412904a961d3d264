"""``zart-conformance bench``: the reference worker measured against its database's own
ceiling and a peer queue, side by side in one run (see README, Performance)."""

# zart-ref is not on PyPI: the bench's extras come from a clone of the repository.
INSTALL_BENCH = "pip install -e '.[bench]' in the clone"
