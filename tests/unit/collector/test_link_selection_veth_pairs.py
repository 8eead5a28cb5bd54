"""A veth pair with both ends in the collector's namespace: one end attached (the higher
index), whatever order the events come in; a pod's veth (peer elsewhere) as before."""

from __future__ import annotations

from flowscope.collector.link_watching import InterfaceSelection, LinkEvent

from tests.unit.collector.test_link_selection import watching


def test_only_the_higher_end_of_a_pair_in_this_namespace_is_attached() -> None:
    watcher, attacher = watching()
    # As the kernel announces a new pair: the peer (lower index) and the device before
    # they know each other, then the device with its peer.
    watcher.apply(LinkEvent(True, 4, "cilium_net", "veth"))
    watcher.apply(LinkEvent(True, 5, "cilium_host", "veth"))
    watcher.apply(LinkEvent(True, 5, "cilium_host", "veth", lower=4))
    watcher.apply(LinkEvent(True, 4, "cilium_net", "veth", lower=5))
    assert attacher.on == {5} and attacher.detached == [4]
    watcher.apply(LinkEvent(True, 7, "lxc1", "veth"))  # peer in a pod's namespace
    assert attacher.on == {5, 7}


def test_the_other_end_is_attached_when_the_higher_one_is_not() -> None:
    watcher, attacher = watching(InterfaceSelection(exclude=("lo", "cilium_host")))
    watcher.apply(LinkEvent(True, 4, "cilium_net", "veth", lower=5))
    watcher.apply(LinkEvent(True, 5, "cilium_host", "veth", lower=4))
    assert attacher.on == {4}
    watcher, attacher = watching()
    watcher.apply(LinkEvent(True, 4, "cilium_net", "veth", lower=5))
    watcher.apply(LinkEvent(True, 5, "cilium_host", "veth", lower=4))
    assert attacher.on == {5}
    watcher.apply(LinkEvent(False, 5, "cilium_host", "veth"))  # moved to another namespace
    watcher.apply(LinkEvent(True, 4, "cilium_net", "veth"))
    assert attacher.on == {4}
