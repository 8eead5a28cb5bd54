/* Socket owners: which process owns each TCP connection and each UDP peer.
 *
 * The rule that keeps pids honest: the owner (pid, tid, comm, cgroup) is read ONLY in
 * hooks that run in the owning process's context (the socket(), bind(), connect(),
 * sendmsg() and recvmsg() system calls) and stored by socket cookie. Hooks that see the
 * full 5-tuple but may run in softirq (the sock_ops callbacks, the cgroup skb hooks)
 * never call bpf_get_current_*: they look the owner up by cookie, or for a connection
 * accepted from a listener by (netns, local address, local port) of the listener.
 * When no owner is known the event carries pid 0, never the interrupted task.
 *
 * Only UAPI contexts (bpf_sock_addr, bpf_sock, bpf_sock_ops, __sk_buff) and helpers are
 * read: the headers bcc compiles against may not match the running kernel (DESIGN.md).
 *
 * The server side is reported by the process that accept()s the connection when asked
 * (FS_ACCEPT_HOOK=1: setting sockets.accept_hook, off by default) and the kernel allows
 * an fexit program on inet_csk_accept: the established connection waits in
 * pending_accepts until accept() returns it in process context. That names the worker
 * of a pre-fork server and works for listeners bound before the collector started. A
 * connection closed before anyone accepts it is reported with the listener's owner.
 * With FS_ACCEPT_HOOK=0 (the setting off, or no fexit on this kernel) the accept event
 * is sent at establishment with the listener's owner.
 *
 * A connection established before the programs were attached has no state callback
 * (they are switched on per socket at its SYN or establishment): its close comes from
 * the stable tracepoint sock:inet_sock_set_state instead, for the 4-tuples the start-up
 * snapshot wrote into snapshot_closes (FS_SNAPSHOT_CLOSES=1, when tracefs is there). A
 * connected UDP socket the snapshot found is closed by fs_so_release like one the hooks
 * reported: user space writes its owner and local end under its cookie.
 *
 * Tunables, passed by user space as -D flags: FS_OWNERS_MAX, FS_LISTENERS_MAX,
 * FS_UDP_PEERS_MAX, FS_UDP_LOCALS_MAX, FS_DIALLING_MAX, FS_PENDING_MAX, FS_SNAPSHOT_MAX
 * (map sizes),
 * FS_RINGBUF_PAGES (power of two), FS_ACCEPT_HOOK (0/1), FS_ACCEPT_ARGS
 * (inet_csk_accept's argument count: 2 since Linux 6.10, 4 before),
 * FS_SNAPSHOT_CLOSES (0/1).
 */
#include "flowscope_abi.h"

#ifndef FS_OWNERS_MAX
#define FS_OWNERS_MAX 65536
#endif
#ifndef FS_LISTENERS_MAX
#define FS_LISTENERS_MAX 8192
#endif
#ifndef FS_UDP_PEERS_MAX
#define FS_UDP_PEERS_MAX 65536
#endif
/* Open UDP sockets that reported a peer (udp_locals: 8-byte key, 20-byte value). One
 * evicted by newer ones closes without a `close` event (user space's LRU forgets it). */
#ifndef FS_UDP_LOCALS_MAX
#define FS_UDP_LOCALS_MAX 65536
#endif
/* Connections dialled within one round trip (dialling: 8-byte key, 1-byte value). */
#ifndef FS_DIALLING_MAX
#define FS_DIALLING_MAX 8192
#endif
#ifndef FS_PENDING_MAX
#define FS_PENDING_MAX 16384
#endif
#ifndef FS_ACCEPT_HOOK
#define FS_ACCEPT_HOOK 0  /* user space always passes it: sockets.accept_hook */
#endif
#ifndef FS_ACCEPT_ARGS
#define FS_ACCEPT_ARGS 2
#endif
#ifndef FS_RINGBUF_PAGES
#define FS_RINGBUF_PAGES 512
#endif
#ifndef FS_SNAPSHOT_CLOSES
#define FS_SNAPSHOT_CLOSES 0  /* user space passes 1 when the tracepoint's format is there */
#endif
#ifndef FS_SNAPSHOT_MAX
#define FS_SNAPSHOT_MAX 65536  /* user space passes sockets.snapshot_max_sockets */
#endif

/* Spelled out rather than included: kernel headers and bcc's bpf.h clash on some. */
#define FS_AF_INET 2
#define FS_AF_INET6 10
#define FS_IPPROTO_TCP 6
#define FS_IPPROTO_UDP 17
#define FS_TCP_CLOSE 7
#define FS_TCP_LISTEN 10
#define FS_ETH_P_IP 0x0800
#define FS_ETH_P_IPV6 0x86DD
#define FS_IPPROTO_HOPOPTS 0
#define FS_IPPROTO_ROUTING 43
#define FS_IPPROTO_FRAGMENT 44
#define FS_IPPROTO_AH 51
#define FS_IPPROTO_DSTOPTS 60
#define FS_MAX_IPV6_EXT 6

