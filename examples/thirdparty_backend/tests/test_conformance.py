"""Every conformance scenario, as one test each, against this package's backend."""

from zart_conformance.suite import *  # noqa: F403
