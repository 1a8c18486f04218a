"""Exception hierarchy of the attribution engine.

Every error raised on bad input is a subclass of ``AttributionError`` (itself a
``ValueError``), so callers such as the REST service can map the whole family to
a 4xx response and keep real bugs (any other exception) apart.
"""


class AttributionError(ValueError):
    """Base class for invalid requests to the engine."""


class SpecError(AttributionError):
    """A training spec, recipe name or override is invalid."""


class DataError(AttributionError):
    """Input data or data weights are invalid (wrong shape, NaN, infinite, negative)."""


class TestIndexError(AttributionError):
    """A test index is out of range or duplicated."""

    __test__ = False  # keeps pytest from collecting this class


class AdjointError(AttributionError):
    """The reverse pass cannot run, or produced NaN or infinite values."""
