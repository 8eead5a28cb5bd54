"""The cluster as the enricher knows it: objects from the informers, indexed by address.

The informers (``watching``) feed :meth:`Inventory.upsert` / :meth:`Inventory.delete` /
:meth:`Inventory.replace`; flows ask :meth:`Inventory.resolve`. Deleted objects stay
indexed for ``deleted_grace`` seconds (a pod's last flows are reported after it ended)
unless a live object claims the address first; :meth:`Inventory.sweep` forgets them. A
deleted object replaced within its grace by a new one of the same name (a StatefulSet's
pod, a re-created Service) keeps what the new one does not claim — its other addresses,
its container ids — for the rest of its grace; a pod replaced by another of the same name
(another uid) without a DELETED event (a re-LIST) is deleted by the replacement.

A running pod takes its addresses from any other pod (among running pods, the last
upserted wins). A pod not running — deleted, terminating (deletionTimestamp set: its
address may be released before its object goes) or finished (phase Succeeded or Failed:
its address stays in its status while it goes to a new pod) — takes only a free address,
or one an earlier version of itself holds: a pod holding it has had it since, whether it
still runs or not. A finished pod holds a free one only for ``deleted_grace`` after it was
first seen finished; a terminating one until it is deleted, then for its grace.

An address several Services, or several nodes, list (a shared load-balancer IP) is the
last indexed one's; when that one stops listing it, or is deleted, the last indexed of the
others takes it over (a live one first).

An address that a pod, a node and a Service may all hold (pods and nodes share a subnet
with the AWS VPC and Azure CNIs; a node's address may be a load-balancer IP) resolves to
the first of them, in that order, that is live — neither deleted nor a pod not running —
else the first of them: the live one's claim is the newer.

Resolved identities are cached per address (and per container id). A change drops only
the entries it can affect — a cluster's pods, slices and controllers change several times
a second, and rebuilding an identity costs tens of microseconds against a dictionary
probe for a cached one. What an identity reads, and so what must drop it:

- the pod, service or node indexed at its address, and that object's fields: an upsert
  or sweep of a pod, service or node drops the old and the new object's addresses (and
  a pod's container ids);
- the EndpointSlices listing the address (the pod's ``k8s.service.name``, from the
  endpoints there that are the pod's: see ``EndpointSlice.selects``): a slice change
  drops its old and new addresses, with the container entries built for them (a
  container's entry is built for each of its pod's addresses);
- for a pod, every controller its owner chain looks up: a controller change drops the
  entries of every pod whose chain passes through it (found through owner → referrer
  indexes);
- the end of a finished pod's grace drops the addresses it lets go of;
- a delete drops the addresses the deleted pod, node or Service shares with an object
  of another kind (the live one outranks it now), and those a deleted Service or node
  hands over to a live one of its kind listing them too.

An upsert of an object equal to the stored one (a status-only update: the slim objects
keep none of the status) that leaves every index as it was changes nothing and drops
nothing. A delete changes no identity but those above (deleted objects stay indexed for
their grace).

Identities are built ahead of the flows that ask for them (:meth:`Inventory.warm`): every
address an object brings or a change drops goes *cold*, and the enricher's warming task
builds the cold addresses that a pod, service or node holds, a slice at a time, once the
first LISTs are in. Building one costs ~5 µs of Python; the first flow of each of a
cluster's addresses used to pay it (a third of the flows' time after a start), now the
metadata change does, off the flows' way.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

from flowscope.core import subjects
from flowscope.core.records import LABEL_PREFIX, OWNER_KEYS
from flowscope.enricher.identities import Identity, external, identity
from flowscope.enricher.objects import EndpointSlice, Node, OwnerRef, Pod, Service, Workload

MAX_CACHED = 100_000  # identities cached (external addresses are unbounded)
MAX_WARM = MAX_CACHED // 2  # identities built ahead fill the cache up to this

Key = tuple[str, ...]
Obj = Pod | Service | Node | Workload | EndpointSlice
# Controller kind → the informer resource (store) holding it.
WORKLOAD_RESOURCES = {
    "ReplicaSet": "replicasets",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
    "Job": "jobs",
    "CronJob": "cronjobs",
}
RESOURCE_KINDS = {resource: kind for kind, resource in WORKLOAD_RESOURCES.items()}
# Controller kind → the API groups serving it: a kind of another group is a custom
# resource (a Volcano batch.volcano.sh Job, an OpenKruise apps.kruise.io StatefulSet).
# extensions served ReplicaSets, Deployments and DaemonSets before Kubernetes 1.16, and
# owner references written then keep it.
WORKLOAD_GROUPS = {
    "ReplicaSet": ("apps", "extensions"),
    "Deployment": ("apps", "extensions"),
    "StatefulSet": ("apps",),
    "DaemonSet": ("apps", "extensions"),
    "Job": ("batch",),
    "CronJob": ("batch",),
}
# The workload chains (DESIGN.md): a pod's controller of one of the kinds above, then
# only ReplicaSet → Deployment and Job → CronJob. Any other owner (a Node owning a static
# pod, an operator's custom resource owning a ReplicaSet) is not a workload: the chain
# stops below it, so k8s.workload.kind is always one of these kinds or Pod.
CHAIN_PARENTS = {"ReplicaSet": "Deployment", "Job": "CronJob"}


def object_key(resource: str, obj: Obj) -> Key:
    """The store key of an object: (namespace, name), or (kind, namespace, name)."""
    if isinstance(obj, Node):
        return ("", obj.name)
    if isinstance(obj, Workload):
        return (obj.kind, obj.namespace, obj.name)
    return (obj.namespace, obj.name)


def named_key(resource: str, namespace: str, name: str) -> Key:
    """The store key :func:`object_key` gives the object of ``resource`` so named: the
    key of an object known by its metadata alone (one whose new version did not convert)."""
    if resource == "nodes":
        return ("", name)
    kind = RESOURCE_KINDS.get(resource)
    return (namespace, name) if kind is None else (kind, namespace, name)


class Inventory:
    """Stores and address indexes of pods, services, nodes, slices and controllers."""

    def __init__(self, deleted_grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace = deleted_grace
        self._clock = clock
        self.synced: set[str] = set()  # resources whose first full LIST is applied
        self.became_ready = asyncio.Event()
        self.expected: set[str] = set()  # resources that must sync before ready
        self.stores: dict[str, dict[Key, Any]] = {}
        self._pod_ips: dict[str, Pod] = {}
        self._containers: dict[str, Pod] = {}
        self._service_ips: dict[str, Service] = {}
        self._node_ips: dict[str, Node] = {}
        # Address → every Service (node) listing it, by id, in the order indexed: the one
        # _service_ips (_node_ips) names, and those that take the address over when it
        # goes. Several may list one address (Services sharing a load-balancer IP, as
        # MetalLB's allow-shared-ip does; nodes behind one NAT given one ExternalIP).
        self._service_holders: dict[str, dict[int, Service]] = {}
        self._node_holders: dict[str, dict[int, Node]] = {}
        self._slice_ips: dict[str, dict[Key, EndpointSlice]] = {}  # pod ip → {slice key: slice}
        # (grace end, resource, key, deleted object), in time order: each is forgotten at
        # its grace end, whether still stored or replaced by a new one (buried)
        self._graveyard: deque[tuple[float, str, Key, Obj]] = deque()
        # (grace end, resource, key, pod) for each pod first seen finished, in time order
        self._finishing: deque[tuple[float, str, Key, Pod]] = deque()
        # Owner → referrer indexes, for the controller changes' invalidation: the owner's
        # store key (kind, namespace, name) → pods (by id: a buried pod and its successor
        # share a name) and controllers whose owner reference names it (whether or not
        # the owner is known).
        self._owned_pods: dict[Key, dict[int, Pod]] = {}
        self._owned_workloads: dict[Key, set[Key]] = {}
        # The identity caches. ``_cache`` is probed directly by the compiled flow core: a
        # plain dict, only ever changed in place, never holding a stale identity.
        self._cache: dict[str, Identity] = {}
        # bumped whenever _cache loses an entry: the compiled core keeps identities it
        # read from _cache beside its address table and trusts them while this holds
        self.generation = 0
        self._container_cache: dict[str, Identity | None] = {}
        self._cached_containers: dict[str, set[str]] = {}  # address → container ids cached
        # Addresses whose identity may need building (see warm), as an ordered set; set
        # while it holds any.
        self._cold: dict[str, None] = {}
        self.cold = asyncio.Event()

    # ------------------------------------------------------------ readiness

    @property
    def ready(self) -> bool:
        return self.expected <= self.synced

    def mark_synced(self, resource: str) -> None:
        self.synced.add(resource)
        if self.ready:
            self.became_ready.set()

    # ------------------------------------------------------------ changes

    def upsert(self, resource: str, obj: Obj) -> None:
        """An object was added or modified."""
        store = self.stores.setdefault(resource, {})
        key = object_key(resource, obj)
        old = store.get(key)
        if isinstance(obj, Pod) and obj.finished:
            self._finished(resource, key, old, obj)
        if old is not None:
            if old == obj and self._claims_all(old):
                # Replacing it would re-index an equal object in its own place: nothing
                # any identity reads would change. The stored (equal) object stays.
                return
            self._release(resource, key, old, obj)
        store[key] = obj
        self._index(obj)
        if old is not None and not isinstance(old, Workload):  # a controller: the same pods
            self._forget(old)
        self._forget(obj)

    def _finished(self, resource: str, key: Key, old: Obj | None, pod: Pod) -> None:
        """Stamp a finished pod with the time it was first seen finished (kept from the
        stored version of the same pod); its grace end is queued for :meth:`sweep`."""
        if isinstance(old, Pod) and old.uid == pod.uid and old.finished_at:
            pod.finished_at = old.finished_at
            return
        pod.finished_at = now = self._clock()
        self._finishing.append((now + self._grace, resource, key, pod))

    def _release(self, resource: str, key: Key, old: Obj, new: Obj) -> None:
        """The stored ``old`` gives way to ``new`` (same key): unindexed, or buried."""
        if isinstance(old, Pod) and isinstance(new, Pod) and old.uid != new.uid:
            # Another pod of that name: the old one is gone (its DELETED event was missed,
            # e.g. while a re-LIST replaced the store), and gets its grace.
            self.delete(resource, key)
        if old.deleted_at and not isinstance(old, Workload):
            # Buried: in its grace, it keeps the index entries ``new`` does not claim
            # (``new`` is indexed over it) until sweep() unindexes it. A controller is
            # indexed by its key only: the new one is all the chains read.
            return
        self._unindex(old)

    def delete(self, resource: str, key: Key) -> None:
        """An object was deleted: it stays resolvable for the grace period."""
        obj = self.stores.get(resource, {}).get(key)
        if obj is None or obj.deleted_at:
            return
        now = self._clock()
        obj.deleted_at = now
        self._graveyard.append((now + self._grace, resource, key, obj))
        # Deleted objects stay indexed: only an address that another kind's object holds
        # too is resolved otherwise now (to that one, when live: see _holder), and one a
        # live Service or node of the same kind lists too is that one's now.
        if isinstance(obj, Pod | Service | Node):
            self._forget_addresses(self._shared(obj.ips))
        if isinstance(obj, Service | Node):
            self._forget_addresses(self._hand_over(obj))

    def _hand_over(self, obj: Service | Node) -> list[str]:
        """Give the addresses a deleted Service or node is indexed at to a live one of its
        kind listing them too (the live claim is the newer); returns those addresses."""
        index, holders = self._listings(obj)
        moved = []
        for ip in obj.ips:
            if index.get(ip) is obj:
                successor = _successor(holders.get(ip, {}), obj)
                if successor is not None and not successor.deleted_at:
                    index[ip] = successor
                    moved.append(ip)
        return moved

    def _listings(self, obj: Service | Node) -> tuple[dict[str, Any], dict[str, dict[int, Any]]]:
        """The address index of ``obj``'s kind, and its every-holder index."""
        if isinstance(obj, Service):
            return self._service_ips, self._service_holders
        return self._node_ips, self._node_holders

    def replace(self, resource: str, objs: Iterable[Obj]) -> None:
        """A full LIST: upsert everything, delete (with grace) what is gone."""
        seen: set[Key] = set()
        for obj in objs:
            seen.add(object_key(resource, obj))
            self.upsert(resource, obj)
        for key in [k for k in self.stores.get(resource, {}) if k not in seen]:
            self.delete(resource, key)

    def sweep(self) -> int:
        """Forget deleted objects whose grace period is over, and let the addresses of
        finished pods whose grace is over go; returns how many objects were forgotten."""
        now = self._clock()
        forgotten = 0
        while self._graveyard and self._graveyard[0][0] <= now:
            _, resource, key, obj = self._graveyard.popleft()
            store = self.stores.get(resource, {})
            if store.get(key) is obj:
                del store[key]
            elif isinstance(obj, Workload):
                continue  # replaced: its key is the new controller's in every index
            # Stored or buried: only the index entries still its own are removed.
            self._unindex(obj)
            self._forget(obj)
            forgotten += 1
        while self._finishing and self._finishing[0][0] <= now:
            _, resource, key, pod = self._finishing.popleft()
            current = self.stores.get(resource, {}).get(key)
            self._let_go(pod.ips + current.ips if isinstance(current, Pod) else pod.ips, now)
        return forgotten

    def _let_go(self, addresses: Iterable[str], now: float) -> None:
        """Unindex those of ``addresses`` held by a finished pod whose grace is over."""
        gone = []
        for ip in addresses:
            holder = self._pod_ips.get(ip)
            if holder is not None and not self._may_hold(holder, now):
                del self._pod_ips[ip]
                gone.append(ip)
        self._forget_addresses(gone)

    def _may_hold(self, pod: Pod, now: float) -> bool:
        """Whether a pod's addresses may be indexed at all: not once it is finished for
        longer than the grace (its address is in its status for as long as it exists)."""
        return not pod.finished_at or now < pod.finished_at + self._grace

    @property
    def cached(self) -> int:
        """Identities built and cached."""
        return len(self._cache)

    def count(self, resource: str) -> int:
        return len(self.stores.get(resource, {}))

    def _claims_all(self, obj: Obj) -> bool:
        """Whether every index entry ``obj`` would write already holds it."""
        if isinstance(obj, Pod):
            if obj.finished:  # holds what nobody else does, for a while: index it afresh
                return False
            return all(self._containers.get(cid) is obj for cid in obj.container_ids) and (
                obj.host_network or all(self._pod_ips.get(ip) is obj for ip in obj.ips)
            )
        if isinstance(obj, Service):
            return all(self._service_ips.get(ip) is obj for ip in obj.ips)
        if isinstance(obj, Node):
            return all(self._node_ips.get(ip) is obj for ip in obj.ips)
        return True  # slices are indexed per slice, controllers not by address

    # ------------------------------------------------------------ invalidation

    def _forget(self, obj: Obj) -> None:
        """Drop the cached identities that ``obj`` (added, replaced or removed) can change."""
        if isinstance(obj, Pod):
            self._forget_pod(obj)
        elif isinstance(obj, Service | Node):
            self._forget_addresses(obj.ips)
        elif isinstance(obj, EndpointSlice):
            self._forget_addresses(obj.addresses)
        elif isinstance(obj, Workload):
            for pod in self._pods_below((obj.kind, obj.namespace, obj.name)):
                self._forget_pod(pod)

    def _forget_pod(self, pod: Pod) -> None:
        self._forget_addresses(pod.ips)
        for cid in pod.container_ids:
            self._forget_container(cid)

    def _forget_addresses(self, addresses: Iterable[str]) -> None:
        """Drop the identities of these addresses, and the container entries built for them
        (a container's identity reads the EndpointSlices of each of its pod's addresses)."""
        cold = self._cold
        for address in addresses:
            if self._cache.pop(address, None) is not None:
                self.generation += 1
            for cid in self._cached_containers.pop(address, ()):
                self._forget_container(cid)  # and its lines at its pod's other addresses
            cold[address] = None
        if cold:
            self.cold.set()

    def _forget_container(self, cid: str) -> None:
        """Drop one container entry, and its line in the address → container ids index."""
        found = self._container_cache.pop(cid, None)
        if found is not None:
            for address in _built_at(found):
                cids = self._cached_containers.get(address)
                if cids is not None:
                    cids.discard(cid)
                    if not cids:
                        del self._cached_containers[address]

    def _shared(self, addresses: Iterable[str]) -> list[str]:
        """Those of ``addresses`` that more than one of the pod, node and Service indexes
        hold (whose identity the liveness of each holder decides, see :meth:`_holder`)."""
        indexes = (self._pod_ips, self._node_ips, self._service_ips)
        return [ip for ip in addresses if sum(ip in index for index in indexes) > 1]

    def _pods_below(self, top: Key) -> list[Pod]:
        """Every pod whose owner chain looks ``top`` up (and a few more past the chain's
        depth limit, which costs only a rebuild)."""
        pods: list[Pod] = []
        seen = {top}
        todo = [top]
        while todo:
            key = todo.pop()
            pods += self._owned_pods.get(key, {}).values()
            for child in self._owned_workloads.get(key, ()):
                if child not in seen:  # owner references can loop
                    seen.add(child)
                    todo.append(child)
        return pods

    def _index(self, obj: Obj) -> None:
        if isinstance(obj, Pod):
            if not obj.host_network and self._may_hold(obj, self._clock()):
                running = _running(obj)
                for ip in obj.ips:
                    current = self._pod_ips.get(ip)
                    # A running pod owns its address over any other (the address may well
                    # be its now; among running pods, the last upserted). One not running
                    # takes only a free address or its own: another holder is newer.
                    if running or current is None or _same_pod(current, obj):
                        self._pod_ips[ip] = obj
            for cid in obj.container_ids:
                self._containers[cid] = obj
            if (owner := _owner_key(obj)) is not None:
                self._owned_pods.setdefault(owner, {})[id(obj)] = obj
        elif isinstance(obj, Workload):
            if (owner := _owner_key(obj)) is not None:
                self._owned_workloads.setdefault(owner, set()).add(object_key("", obj))
        elif isinstance(obj, Service | Node):
            index, holders = self._listings(obj)
            for ip in obj.ips:
                index[ip] = obj
                listing = holders.setdefault(ip, {})
                listing.pop(id(obj), None)  # indexed again: the last indexed
                listing[id(obj)] = obj
        elif isinstance(obj, EndpointSlice):
            key = (obj.namespace, obj.name)
            for ip in obj.addresses:
                self._slice_ips.setdefault(ip, {})[key] = obj

    def _unindex(self, obj: Obj) -> None:
        if isinstance(obj, Pod):
            for ip in obj.ips:
                if self._pod_ips.get(ip) is obj:
                    del self._pod_ips[ip]
            for cid in obj.container_ids:
                if self._containers.get(cid) is obj:
                    del self._containers[cid]
            if (owner := _owner_key(obj)) is not None:
                pods = self._owned_pods.get(owner)
                if pods is not None and pods.pop(id(obj), None) is not None and not pods:
                    del self._owned_pods[owner]
        elif isinstance(obj, Workload):
            if (owner := _owner_key(obj)) is not None:
                children = self._owned_workloads.get(owner)
                if children is not None:
                    children.discard(object_key("", obj))
                    if not children:
                        del self._owned_workloads[owner]
        elif isinstance(obj, Service | Node):
            _drop(*self._listings(obj), obj)
        elif isinstance(obj, EndpointSlice):
            key = (obj.namespace, obj.name)
            for ip in obj.addresses:
                slices = self._slice_ips.get(ip)
                if slices is not None and slices.get(key) is obj:
                    del slices[key]
                    if not slices:
                        del self._slice_ips[ip]

    # ------------------------------------------------------------ lookups

    def resolve(self, address: str) -> Identity:
        """The identity of an address: pod, node, service, or external, in that order,
        live objects first (see :meth:`_holder`)."""
        found = self._cache.get(address)
        if found is None:
            found = self._build(address)
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
                self.generation += 1
                for index in (self._pod_ips, self._service_ips, self._node_ips):
                    self._cold.update(dict.fromkeys(index))
                self.cold.set()
            self._cache[address] = found
        return found

    def warm(self, limit: int) -> list[str]:
        """Build up to ``limit`` cold addresses' identities; returns those addresses.

        Only once every resource is synced (before, most would be built again as the
        rest of the first LISTs arrive), only addresses a pod, service or node holds (an
        external address's identity is cheap, and there is no end to them), and only
        while the cache is under half full: past that, the rest are built when asked for,
        as a full cache is emptied (see :meth:`resolve`) and would be refilled at once.
        """
        if not self.ready:
            return []
        cold, cache = self._cold, self._cache
        built: list[str] = []
        while cold and len(built) < limit:
            if len(cache) >= MAX_WARM:
                cold.clear()
                break
            address = cold.popitem()[0]
            if address in cache or not (
                address in self._pod_ips or address in self._service_ips
                or address in self._node_ips
            ):  # fmt: skip
                continue
            self.resolve(address)
            built.append(address)
        if not cold:
            self.cold.clear()
        return built

    def by_container(self, container_id: str) -> Identity | None:
        """The pod owning a container id, with that container's name."""
        if container_id in self._container_cache:
            return self._container_cache[container_id]
        found = self._build_container(container_id)
        if len(self._container_cache) >= MAX_CACHED:
            self._container_cache.clear()
            self._cached_containers.clear()
        self._container_cache[container_id] = found
        if found is not None:
            for address in _built_at(found):
                self._cached_containers.setdefault(address, set()).add(container_id)
        return found

    def other_addresses(self, address: str) -> tuple[str, ...]:
        """The other addresses of the pod holding ``address`` that it (that pod, by uid)
        still holds: a dual-stack pod's names are learned for each of them."""
        pod = self._holder(address)
        if not isinstance(pod, Pod) or len(pod.ips) < 2:
            return ()
        held = self._holder
        return tuple(
            ip for ip in pod.ips
            if ip != address and isinstance(holder := held(ip), Pod) and holder.uid == pod.uid
        )  # fmt: skip

    def _build_container(self, container_id: str) -> Identity | None:
        """The container's identity at its pod's first address, with the identities at
        the others in ``elsewhere`` (each names the Services of its own address)."""
        pod = self._containers.get(container_id)
        if pod is None:
            return None
        container = pod.container_ids[container_id]
        if not pod.ips:
            return self._pod_identity(pod, "", container)
        found = self._pod_identity(pod, pod.ips[0], container)
        if len(pod.ips) > 1:
            found.elsewhere = {ip: self._pod_identity(pod, ip, container) for ip in pod.ips[1:]}
        return found

    def _holder(self, address: str) -> Pod | Node | Service | None:
        """The object an address is: the first of the pod, node and Service holding it that
        is live (neither deleted nor a pod not running), else the first of them. A live
        object's claim is the newer: the address of a pod that ended, or of a deleted
        node, may be a new node's or a load-balancer IP now.

        A node's address is the node's even when a live Service lists it as an external or
        load-balancer IP (k3s ServiceLB puts node addresses there): its hostNetwork pods
        are told apart by the container id only on a node identity. No ClusterIP is ever
        a node's address."""
        first: Pod | Node | Service | None = None
        for held in (self._pod_ips, self._node_ips, self._service_ips):
            holder = held.get(address)
            if holder is not None:
                if _live(holder):
                    return holder
                if first is None:
                    first = holder
        return first

    def _build(self, address: str) -> Identity:
        holder = self._holder(address)
        if isinstance(holder, Pod):
            container = holder.containers[0] if holder.containers else ""
            return self._pod_identity(holder, address, container)
        if isinstance(holder, Node):
            meta = {"k8s.node.name": holder.name}
            return identity("node", subjects.NODE_TOKEN, holder.name, address, meta)
        if isinstance(holder, Service):
            meta = {"k8s.namespace.name": holder.namespace, "k8s.service.name": holder.name}
            return identity("service", holder.namespace, "", address, meta)
        return external(address)

    def _pod_identity(self, pod: Pod, address: str, container: str) -> Identity:
        meta: dict[str, Any] = {
            "k8s.namespace.name": pod.namespace,
            "k8s.pod.name": pod.name,
        }
        if pod.uid:
            meta["k8s.pod.uid"] = pod.uid
        if container:
            meta["k8s.container.name"] = container
        if pod.node:
            meta["k8s.node.name"] = pod.node
        self._owner_chain(pod, meta)
        slices = self._slice_ips.get(address)
        if slices:
            services = [s.service for s in slices.values() if s.selects(pod, address)]
            if services:
                meta["k8s.service.name"] = min(services)
        for key, value in pod.labels.items():
            meta[LABEL_PREFIX + key] = value
        ident = identity("pod", pod.namespace, pod.node, address, meta)
        ident.pod_uid = pod.uid or f"{pod.namespace}/{pod.name}"
        return ident

    def _owner_chain(self, pod: Pod, meta: dict[str, Any]) -> None:
        """``k8s.<kind>.name`` for each workload up the chain (CHAIN_PARENTS), and the top
        as the workload, into ``meta``: the pod itself when its owner is no workload."""
        kind, name = "Pod", pod.name
        ref = pod.owner
        if _workload(ref):
            kind, name = ref.kind, ref.name
            meta[OWNER_KEYS[kind]] = name
            parent = CHAIN_PARENTS.get(kind)
            if parent is not None:
                store = self.stores.get(WORKLOAD_RESOURCES[kind])
                owner = store.get((kind, pod.namespace, name)) if store is not None else None
                up = owner.owner if owner is not None else None
                if _workload(up) and up.kind == parent:
                    kind, name = up.kind, up.name
                    meta[OWNER_KEYS[kind]] = name
        meta["k8s.workload.kind"] = kind
        meta["k8s.workload.name"] = name


