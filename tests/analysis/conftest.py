"""Analysis tests compile many small programs: compile with most optimisations off."""

from tests.attributions.helpers import fast_compile  # noqa: F401
