"""The drain's direction memory across a TCP close: a FIN closes one direction only, so
the flow keeps its initiator through a half-close and a close that straddles a drain;
a RST, or a drain after the FIN's without the flow, ends it."""

from __future__ import annotations

from flowscope.collector import abi
from flowscope.collector.draining import DirectionMemory, Drainer

from tests.unit.collector.test_nat_pairing import TCP, Clock, Reader, entry

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
CLIENT, SERVER = "10.0.0.9", "10.0.0.2"  # the client is the key's higher end


def interval(
    first_from_client: bool, flags: int, *, syn: bool = False, up: int = 3, down: int = 50
) -> list[list[tuple[bytes, bytes]]]:
    """One drain's map: the connection's entry, its first packet the client's or not."""
    key, value = entry(CLIENT, 40000, SERVER, 80, TCP, flags=flags, syn=syn)
    v = list(abi.FLOW_VALUE.unpack(value))
    v[2:6] = [down, up, down * 1400, up * 100]  # lo (server) → hi (client), and back
    v[8] = abi.DIR_HI_LO if first_from_client else abi.DIR_LO_HI
    return [[(key, abi.FLOW_VALUE.pack(*v))]]


def oriented(*drains: list[list[tuple[bytes, bytes]]]) -> list[tuple[str, bool]]:
    """(source, initiator) of the connection's record in each drain that has one."""
    d = Drainer(Reader(*drains), Clock(), "n", 1e9, DirectionMemory(64))  # type: ignore[arg-type]
    return [(f.src, f.initiator) for _ in drains for f in d.drain().flows]


def test_a_half_closed_connection_keeps_its_initiator() -> None:
    """The client shuts down its sending side (FIN), the server streams on."""
    assert (
        oriented(
            interval(True, SYN | ACK | PSH, syn=True),
            interval(True, ACK | PSH | FIN),
            interval(False, ACK | PSH),
            interval(False, ACK | PSH),
            interval(False, ACK | FIN, up=1, down=1),
        )
        == [(CLIENT, True)] * 5
    )


def test_the_close_straddling_a_drain_keeps_the_initiator_then_is_forgotten() -> None:
    assert oriented(
        interval(True, SYN | ACK, syn=True),
        interval(True, ACK | FIN, up=1, down=1),  # the client's FIN
        interval(False, ACK | FIN, up=1, down=1),  # the server's FIN, the last ACK
        [],
        interval(False, ACK, up=0, down=1),  # a drain without it later: forgotten
    ) == [(CLIENT, True), (CLIENT, True), (CLIENT, True), (SERVER, False)]


def test_a_drain_without_the_flow_after_its_fin_forgets_it() -> None:
    assert oriented(
        interval(True, SYN | ACK | FIN, syn=True),
        [],
        interval(False, ACK, up=0, down=1),
    ) == [(CLIENT, True), (SERVER, False)]


def test_a_reset_forgets_at_once() -> None:
    assert oriented(
        interval(True, SYN | ACK, syn=True),
        interval(True, ACK | RST, up=1, down=1),
        interval(False, ACK, up=0, down=1),
    ) == [(CLIENT, True), (CLIENT, True), (SERVER, False)]