def _running(pod: Pod) -> bool:
    """Neither deleted, terminating nor finished: the pod its addresses belong to."""
    return not pod.deleted_at and not pod.terminating and not pod.finished


def _live(obj: Pod | Node | Service) -> bool:
    """Whether an object's claim on its addresses is current: not deleted, and for a pod,
    running (see _holder)."""
    return _running(obj) if isinstance(obj, Pod) else not obj.deleted_at


def _same_pod(one: Pod, other: Pod) -> bool:
    """Whether two versions are of the same pod (its name may be another pod's later)."""
    return (one.uid, one.name, one.namespace) == (other.uid, other.name, other.namespace)


def _workload(ref: OwnerRef | None) -> TypeGuard[OwnerRef]:
    """Whether an owner reference names a watched controller: a kind of WORKLOAD_GROUPS in
    one of its groups (a reference without apiVersion, which the API server never serves,
    is taken by its kind)."""
    if ref is None:
        return False
    groups = WORKLOAD_GROUPS.get(ref.kind)
    return groups is not None and (ref.group is None or ref.group in groups)


def _owner_key(obj: Pod | Workload) -> Key | None:
    """The store key (kind, namespace, name) of the controller owning ``obj``: the key the
    owner chain looks up, and the owner → referrer indexes are kept under (None when the
    owner is no watched controller: no chain looks it up)."""
    ref = obj.owner
    return (ref.kind, obj.namespace, ref.name) if _workload(ref) else None


def _built_at(found: Identity) -> list[str]:
    """The addresses a container identity was built for (their slices name its Services)."""
    return [found.address, *(found.elsewhere or ())]


def _drop(index: dict[str, Any], holders: dict[str, dict[int, Any]], obj: Service | Node) -> None:
    """Unindex a Service or node: each address it is indexed at goes to another listing
    it (see _successor), if any."""
    for ip in obj.ips:
        listing = holders.get(ip, {})
        if listing.pop(id(obj), None) is not None and not listing:
            del holders[ip]
        if index.get(ip) is obj:
            successor = _successor(listing, obj)
            if successor is None:
                del index[ip]
            else:
                index[ip] = successor


def _successor(listing: dict[int, Any], leaving: Service | Node) -> Service | Node | None:
    """Who of ``listing`` (the Services or nodes listing one address) takes it over from
    ``leaving``: the last indexed live one, else the last indexed one."""
    others = [obj for obj in listing.values() if obj is not leaving]
    live = [obj for obj in others if not obj.deleted_at]
    return (live or others or [None])[-1]