/* bcc 0.26 declares bpf_get_socket_cookie() as returning u32, which truncates the
 * 64-bit cookie; declare the helper with its real type. */
static u64 (*fs_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* Who owns a socket, captured in process context. Kernel-internal (not in the ABI). */
struct fs_owner {
    u64 cgroup_id;
    u64 netns;
    u32 pid;
    u32 tid;
    char comm[16];
};

/* A TCP (address, port) bound in a network namespace: the server side of connections
 * accepted there. IPv4 addresses are IPv4-mapped (::ffff:a.b.c.d), so an IPv6 socket
 * bound to a mapped address and an IPv4 socket bound to that address have one key; the
 * wildcards are ::ffff:0.0.0.0 (IPv4) and :: (IPv6, dual-stack unless V6ONLY). */
struct fs_listener_key {
    u64 netns;
    u8 addr[16];
    u32 port;
    u32 pad;
};

/* The sockets bound to one key, newest first, contiguous (cookie 0: free slot). Several
 * sockets share a key with SO_REUSEPORT (or SO_REUSEADDR before listen()): the newest
 * still bound names the server, and each socket's release removes only its own slot, so
 * the key stays known while any of its binders remains. A bind beyond FS_LISTENER_SLOTS
 * drops the oldest slot: once the newest FS_LISTENER_SLOTS are closed, the survivors
 * are unknown (pid 0). Updates copy the whole value (readers in softirq never see half
 * an update); two binds of one key racing on two CPUs may lose one slot. */
#define FS_LISTENER_SLOTS 4
struct fs_binder {
    u64 cookie;
    struct fs_owner owner;
};

struct fs_listener {
    struct fs_binder binders[FS_LISTENER_SLOTS];
};

/* A UDP socket's peer, reported once (again once the owner becomes known). */
struct fs_peer_key {
    u64 cookie;
    u8 addr[16];
    u32 port;
    u32 pad;
};

/* A UDP socket's local end as its first `udp` event reported it, for the `close` sent at
 * its release (which cannot read src_ip4/6 or src_port). */
struct fs_udp_local {
    u8 addr[16];
    u16 port;
    u8 family;
    u8 pad;
};

/* LRU maps: a socket whose release we miss (or that outlives a full map) ages out
 * instead of filling the map for good. */
BPF_TABLE("lru_hash", u64, struct fs_owner, owners, FS_OWNERS_MAX);
BPF_TABLE("lru_hash", struct fs_listener_key, struct fs_listener, listeners, FS_LISTENERS_MAX);
/* Socket cookie -> the listener key it bound: release cannot read the bound address. */
BPF_TABLE("lru_hash", u64, struct fs_listener_key, bound, FS_LISTENERS_MAX);
BPF_TABLE("lru_hash", struct fs_peer_key, u8, udp_peers, FS_UDP_PEERS_MAX);
/* Socket cookie -> its local end, from its first `udp` event until its release. */
BPF_TABLE("lru_hash", u64, struct fs_udp_local, udp_locals, FS_UDP_LOCALS_MAX);
/* Sockets whose SYN was reported (TCP_CONNECT_CB), so that a simultaneous open's
 * passive callback is not taken for an accepted connection. Never deleted: the entry is
 * needed for one round trip, and cookies are not reused, so the LRU's aging is enough. */
BPF_TABLE("lru_hash", u64, u8, dialling, FS_DIALLING_MAX);
/* Established server-side connections not yet accept()ed, as ready-made events. */
BPF_TABLE("lru_hash", u64, struct fs_socket_event, pending_accepts, FS_PENDING_MAX);
#if FS_SNAPSHOT_CLOSES
/* A TCP connection as both the state tracepoint and bpf_sock_ops name it: addresses
 * IPv4-mapped for IPv4, ports in host order. No namespace: the tracepoint has none. */
struct fs_tuple {
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u32 pad;
};
/* Connections the start-up snapshot reported, as ready-made close events: written by
 * user space once, each removed at its close. Not preallocated: memory for the
 * connections found, not for FS_SNAPSHOT_MAX (sockets.snapshot_max_sockets). */
BPF_F_TABLE("hash", struct fs_tuple, struct fs_socket_event, snapshot_closes, FS_SNAPSHOT_MAX,
            BPF_F_NO_PREALLOC);
#endif
BPF_RINGBUF_OUTPUT(socket_events, FS_RINGBUF_PAGES);
/* Ring-buffer reserve failures: per CPU so counting never contends; user space sums. */
BPF_PERCPU_ARRAY(socket_lost, u64, 1);

static __always_inline int is_tcp_or_udp(u32 protocol)
{
    return protocol == FS_IPPROTO_TCP || protocol == FS_IPPROTO_UDP;
}

/* The current task as owner. Call only from process-context hooks. */
static __always_inline void current_owner(struct fs_owner *o, u64 netns)
{
    u64 id = bpf_get_current_pid_tgid();
    o->pid = id >> 32;
    o->tid = (u32)id;
    o->cgroup_id = bpf_get_current_cgroup_id();
    o->netns = netns;
    bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/* The same task name: two 8-byte words rather than a byte loop. */
static __always_inline int same_comm(const char *a, const char *b)
{
    u64 a0, a1, b0, b1;
    __builtin_memcpy(&a0, a, 8);
    __builtin_memcpy(&a1, a + 8, 8);
    __builtin_memcpy(&b0, b, 8);
    __builtin_memcpy(&b1, b + 8, 8);
    return a0 == b0 && a1 == b1;
}

/* Record the current task as the owner of a socket; skip the map write when the same
 * thread already owns it under the same name (sendmsg runs this for every unconnected
 * UDP datagram). The name is compared too: exec() keeps the tid but renames the task,
 * and a socket inherited across it must be reported with the new program's name. */
static __always_inline void remember(u64 cookie, u64 netns, struct fs_owner *out)
{
    struct fs_owner o = {};
    current_owner(&o, netns);
    struct fs_owner *old = owners.lookup(&cookie);
    if (!old || old->tid != o.tid || old->cgroup_id != o.cgroup_id ||
        !same_comm(old->comm, o.comm))
        owners.update(&cookie, &o);
    if (out)
        __builtin_memcpy(out, &o, sizeof(o));
}

static __always_inline struct fs_socket_event *
reserve_event(u8 kind, u8 proto, u64 cookie, u64 netns, struct fs_owner *o)
{
    struct fs_socket_event *e = socket_events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        int zero = 0;
        u64 *lost = socket_lost.lookup(&zero);
        if (lost)
            __sync_fetch_and_add(lost, 1);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->time_ns = bpf_ktime_get_ns();
    e->cookie = cookie;
    e->netns = netns;
    e->event = kind;
    e->proto = proto;
    if (o) {
        e->pid = o->pid;
        e->tid = o->tid;
        e->cgroup_id = o->cgroup_id;
        __builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
    }
    return e;
}

/* ---------------------------------------------------------------- process context */

/* connect(), sendmsg() and recvmsg() with an address (cgroup sock_addr hooks). */
static __always_inline int on_sock_addr(struct bpf_sock_addr *ctx)
{
    if (is_tcp_or_udp(ctx->protocol))
        remember(fs_socket_cookie(ctx), bpf_get_netns_cookie(ctx), 0);
    return 1; /* 1 = allow: this program only watches */
}

int fs_so_connect4(struct bpf_sock_addr *ctx) { return on_sock_addr(ctx); }
int fs_so_connect6(struct bpf_sock_addr *ctx) { return on_sock_addr(ctx); }
int fs_so_sendmsg4(struct bpf_sock_addr *ctx) { return on_sock_addr(ctx); }
int fs_so_sendmsg6(struct bpf_sock_addr *ctx) { return on_sock_addr(ctx); }
int fs_so_recvmsg4(struct bpf_sock_addr *ctx) { return on_sock_addr(ctx); }
int fs_so_recvmsg6(struct bpf_sock_addr *ctx) { return on_sock_addr(ctx); }

/* socket(): the creator owns the socket until a later call says otherwise. Covers
 * connected UDP sockets, whose send()/recv() run no sock_addr hook. */
int fs_so_create(struct bpf_sock *ctx)
{
    if (is_tcp_or_udp(ctx->protocol))
        remember(fs_socket_cookie(ctx), bpf_get_netns_cookie(ctx), 0);
    return 1;
}

/* A new binder of key: the newest slot; the others move down (the oldest drops out). */
static __always_inline void add_binder(struct fs_listener_key *key, u64 cookie,
                                       struct fs_owner *o)
{
    struct fs_listener l = {};
    struct fs_listener *old = listeners.lookup(key);
    l.binders[0].cookie = cookie;
    __builtin_memcpy(&l.binders[0].owner, o, sizeof(*o));
    if (old) {
#pragma unroll
        for (int i = 1; i < FS_LISTENER_SLOTS; i++)
            l.binders[i] = old->binders[i - 1];
    }
    listeners.update(key, &l);
}

/* A binder of key released its socket: remove its slot (the later ones move up), and
 * the entry with the last slot. Constant indexes only, for the verifier. */
static __always_inline void remove_binder(struct fs_listener_key *key, u64 cookie)
{
    struct fs_listener *old = listeners.lookup(key);
    if (!old)
        return;
    struct fs_listener l = {};
    int found = 0;
#pragma unroll
    for (int i = 0; i < FS_LISTENER_SLOTS - 1; i++) {
        if (old->binders[i].cookie == cookie)
            found = 1;
        l.binders[i] = found ? old->binders[i + 1] : old->binders[i];
    }
    if (old->binders[FS_LISTENER_SLOTS - 1].cookie == cookie)
        found = 1;
    else if (!found)
        return; /* dropped from a full entry, or never added */
    if (l.binders[0].cookie)
        listeners.update(key, &l);
    else
        listeners.delete(key);
}

/* After bind(): the address and port are known (also when the kernel chose the port).
 * A TCP binder is the server of every connection later accepted on that (address,
 * port). key->addr is filled by the caller: src_ip4 is readable only in the IPv4 hook,
 * src_ip6 only in the IPv6 one. */
static __always_inline int on_post_bind(struct bpf_sock *ctx, struct fs_listener_key *key)
{
    if (!is_tcp_or_udp(ctx->protocol))
        return 1;
    u64 cookie = fs_socket_cookie(ctx);
    u64 netns = bpf_get_netns_cookie(ctx);
    struct fs_owner o = {};
    remember(cookie, netns, &o);
    if (ctx->protocol != FS_IPPROTO_TCP || !ctx->src_port)
        return 1;
    key->netns = netns;
    key->port = ctx->src_port;
    add_binder(key, cookie, &o);
    bound.update(&cookie, key); /* so release can find the entry */
    return 1;
}

int fs_so_bind4(struct bpf_sock *ctx)
{
    struct fs_listener_key key = {};
    u32 addr = ctx->src_ip4;
    key.addr[10] = 0xff;
    key.addr[11] = 0xff;
    __builtin_memcpy(key.addr + 12, &addr, 4);
    return on_post_bind(ctx, &key);
}

int fs_so_bind6(struct bpf_sock *ctx)
{
    struct fs_listener_key key = {};
    /* Constant indexes: context reads must have fixed offsets. */
    u32 a0 = ctx->src_ip6[0], a1 = ctx->src_ip6[1], a2 = ctx->src_ip6[2], a3 = ctx->src_ip6[3];
    __builtin_memcpy(key.addr, &a0, 4);
    __builtin_memcpy(key.addr + 4, &a1, 4);
    __builtin_memcpy(key.addr + 8, &a2, 4);
    __builtin_memcpy(key.addr + 12, &a3, 4);
    return on_post_bind(ctx, &key);
}

/* A UDP socket that reported a peer is closed: one `close` naming its local end as its
 * first `udp` event did (remote unspecified), so user space can forget the socket's
 * entries. One that never reported a peer has nothing to forget: no event. The start-up
 * snapshot's connected UDP sockets have entries too (written by user space, which may
 * find such a socket gone and remove its entry itself): whoever deletes the entry sends
 * the close, so it is sent once. */
static __always_inline void udp_release(struct bpf_sock *ctx, u64 cookie)
{
    struct fs_udp_local *found = udp_locals.lookup(&cookie);
    if (!found)
        return;
    struct fs_udp_local local = *found;
    if (udp_locals.delete(&cookie))
        return; /* user space took it first */
    struct fs_owner *o = owners.lookup(&cookie);
    struct fs_socket_event *e =
        reserve_event(FS_SOCK_CLOSE, FS_IPPROTO_UDP, cookie, bpf_get_netns_cookie(ctx), o);
    if (!e)
        return;
    e->family = local.family;
    __builtin_memcpy(e->saddr, local.addr, 16);
    e->sport = local.port;
    socket_events.ringbuf_submit(e, 0);
}

/* close() of the last reference. A TCP connection still open keeps its owner until the
 * CLOSE state callback (which runs after this, from tcp_close or a timer). */
int fs_so_release(struct bpf_sock *ctx)
{
    if (!is_tcp_or_udp(ctx->protocol))
        return 1;
    u64 cookie = fs_socket_cookie(ctx);
    if (ctx->protocol == FS_IPPROTO_TCP) {
        /* src_ip4/6 and src_port cannot be read in this hook: `bound` remembers them. */
        struct fs_listener_key *bound_key = bound.lookup(&cookie);
        if (bound_key) {
            struct fs_listener_key key = *bound_key;
            remove_binder(&key, cookie);
            bound.delete(&cookie);
        }
    } else {
        udp_release(ctx, cookie); /* before the owner it reports is forgotten */
    }
    if (ctx->protocol == FS_IPPROTO_UDP || ctx->state == FS_TCP_CLOSE ||
        ctx->state == FS_TCP_LISTEN)
        owners.delete(&cookie);
    return 1;
}

/* ---------------------------------------------------------------- any context */

static __always_inline void tuple_from_ops(struct fs_socket_event *e, struct bpf_sock_ops *ctx)
{
    e->family = ctx->family;
    if (e->family == FS_AF_INET) {
        u32 local = ctx->local_ip4, remote = ctx->remote_ip4;
        __builtin_memcpy(e->saddr, &local, 4);
        __builtin_memcpy(e->daddr, &remote, 4);
    } else {
        /* Constant indexes: sock_ops context reads must have fixed offsets. */
        u32 l0 = ctx->local_ip6[0], l1 = ctx->local_ip6[1];
        u32 l2 = ctx->local_ip6[2], l3 = ctx->local_ip6[3];
        u32 r0 = ctx->remote_ip6[0], r1 = ctx->remote_ip6[1];
        u32 r2 = ctx->remote_ip6[2], r3 = ctx->remote_ip6[3];
        __builtin_memcpy(e->saddr, &l0, 4);
        __builtin_memcpy(e->saddr + 4, &l1, 4);
        __builtin_memcpy(e->saddr + 8, &l2, 4);
        __builtin_memcpy(e->saddr + 12, &l3, 4);
        __builtin_memcpy(e->daddr, &r0, 4);
        __builtin_memcpy(e->daddr + 4, &r1, 4);
        __builtin_memcpy(e->daddr + 8, &r2, 4);
        __builtin_memcpy(e->daddr + 12, &r3, 4);
    }
    e->sport = ctx->local_port;              /* host byte order in bpf_sock_ops */
    e->dport = bpf_ntohl(ctx->remote_port); /* network order, in the upper half */
}

/* A TCP connection reported with no owner known (pid 0) still gets an owners entry,
 * with pid 0: on_close reports only connections that have one (see there). Insert only,
 * so an owner written meanwhile in process context stands. */
static __always_inline void remember_unknown(u64 cookie, u64 netns)
{
    struct fs_owner none = {.netns = netns};
    owners.insert(&cookie, &none);
}

static __always_inline void owner_into(struct fs_socket_event *e, struct fs_owner *o)
{
    e->pid = o->pid;
    e->tid = o->tid;
    e->cgroup_id = o->cgroup_id;
    __builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
}

/* Send a copy of a prepared event (from pending_accepts). */
static __always_inline void emit_copy(struct fs_socket_event *prepared)
{
    struct fs_socket_event *e = socket_events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        int zero = 0;
        u64 *lost = socket_lost.lookup(&zero);
        if (lost)
            __sync_fetch_and_add(lost, 1);
        return;
    }
    __builtin_memcpy(e, prepared, sizeof(*e));
    socket_events.ringbuf_submit(e, 0);
}

/* Server side established (softirq): the owner of the listener, if known. The kernel
 * prefers a listener on the connection's own local address to a wildcard one, and so
 * does this lookup: the exact address, then (IPv4 or IPv4-mapped) 0.0.0.0, then ::,
 * which a dual-stack IPv6 listener's IPv4 connections (IPv4-mapped) also reach. */
static __always_inline struct fs_owner *listener_owner(struct bpf_sock_ops *ctx, u64 netns)
{
    struct fs_listener_key key = {.netns = netns, .port = ctx->local_port};
    int mapped = 1;
    if (ctx->family == FS_AF_INET) {
        u32 addr = ctx->local_ip4;
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        __builtin_memcpy(key.addr + 12, &addr, 4);
    } else {
        /* Constant indexes: sock_ops context reads must have fixed offsets. */
        u32 a0 = ctx->local_ip6[0], a1 = ctx->local_ip6[1];
        u32 a2 = ctx->local_ip6[2], a3 = ctx->local_ip6[3];
        __builtin_memcpy(key.addr, &a0, 4);
        __builtin_memcpy(key.addr + 4, &a1, 4);
        __builtin_memcpy(key.addr + 8, &a2, 4);
        __builtin_memcpy(key.addr + 12, &a3, 4);
        mapped = !a0 && !a1 && a2 == bpf_htonl(0xffff);
    }
    struct fs_listener *l = listeners.lookup(&key);
    if (!l && mapped) {
        __builtin_memset(key.addr + 12, 0, 4);
        l = listeners.lookup(&key);
    }
    if (!l) {
        __builtin_memset(key.addr, 0, 16);
        l = listeners.lookup(&key);
    }
    return l && l->binders[0].cookie ? &l->binders[0].owner : 0;
}

#if FS_ACCEPT_HOOK
/* Wait for accept() to name the server process, unless it already has (accept() can
 * dequeue the new socket on another CPU before this callback runs). */
static __always_inline void on_passive(struct bpf_sock_ops *ctx, u64 cookie, u64 netns)
{
    struct fs_owner *o = owners.lookup(&cookie); /* set by accept() if it ran first */
    struct fs_socket_event e = {};
    e.time_ns = bpf_ktime_get_ns();
    e.cookie = cookie;
    e.netns = netns;
    e.event = FS_SOCK_ACCEPT;
    e.proto = FS_IPPROTO_TCP;
    tuple_from_ops(&e, ctx);
    if (o) {
        owner_into(&e, o);
        emit_copy(&e);
        return;
    }
    o = listener_owner(ctx, netns); /* used if the connection closes unaccepted */
    if (o)
        owner_into(&e, o);
    pending_accepts.update(&cookie, &e);
}
#else
static __always_inline void on_passive(struct bpf_sock_ops *ctx, u64 cookie, u64 netns)
{
    struct fs_owner *o = listener_owner(ctx, netns);
    if (o)
        owners.update(&cookie, o); /* the accepted socket's owner, for its close */
    else
        remember_unknown(cookie, netns);
    struct fs_socket_event *e = reserve_event(FS_SOCK_ACCEPT, FS_IPPROTO_TCP, cookie, netns, o);
    if (!e)
        return;
    tuple_from_ops(e, ctx);
    socket_events.ringbuf_submit(e, 0);
}
#endif

/* The client side's `connect`: sent when the SYN goes out (TCP_CONNECT_CB, called by
 * tcp_connect() after the local address and port are chosen), so an attempt that is
 * refused or never answered is attributed too. Established (ACTIVE_ESTABLISHED_CB)
 * sends it only for a connection whose SYN left before the programs were attached: the
 * state-callback flag, set here, tells the two apart. The owner comes from the map, as
 * in every sock_ops callback. */
static __always_inline void on_active(struct bpf_sock_ops *ctx, int established)
{
    if (established && (ctx->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG))
        return; /* reported when its SYN was sent */
    u64 cookie = fs_socket_cookie(ctx);
    u64 netns = bpf_get_netns_cookie(ctx);
    /* Ask for state callbacks on this socket only, so CLOSE is reported for
     * connections we reported (a failed attempt's too) and no others. */
    bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    if (!established) {
        u8 one = 1;
        dialling.update(&cookie, &one); /* for a simultaneous open: see on_established */
    }
    struct fs_owner *o = owners.lookup(&cookie);
    if (!o)
        remember_unknown(cookie, netns); /* SYN before attach, or a kernel socket */
    struct fs_socket_event *e = reserve_event(FS_SOCK_CONNECT, FS_IPPROTO_TCP, cookie, netns, o);
    if (!e)
        return;
    tuple_from_ops(e, ctx);
    socket_events.ringbuf_submit(e, 0);
}

/* Server side established. Runs in softirq: no bpf_get_current_* here. A socket in
 * `dialling` sent a SYN we reported: this is a simultaneous open (a TCP self-connect,
 * whose SYN reaches the socket itself, or two clients dialling each other), which the
 * kernel establishes through the passive callback. No listener is involved: its
 * `connect` stands, and an `accept` (pid 0 for a kernel-chosen port) would replace that
 * owner in the enricher, which keeps a 5-tuple's last event. The state-callback flag
 * alone cannot tell: another sock_ops program (a second collector) may have set it on
 * an accepted socket just before this one runs; it only spares the lookup. */
static __always_inline void on_established(struct bpf_sock_ops *ctx)
{
    u64 cookie = fs_socket_cookie(ctx);
    if ((ctx->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG) && dialling.lookup(&cookie))
        return;
    u64 netns = bpf_get_netns_cookie(ctx);
    /* Ask for state callbacks on this socket only, so CLOSE is reported for
     * connections we reported and no others. */
    bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    on_passive(ctx, cookie, netns);
}

#if FS_SNAPSHOT_CLOSES
/* A connection the hooks report closes here: not again from the state tracepoint,
 * which runs after this callback in tcp_set_state(). */
static __always_inline void forget_snapshot(struct fs_socket_event *e)
{
    struct fs_tuple key = {.sport = e->sport, .dport = e->dport};
    if (e->family == FS_AF_INET) {
        key.saddr[10] = key.saddr[11] = key.daddr[10] = key.daddr[11] = 0xff;
        __builtin_memcpy(key.saddr + 12, e->saddr, 4);
        __builtin_memcpy(key.daddr + 12, e->daddr, 4);
    } else {
        __builtin_memcpy(key.saddr, e->saddr, 16);
        __builtin_memcpy(key.daddr, e->daddr, 16);
    }
    snapshot_closes.delete(&key);
}
#else
static __always_inline void forget_snapshot(struct fs_socket_event *e) {}
#endif

/* The CLOSE state callback runs for every socket whose state-callback flag is set, and
 * the flag is the socket's, not this program's: another sock_ops program on the cgroup
 * (a second collector, a CNI) may set it on connections this one never reported, such
 * as the start-up snapshot's. So a close is sent only for a connection reported here:
 * one waiting in pending_accepts, or one with an owners entry (every reported
 * connection has one, pid 0 when the owner is unknown). Any other is left to the state
 * tracepoint, which sends the snapshot's prepared close if it has one. A connection
 * whose owners entry was evicted (more than FS_OWNERS_MAX open sockets) closes without
 * an event. */
static __always_inline void on_close(struct bpf_sock_ops *ctx)
{
    u64 cookie = fs_socket_cookie(ctx);
    struct fs_socket_event *pending = pending_accepts.lookup(&cookie);
    if (pending) {
        /* Closed before accept(): report it with the listener's owner, then close. */
        emit_copy(pending);
        pending->event = FS_SOCK_CLOSE;
        pending->time_ns = bpf_ktime_get_ns();
        emit_copy(pending);
        pending_accepts.delete(&cookie);
        owners.delete(&cookie);
        return;
    }
    struct fs_owner *o = owners.lookup(&cookie);
    if (!o)
        return; /* not reported here */
    struct fs_socket_event *e =
        reserve_event(FS_SOCK_CLOSE, FS_IPPROTO_TCP, cookie, bpf_get_netns_cookie(ctx), o);
    if (e) {
        tuple_from_ops(e, ctx);
        forget_snapshot(e);
        socket_events.ringbuf_submit(e, 0);
    }
    owners.delete(&cookie);
}

int fs_so_ops(struct bpf_sock_ops *ctx)
{
    switch (ctx->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
        on_active(ctx, 0);
        break;
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
        on_active(ctx, 1);
        break;
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        on_established(ctx);
        break;
    case BPF_SOCK_OPS_STATE_CB:
        if (ctx->args[1] == FS_TCP_CLOSE)
            on_close(ctx);
        break;
    }
    return 1;
}

#if FS_SNAPSHOT_CLOSES
/* Any inet socket changed state: if a connection the snapshot reported reached CLOSE,
 * send its prepared close. Not named tracepoint__*, so bcc does not attach it while
 * compiling: user space attaches it, and runs on without it. The struct is generated by
 * bcc from the running kernel's format file (DESIGN.md: no kernel struct is read).
 * User space removes the entry of a connection it finds gone after writing it, and sends
 * that close itself: whoever deletes the entry sends, so the close is sent once. */
int fs_so_snapshot_close(struct tracepoint__sock__inet_sock_set_state *args)
{
    if (args->newstate != FS_TCP_CLOSE || args->protocol != FS_IPPROTO_TCP)
        return 0;
    struct fs_tuple key = {.sport = args->sport, .dport = args->dport};
    __builtin_memcpy(key.saddr, args->saddr_v6, 16); /* IPv4-mapped for IPv4 sockets */
    __builtin_memcpy(key.daddr, args->daddr_v6, 16);
    struct fs_socket_event *found = snapshot_closes.lookup(&key);
    if (!found)
        return 0;
    struct fs_socket_event prepared = *found;
    if (snapshot_closes.delete(&key))
        return 0; /* user space took it first */
    prepared.time_ns = bpf_ktime_get_ns();
    emit_copy(&prepared);
    return 0;
}
#endif

#if FS_ACCEPT_HOOK
/* accept() returned a socket: process context, the task is the server. Only the return
 * value is used; the arguments are declared as untyped words because their types
 * changed across kernels (the verifier checks the real types from the kernel's BTF). */
struct sock;
#if FS_ACCEPT_ARGS == 2
KRETFUNC_PROBE(inet_csk_accept, void *sk, void *arg, struct sock *ret)
#else
KRETFUNC_PROBE(inet_csk_accept, void *sk, u64 flags, void *err, u64 kern, struct sock *ret)
#endif
{
    if (!ret)
        return 0;
    u64 cookie = fs_socket_cookie(ret);
    struct fs_owner o = {};
    struct fs_socket_event *pending = pending_accepts.lookup(&cookie);
    current_owner(&o, pending ? pending->netns : 0);
    owners.update(&cookie, &o); /* the server, for this connection's close */
    if (!pending)
        return 0; /* established callback not run yet: it will find the owner */
    owner_into(pending, &o);
    emit_copy(pending);
    pending_accepts.delete(&cookie);
    return 0;
}
#endif

/* UDP peers. A UDP socket's local address is only settled when a datagram is routed, so
 * the tuple is taken from the packet at the cgroup skb hooks (data starts at the IP
 * header there) and the owner from the map. Every packet passes here: return early for
 * anything that is not UDP, and report each (socket, peer) once. */
static __always_inline int udp_peer(struct __sk_buff *skb, int egress)
{
    /* Cheapest test first: the socket's protocol, without touching the packet
     * (protocol is only readable on a full socket, hence bpf_sk_fullsock). */
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return 1;
    sk = bpf_sk_fullsock(sk);
    if (!sk || sk->protocol != FS_IPPROTO_UDP)
        return 1;
    u8 saddr[16] = {}, daddr[16] = {};
    u16 ports[2];
    u8 family;
    if (skb->protocol == bpf_htons(FS_ETH_P_IP)) {
        u8 h[20]; /* the fixed IPv4 header, in one helper call */
        if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
            return 1;
        if (h[9] != FS_IPPROTO_UDP || (h[6] & 0x1f) || h[7])
            return 1; /* not UDP, or a later fragment without the UDP header */
        __builtin_memcpy(saddr, h + 12, 4);
        __builtin_memcpy(daddr, h + 16, 4);
        if (bpf_skb_load_bytes(skb, (h[0] & 0xf) * 4, ports, 4))
            return 1;
        family = FS_AF_INET;
    } else if (skb->protocol == bpf_htons(FS_ETH_P_IPV6)) {
        u8 h[44]; /* fixed header and, in the common case, the UDP ports */
        if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
            return 1;
        __builtin_memcpy(saddr, h + 8, 16);
        __builtin_memcpy(daddr, h + 24, 16);
        if (h[6] == FS_IPPROTO_UDP) {
            __builtin_memcpy(ports, h + 40, 4);
        } else {
            /* Extension headers before UDP (hop-by-hop, routing, destination options,
             * fragment, AH): walk them as flows.c does. */
            u8 next = h[6];
            u32 off = 40;
#pragma unroll
            for (int i = 0; i < FS_MAX_IPV6_EXT; i++) {
                u8 ext[4];
                if (next != FS_IPPROTO_HOPOPTS && next != FS_IPPROTO_ROUTING &&
                    next != FS_IPPROTO_DSTOPTS && next != FS_IPPROTO_FRAGMENT &&
                    next != FS_IPPROTO_AH)
                    break;
                if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
                    return 1;
                if (next == FS_IPPROTO_FRAGMENT) {
                    if ((ext[2] << 8 | ext[3]) & 0xfff8)
                        return 1; /* a later fragment: no UDP header */
                    off += 8;
                } else if (next == FS_IPPROTO_AH) {
                    off += ((u32)ext[1] + 2) * 4;
                } else {
                    off += ((u32)ext[1] + 1) * 8;
                }
                next = ext[0];
            }
            if (next != FS_IPPROTO_UDP || bpf_skb_load_bytes(skb, off, ports, 4))
                return 1;
        }
        family = FS_AF_INET6;
    } else {
        return 1;
    }
    u64 cookie = fs_socket_cookie(skb);
    if (!cookie)
        return 1;
    struct fs_owner *o = owners.lookup(&cookie);
    struct fs_peer_key key = {.cookie = cookie};
    __builtin_memcpy(key.addr, egress ? daddr : saddr, 16);
    key.port = bpf_ntohs(egress ? ports[1] : ports[0]);
    u8 has_owner = o ? 1 : 0;
    u8 *known = udp_peers.lookup(&key);
    if (known && (*known || !has_owner))
        return 1; /* reported already (or reported ownerless and still ownerless) */
    udp_peers.update(&key, &has_owner);
    struct fs_socket_event *e =
        reserve_event(FS_SOCK_UDP, FS_IPPROTO_UDP, cookie, o ? o->netns : 0, o);
    if (!e)
        return 1;
    e->family = family;
    __builtin_memcpy(e->saddr, egress ? saddr : daddr, 16);
    __builtin_memcpy(e->daddr, egress ? daddr : saddr, 16);
    e->sport = bpf_ntohs(egress ? ports[0] : ports[1]);
    e->dport = key.port;
    /* The socket's local end for its close: the first report's (insert never replaces,
     * and this path runs once per peer, not per packet). */
    struct fs_udp_local local = {.port = e->sport, .family = family};
    __builtin_memcpy(local.addr, e->saddr, 16);
    udp_locals.insert(&cookie, &local);
    socket_events.ringbuf_submit(e, 0);
    return 1; /* 1 = let the packet pass: this program only watches */
}

int fs_so_egress(struct __sk_buff *skb) { return udp_peer(skb, 1); }
int fs_so_ingress(struct __sk_buff *skb) { return udp_peer(skb, 0); }
