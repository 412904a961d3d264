"""``zart-conformance bench``: the reference worker measured against its database's own
ceiling and a peer queue, side by side in one run (see README, Performance)."""
