"""The compiled flow core is built by every install (setup.py) and used by default."""

from flowscope.enricher import enriching
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable


def _enricher(native: bool) -> Enricher:
    resolver = LocalResolver(frozenset({"10.0.0.1"}), "node-a")
    return Enricher(
        resolver, SocketTable(100, 1.0), NameCache(1, 10, 100), Observers(60), native=native
    )


def test_the_compiled_core_is_built() -> None:
    # scripts/bootstrap installs a compiler and builds it: a run without it would test
    # only the Python path and measure the slow one.
    assert enriching.NATIVE_AVAILABLE


def test_native_is_the_default_and_can_be_turned_off() -> None:
    assert _enricher(True).native
    assert not _enricher(False).native
