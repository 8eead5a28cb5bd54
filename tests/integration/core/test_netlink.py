"""flowscope.core.netlink: pyroute2's IPRoute on its own thread, usable inside a running loop.

pyroute2 0.9's IPRoute, made or called where an event loop is running, raises "This event
loop is already running"; these tests run inside one (pytest-asyncio) on purpose.
"""

from __future__ import annotations

import threading

import pytest
from flowscope.core.netlink import Netlink
from pyroute2.netlink.exceptions import NetlinkError

NO_SUCH_INDEX = 2**31 - 1


async def test_requests_answer_inside_a_running_event_loop() -> None:
    with Netlink() as netlink:
        links = netlink.get_links()
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        addresses = [a.get_attr("IFA_ADDRESS") for a in netlink.get_addr(index=1)]
    assert names[1] == "lo"
    assert "127.0.0.1" in addresses


async def test_a_kernel_refusal_reaches_the_caller_as_netlink_error() -> None:
    with Netlink() as netlink:
        with pytest.raises(NetlinkError) as refused:
            netlink.get_links(NO_SUCH_INDEX)
        # The handle still works after a refused request.
        assert any(link["index"] == 1 for link in netlink.get_links())
    assert refused.value.code == 19  # ENODEV


async def test_close_ends_the_thread_and_later_calls_say_so() -> None:
    before = {t.name for t in threading.enumerate()}
    netlink = Netlink()
    assert any(t.name.startswith("netlink") for t in threading.enumerate()) and not any(
        n.startswith("netlink") for n in before
    )
    netlink.close()
    netlink.close()  # a second close does nothing
    assert not any(t.name.startswith("netlink") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="netlink get_links: the handle is closed"):
        netlink.get_links()
