/* The enricher's compiled flow core: Enricher._flows's loop over raw flow records, in C.
 *
 * flowscope.enricher.enriching is the definition of a flow record; this file renders the
 * same function faster for the common record and must produce the same output, byte for
 * byte, and leave the join state as the Python path leaves it
 * (tests/unit/enricher/test_flowcore.py compares the two on generated states and records).
 *
 * A record is handled here when it is an ordinary one: a dict whose fields all have the
 * expected types and ranges, no DNAT fields, both addresses already in the enricher's
 * canonical-address cache (of the same family), counters and times that fit in 64 bits.
 * Every other record — bad ones included, which must be reported with the Python path's
 * exact error — goes through Enricher._flow, in order. The decision is taken before this
 * core touches any state, so a record is never half handled.
 *
 * Why C: in Python the per-record work is ~25 dictionary probes, attribute reads and
 * small allocations, a SHA-1 with its struct packing and base64, and a 20-argument
 * `bytes %` — about 9-13 µs per record on the development machine, against a target of
 * 5 µs for the whole enricher. Here the Community ID is hashed in place (no cache needed:
 * SHA-1 of 37 bytes costs less than probing one), the line is written straight into its
 * bytes object, and the lookups read the same Python dictionaries the Python path reads.
 *
 * Two entries: flow_lines takes decoded records (dicts); flow_body, the pipeline's, takes
 * a raw message's NDJSON body and reads each line written the way the collector writes it
 * straight into its record, with no Python object per field (any other line goes through
 * orjson.loads and the dict way; "raw bodies" below). learn_addresses fills flow_body's
 * address table ahead of the flows, with the addresses whose identities the enricher's
 * warming task has just built.
 *
 * The join state stays in Python objects owned by enriching.py and its collaborators; the
 * pieces read here (per batch, never kept across calls — except by flow_body's address
 * table, a cache of _addresses that also keeps each address's identity, with the parts
 * a record reads of it, while resolver.generation says _cache has lost nothing since;
 * its name ways, the _entries lists it found, on NameCache's promise that an entry is
 * its key's while it has four items; its observer table, each observer's str and JSON;
 * and the subjects by their tokens):
 *   enricher._addresses        dict  raw text → (canonical text, network.type, packed)
 *   enricher.resolver._cache   dict  canonical address → Identity (a miss calls resolve())
 *   enricher.sockets._sockets / _locals   OrderedDicts of SocketOwner (hits: move_to_end)
 *   enricher.names._entries    OrderedDict (client, address) → [name, expiry, JSON,
 *                              used]; a hit is expired, or marked used and refreshed,
 *                              as NameCache.lookup does
 *   enricher.names._answers / generation   dict address → entries answering it, and
 *                              the count of addresses that got a first entry (an
 *                              address's slot keeps "unanswered" until it moves)
 *   enricher.observers.seen / ttl_ns      dict node → its newest event time (unix ns, an
 *                              int in [0, 2^63)); a report is judged at its end_ns
 *   enricher.observers.in_minute           a node's minute (event time // 60 s), called
 *                              unless Observers.minutes[node] (an array('i'), bounded)
 *                              already ends with it — read here through the buffer
 *                              protocol: a batch's records may come from many nodes —
 *                              it keeps the minutes and may forget other nodes
 *                              (Observers' node bound); Observers.active reads the
 *                              minutes when the newest event is not within ttl_ns
 * Only CPython's documented C API is used (_PyBytes_Resize, underscore and all, is in the
 * reference manual: frame_atomic trims its buffer with it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define TCP 6
#define UDP 17
#define SCTP 132
#define ICMP 1
#define ICMPV6 58
#define N_KINDS 6

/* ------------------------------------------------------------------ configured pieces */

/* Set once by configure(): the Python path's pieces this core calls or reads. */
static PyObject *render_line;     /* enriching.render_line (passed to _flow) */
static PyObject *json_loads;      /* orjson.loads: a raw line that is not plain */
static PyObject *record_error;    /* RecordError: a deferred record's error is reported */
static PyObject *strings;         /* enriching._STRINGS: str → its JSON form */
static PyObject *json_str;        /* enriching.json_str: renders and caches a miss */
static PyObject *process_json;    /* enriching.process_json: a socket owner's keys */
static PyObject *transports;      /* enriching._TRANSPORTS_JSON: 256 bytes objects */
static PyObject *flag_tags;       /* enriching._FLAGS_JSON: 256 bytes objects */
static PyObject *end_reasons;     /* frozenset of records.END_REASONS */
static PyObject *flows_prefix;    /* subjects.FLOWS */
static PyObject *forward, *unknown;  /* records.DIRECTIONS */
static PyObject *kinds[N_KINDS];  /* enriching.LOOKUP_KINDS */
static PyObject *subject_cache;   /* source token → {destination token → subject} */
#define MAX_SUBJECT_SOURCES 4096

static PyObject *s_flow, *s_tally, *s_lines, *s_bad, *s_records_in, *s_records_out,
    *s_dedup_dropped, *s_process_hits, *s_dns_hits, *s_dns_misses, *s_lookups, *s_addresses,
    *s_resolver, *s_resolve, *s_cache, *s_sockets, *s_sockets_table, *s_locals, *s_names,
    *s_entries, *s_lookup, *s_observers, *s_seen, *s_in_minute, *s_minutes, *s_ttl, *s_active,
    *s_ttl_min, *s_refine, *s_move_to_end,
    *s_kind, *s_token, *s_home, *s_source_json, *s_destination_json, *s_event, *s_json,
    *s_container_id, *s_connect, *s_accept, *s_generation, *s_known_address, *s_answers,
    *s_address, *s_rendered, *s_dialled;
/* raw record keys */
static PyObject *k_observer, *k_start_ns, *k_end_ns, *k_end_reason, *k_proto, *k_src, *k_dst,
    *k_sport, *k_dport, *k_bytes, *k_packets, *k_rbytes, *k_rpackets, *k_tcp_flags,
    *k_initiator, *k_ifindex, *k_nat_dst;

/* ------------------------------------------------------------------ Community ID (SHA-1) */

/* The SHA-1 compression of one block, portably (FIPS 180-4). */
static void
sha1_block(uint32_t state[5], const uint8_t block[64])
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
               (uint32_t)block[4 * i + 2] << 8 | block[4 * i + 3];
#define ROL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
    for (int i = 16; i < 80; i++)
        w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3], e = state[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = ROL(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = ROL(b, 30);
        b = a;
        a = t;
    }
#undef ROL
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
}

/* The SHA-1 compression of one block with the x86 SHA extensions (SHA-NI), when the CPU
 * has them (checked once, at import): ~10x fewer cycles than the portable rounds below,
 * which were ~8 % of the core's time. The sequence is Intel's published one (the
 * "Intel SHA Extensions" white paper, 2013, as in Linux's sha1_ni_asm.S and Jeffrey
 * Walton's public-domain sha1-x86.c). `state` is h0..h4. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI 1

__attribute__((target("sha,sse4.1"))) static void
sha1_block_ni(uint32_t state[5], const uint8_t block[64])
{
    const __m128i mask = _mm_set_epi64x(0x0001020304050607ULL, 0x08090a0b0c0d0e0fULL);
    __m128i abcd = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)state), 0x1B);
    __m128i e0 = _mm_set_epi32((int)state[4], 0, 0, 0), e1;
    const __m128i abcd_save = abcd, e0_save = e0;
    __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 0)), mask);
    __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16)), mask);
    __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 32)), mask);
    __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 48)), mask);

    /* rounds 0-3 */
    e0 = _mm_add_epi32(e0, m0);
    e1 = abcd;
    abcd = _mm_sha1rnds4_epu32(abcd, e0, 0);
    /* 4-7 */
    e1 = _mm_sha1nexte_epu32(e1, m1);
    e0 = abcd;
    abcd = _mm_sha1rnds4_epu32(abcd, e1, 0);
    m0 = _mm_sha1msg1_epu32(m0, m1);
    /* 8-11 */
    e0 = _mm_sha1nexte_epu32(e0, m2);
    e1 = abcd;
    abcd = _mm_sha1rnds4_epu32(abcd, e0, 0);
    m1 = _mm_sha1msg1_epu32(m1, m2);
    m0 = _mm_xor_si128(m0, m2);
    /* 12-15 */
    e1 = _mm_sha1nexte_epu32(e1, m3);
    e0 = abcd;
    m0 = _mm_sha1msg2_epu32(m0, m3);
    abcd = _mm_sha1rnds4_epu32(abcd, e1, 0);
    m2 = _mm_sha1msg1_epu32(m2, m3);
    m1 = _mm_xor_si128(m1, m3);
/* Four rounds 16-67 in the steady pattern: the message words rotate through m0..m3. */
#define FOUR(ea, eb, a, b, c, d, f)                                                          \
    ea = _mm_sha1nexte_epu32(ea, a);                                                        \
    eb = abcd;                                                                              \
    b = _mm_sha1msg2_epu32(b, a);                                                           \
    abcd = _mm_sha1rnds4_epu32(abcd, ea, f);                                                \
    d = _mm_sha1msg1_epu32(d, a);                                                           \
    c = _mm_xor_si128(c, a);
    FOUR(e0, e1, m0, m1, m2, m3, 0) /* 16-19 */
    FOUR(e1, e0, m1, m2, m3, m0, 1) /* 20-23 */
    FOUR(e0, e1, m2, m3, m0, m1, 1) /* 24-27 */
    FOUR(e1, e0, m3, m0, m1, m2, 1) /* 28-31 */
    FOUR(e0, e1, m0, m1, m2, m3, 1) /* 32-35 */
    FOUR(e1, e0, m1, m2, m3, m0, 1) /* 36-39 */
    FOUR(e0, e1, m2, m3, m0, m1, 2) /* 40-43 */
    FOUR(e1, e0, m3, m0, m1, m2, 2) /* 44-47 */
    FOUR(e0, e1, m0, m1, m2, m3, 2) /* 48-51 */
    FOUR(e1, e0, m1, m2, m3, m0, 2) /* 52-55 */
    FOUR(e0, e1, m2, m3, m0, m1, 2) /* 56-59 */
    FOUR(e1, e0, m3, m0, m1, m2, 3) /* 60-63 */
    FOUR(e0, e1, m0, m1, m2, m3, 3) /* 64-67 */
#undef FOUR
    /* 68-71 */
    e1 = _mm_sha1nexte_epu32(e1, m1);
    e0 = abcd;
    m2 = _mm_sha1msg2_epu32(m2, m1);
    abcd = _mm_sha1rnds4_epu32(abcd, e1, 3);
    m3 = _mm_xor_si128(m3, m1);
    /* 72-75 */
    e0 = _mm_sha1nexte_epu32(e0, m2);
    e1 = abcd;
    m3 = _mm_sha1msg2_epu32(m3, m2);
    abcd = _mm_sha1rnds4_epu32(abcd, e0, 3);
    /* 76-79 */
    e1 = _mm_sha1nexte_epu32(e1, m3);
    e0 = abcd;
    abcd = _mm_sha1rnds4_epu32(abcd, e1, 3);

    e0 = _mm_sha1nexte_epu32(e0, e0_save);
    abcd = _mm_add_epi32(abcd, abcd_save);
    _mm_storeu_si128((__m128i *)state, _mm_shuffle_epi32(abcd, 0x1B));
    state[4] = (uint32_t)_mm_extract_epi32(e0, 3);
}
#endif

static int use_sha_ni; /* set at import when the CPU has the SHA extensions */

/* SHA-1 of a message of at most 55 bytes (one block), with the SHA extensions when
 * `hardware` and the CPU has them. */
static void
sha1_short_with(const uint8_t *msg, size_t len, uint8_t out[20], int hardware)
{
    uint8_t block[64] = {0};
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    memcpy(block, msg, len);
    block[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        block[63 - i] = (uint8_t)(bits >> (8 * i));
#ifdef HAVE_SHA_NI
    if (hardware && use_sha_ni)
        sha1_block_ni(h, block);
    else
#endif
        sha1_block(h, block);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

static void
sha1_short(const uint8_t *msg, size_t len, uint8_t out[20])
{
    sha1_short_with(msg, len, out, 1);
}

#define CID_LEN 30 /* "1:" + base64 of 20 bytes (28 characters, one '=') */

/* ICMP request ↔ reply types (records.ICMP_COUNTERPART). */
static int
icmp_counterpart(int proto, long type)
{
    static const int v4[][2] = {{8, 0}, {0, 8}, {13, 14}, {14, 13}, {15, 16},
                                {16, 15}, {10, 9}, {9, 10}, {17, 18}, {18, 17}};
    static const int v6[][2] = {{128, 129}, {129, 128}, {130, 131}, {131, 130},
                                {133, 134}, {134, 133}, {135, 136}, {136, 135},
                                {139, 140}, {140, 139}, {144, 145}, {145, 144}};
    const int(*table)[2] = proto == ICMP ? v4 : v6;
    size_t n = proto == ICMP ? sizeof v4 / sizeof v4[0] : sizeof v6 / sizeof v6[0];
    for (size_t i = 0; i < n; i++)
        if (table[i][0] == type)
            return table[i][1];
    return -1;
}

/* community_id.community_id_packed(proto, src, dst, sport, dport), seed 0, written to out. */
static void
community_id(int proto, const uint8_t *src, const uint8_t *dst, Py_ssize_t alen, long sport,
             long dport, char out[CID_LEN])
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int one_way = 0, has_ports;
    if (proto == ICMP || proto == ICMPV6) {
        int counterpart = icmp_counterpart(proto, sport);
        if (counterpart < 0)
            one_way = 1;
        else
            dport = counterpart;
        has_ports = 1;
    } else {
        has_ports = proto == TCP || proto == UDP || proto == SCTP;
    }
    if (!one_way) {
        int order = memcmp(dst, src, (size_t)alen);
        if (order < 0 || (order == 0 && dport < sport)) {
            const uint8_t *t = src;
            src = dst;
            dst = t;
            long p = sport;
            sport = dport;
            dport = p;
        }
    }
    uint8_t data[2 + 16 + 16 + 2 + 4], digest[20];
    size_t n = 0;
    data[n++] = 0; /* seed, 16 bits */
    data[n++] = 0;
    memcpy(data + n, src, (size_t)alen);
    n += (size_t)alen;
    memcpy(data + n, dst, (size_t)alen);
    n += (size_t)alen;
    data[n++] = (uint8_t)proto;
    data[n++] = 0;
    if (has_ports) {
        data[n++] = (uint8_t)(sport >> 8);
        data[n++] = (uint8_t)sport;
        data[n++] = (uint8_t)(dport >> 8);
        data[n++] = (uint8_t)dport;
    }
    sha1_short(data, n, digest);
    out[0] = '1';
    out[1] = ':';
    char *o = out + 2;
    for (int i = 0; i < 18; i += 3) {
        uint32_t v = (uint32_t)digest[i] << 16 | (uint32_t)digest[i + 1] << 8 | digest[i + 2];
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
        *o++ = b64[(v >> 6) & 63];
        *o++ = b64[v & 63];
    }
    uint32_t v = (uint32_t)digest[18] << 16 | (uint32_t)digest[19] << 8;
    *o++ = b64[v >> 18];
    *o++ = b64[(v >> 12) & 63];
    *o++ = b64[(v >> 6) & 63];
    *o++ = '=';
}

/* ------------------------------------------------------------------ rendered lines */

/* A raw batch's enriched lines as flow_body renders them: one buffer, the lines in
 * record order, each linked to its subject's next one. What the pipeline does with them
 * — frame each subject's lines as one message (frame_atomic) — needs no object per line,
 * so none is made: a bytes object per line cost its allocation, its list slot and its
 * free (~10 % of the steady state in process). Lines.lines() makes the subject → list
 * of lines dict the Python path makes, for everything else. */
typedef struct {
    Py_ssize_t offset, len;
    Py_ssize_t next; /* the subject's next line, -1: none */
} LineAt;

typedef struct {
    Py_ssize_t first, last, count, bytes;
} SubjectAt;

typedef struct {
    PyObject_HEAD
    char *buf;
    Py_ssize_t used, cap;
    LineAt *at;
    Py_ssize_t n, at_cap;
    SubjectAt *per;    /* per subject, in the order of `subjects` */
    Py_ssize_t last;   /* the subject of the last line (lines_trim) */
    PyObject *subjects; /* list of str: each subject once, in the order of its first line */
    PyObject *index;    /* dict: subject → its index in `subjects` */
} Lines;

static PyTypeObject LinesType;

/* A Lines starting with `bytes` of buffer (grown when short), with room for `lines`
 * lines: a batch's records, each of which makes one line at most. */
static Lines *
lines_new(Py_ssize_t bytes, Py_ssize_t lines)
{
    Lines *l = PyObject_New(Lines, &LinesType);
    if (l == NULL)
        return NULL;
    l->cap = Py_MAX(bytes, 4096);
    l->at_cap = Py_MAX(lines, 16);
    l->used = l->n = 0;
    l->buf = PyMem_Malloc((size_t)l->cap);
    l->at = PyMem_Malloc((size_t)l->at_cap * sizeof(LineAt));
    l->per = PyMem_Malloc((size_t)l->at_cap * sizeof(SubjectAt)); /* each has a line */
    l->subjects = PyList_New(0);
    l->index = PyDict_New();
    if (l->buf == NULL || l->at == NULL || l->per == NULL || l->subjects == NULL ||
        l->index == NULL) {
        Py_DECREF(l);
        return (Lines *)PyErr_NoMemory();
    }
    return l;
}

static void
lines_dealloc(Lines *l)
{
    PyMem_Free(l->buf);
    PyMem_Free(l->at);
    PyMem_Free(l->per);
    Py_XDECREF(l->subjects);
    Py_XDECREF(l->index);
    PyObject_Free(l);
}

/* The index of `subject` in l's subjects, added when it is new; -1: an error. */
static Py_ssize_t
lines_subject(Lines *l, PyObject *subject)
{
    PyObject *found = PyDict_GetItemWithError(l->index, subject);
    if (found != NULL)
        return PyLong_AsSsize_t(found);
    if (PyErr_Occurred())
        return -1;
    if (!PyUnicode_CheckExact(subject)) {
        PyErr_SetString(PyExc_TypeError, "a subject must be a str");
        return -1;
    }
    Py_ssize_t s = PyList_GET_SIZE(l->subjects);
    PyObject *number = PyLong_FromSsize_t(s);
    int rc = number == NULL ? -1 : PyDict_SetItem(l->index, subject, number);
    Py_XDECREF(number);
    if (rc < 0 || PyList_Append(l->subjects, subject) < 0)
        return -1;
    l->per[s] = (SubjectAt){.first = -1, .last = -1};
    return s;
}

/* Room for one more line of `len` bytes under `subject`: where to write it, or NULL. */
static char *
lines_reserve(Lines *l, PyObject *subject, Py_ssize_t len)
{
    if (l->n == l->at_cap) { /* lines_new had room for one line per record */
        PyErr_SetString(PyExc_SystemError, "Lines: more lines than records");
        return NULL;
    }
    Py_ssize_t s = lines_subject(l, subject);
    if (s < 0)
        return NULL;
    if (l->used + len > l->cap) {
        Py_ssize_t cap = Py_MAX(l->cap * 2, l->used + len);
        char *buf = PyMem_Realloc(l->buf, (size_t)cap);
        if (buf == NULL)
            return (char *)PyErr_NoMemory();
        l->buf = buf;
        l->cap = cap;
    }
    SubjectAt *per = &l->per[s];
    l->last = s;
    l->at[l->n] = (LineAt){.offset = l->used, .len = len, .next = -1};
    if (per->last >= 0)
        l->at[per->last].next = l->n;
    else
        per->first = l->n;
    per->last = l->n++;
    per->count++;
    per->bytes += len;
    char *o = l->buf + l->used;
    l->used += len;
    return o;
}

/* The last line lines_reserve made room for, `extra` bytes shorter (it was given room
 * for the longest it could be). */
static void
lines_trim(Lines *l, Py_ssize_t extra)
{
    l->used -= extra;
    l->at[l->n - 1].len -= extra;
    l->per[l->last].bytes -= extra;
}

/* Lines.lines(): {subject: [line, ...]} — what the Python path's dict would hold. */
static PyObject *
lines_lines(Lines *l, PyObject *unused)
{
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (Py_ssize_t s = 0; s < PyList_GET_SIZE(l->subjects); s++) {
        PyObject *list = PyList_New(l->per[s].count);
        if (list == NULL || PyDict_SetItem(out, PyList_GET_ITEM(l->subjects, s), list) < 0) {
            Py_XDECREF(list);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(list); /* the dict holds it */
        Py_ssize_t k = 0;
        for (Py_ssize_t i = l->per[s].first; i >= 0; i = l->at[i].next) {
            PyObject *line = PyBytes_FromStringAndSize(l->buf + l->at[i].offset, l->at[i].len);
            if (line == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(list, k++, line);
        }
    }
    return out;
}

static PyObject *
lines_subjects(Lines *l, void *closure)
{
    return PyList_AsTuple(l->subjects);
}

static PyObject *
lines_count(Lines *l, void *closure)
{
    return PyLong_FromSsize_t(l->n);
}

static Py_ssize_t
lines_length(Lines *l)
{
    return PyList_GET_SIZE(l->subjects);
}

static PyMethodDef lines_methods[] = {
    {"lines", (PyCFunction)lines_lines, METH_NOARGS,
     "lines(): {subject: [line, ...]}, each subject's lines in order (a new dict)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef lines_getset[] = {
    {"subjects", (getter)lines_subjects, NULL, "the subjects, in the order of their first line",
     NULL},
    {"count", (getter)lines_count, NULL, "the number of lines", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods lines_sequence = {.sq_length = (lenfunc)lines_length};

static PyTypeObject LinesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowscope.enricher._flowcore.Lines",
    .tp_basicsize = sizeof(Lines),
    .tp_dealloc = (destructor)lines_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A raw batch's enriched lines by subject, as flow_body rendered them "
              "(len: the number of subjects).",
    .tp_methods = lines_methods,
    .tp_getset = lines_getset,
    .tp_as_sequence = &lines_sequence,
};

/* Append all of `part`'s lines to `l` (sized for them): its buffer in one copy (its
 * lines lie in it in order), then each subject's chain linked onto l's. */
static int
lines_append(Lines *l, const Lines *part)
{
    Py_ssize_t base_n = l->n, base_at = l->used;
    memcpy(l->buf + base_at, part->buf, (size_t)part->used);
    l->used += part->used;
    l->n += part->n;
    for (Py_ssize_t s = 0; s < PyList_GET_SIZE(part->subjects); s++) {
        Py_ssize_t m = lines_subject(l, PyList_GET_ITEM(part->subjects, s));
        if (m < 0)
            return -1;
        SubjectAt *per = &l->per[m];
        for (Py_ssize_t i = part->per[s].first; i >= 0; i = part->at[i].next) {
            Py_ssize_t at = base_n + i;
            l->at[at] = (LineAt){part->at[i].offset + base_at, part->at[i].len, -1};
            if (per->last >= 0)
                l->at[per->last].next = at;
            else
                per->first = at;
            per->last = at;
            if (at == l->n - 1)
                l->last = m;
        }
        per->count += part->per[s].count;
        per->bytes += part->per[s].bytes;
    }
    return 0;
}

/* merge_lines(parts): a new Lines of the parts' lines, part after part (see the method
 * table). The parts are held in a tuple while they are read. */
static PyObject *
merge_lines(PyObject *module, PyObject *arg)
{
    PyObject *parts = NULL;
    Lines *merged = NULL;
    if ((PyList_Check(arg) || PyTuple_Check(arg)) && (parts = PySequence_Tuple(arg)) == NULL)
        return NULL;
    Py_ssize_t bytes = 0, lines = 0, subjects = 0, k = 0;
    Py_ssize_t n = parts == NULL ? 0 : PyTuple_GET_SIZE(parts);
    for (; k < n && Py_IS_TYPE(PyTuple_GET_ITEM(parts, k), &LinesType); k++) {
        const Lines *part = (const Lines *)PyTuple_GET_ITEM(parts, k);
        bytes += part->used;
        lines += part->n;
        subjects += PyList_GET_SIZE(part->subjects);
    }
    if (n == 0 || k < n) {
        PyErr_SetString(PyExc_TypeError, "merge_lines(parts: list[Lines] | tuple[Lines, ...]): "
                                         "one Lines or more");
        goto done;
    }
    /* lines_new sizes the per-subject array by lines: each subject has one at least */
    if ((merged = lines_new(bytes, Py_MAX(lines, subjects))) == NULL)
        goto done;
    merged->last = -1;
    for (k = 0; k < n; k++)
        if (lines_append(merged, (Lines *)PyTuple_GET_ITEM(parts, k)) < 0) {
            Py_CLEAR(merged);
            break;
        }
done:
    Py_XDECREF(parts);
    return (PyObject *)merged;
}

/* ------------------------------------------------------------------ one batch */

typedef struct {
    PyObject *now;               /* the batch's clock reading (float) */
    double now_s;
    PyObject *tally, *lines, *bad;
    Lines *rendered;             /* flow_body: lines go here (lines NULL), else to lines */
    PyObject *flow;              /* bound Enricher._flow: the Python path */
    PyObject *refine;            /* bound Enricher._refine */
    PyObject *addresses;         /* dict */
    PyObject *known_address;     /* bound Enricher._known_address (flow_body), or NULL */
    PyObject *resolver;
    PyObject *resolve;           /* bound resolver.resolve */
    PyObject *resolved;          /* resolver._cache (dict) or NULL */
    /* resolver.generation (see resolve_at): known, and to be read again after Python
     * code ran that may have resolved something (a miss may empty _cache) */
    Py_ssize_t generation;
    int has_generation, generation_stale;
    PyObject *sockets, *locals;  /* SocketTable._sockets, ._locals */
    PyObject *dialled;           /* SocketTable._dialled */
    PyObject *entries;           /* NameCache._entries */
    PyObject *answers;           /* NameCache._answers: address → entries answering it */
    Py_ssize_t names_generation; /* NameCache.generation */
    PyObject *names_lookup;      /* bound NameCache.lookup */
    /* calls into Python code that may change NameCache's entries (NameCache.lookup,
     * the Python path): a Probe made ahead is good while this has not moved */
    Py_ssize_t names_touched;
    PyObject *seen;              /* Observers.seen */
    PyObject *observers_active;  /* bound Observers.active: when seen is not within ttl */
    long long observer_ttl_ns;   /* Observers.ttl_ns */
    PyObject *in_minute;         /* bound Observers.in_minute */
    PyObject *minutes;           /* Observers.minutes: node → array('i') of minutes */
    /* the (observer, minute) last given to in_minute: the records of a raw batch are
     * one node's and minutes apart at most, so it is called once or twice a batch
     * (forgotten when the Python path ran: it may have added and evicted) */
    PyObject *minute_node;
    long long minute_last;
    double ttl_min;              /* NameCache.ttl_min */
    /* json_of of the few str objects every record renders (observer, end reason,
     * network type, direction), by identity: the same objects come again and again */
    PyObject *json_keys[8], *json_values[8];
    int json_used;
    Py_ssize_t n_in, n_out, n_dropped, process_hits, dns_hits, dns_misses;
    Py_ssize_t kind_counts[N_KINDS];
} Batch;

/* A slot of flow_body's address table (see "raw bodies" below). */
#define KEY_MAX 46
/* One end's identity and what a record reads of it: new references when `owned`, else
 * borrowed from a slot of the address table that keeps them (see end_at). */
typedef struct {
    PyObject *ident, *home, *token, *source_json, *destination_json;
    int kind;  /* its kind's index in kinds (the lookups counter) */
    int owned;
} End;

static void
end_clear(End *e)
{
    if (!e->owned) {
        *e = (End){0};
        return;
    }
    Py_CLEAR(e->ident);
    Py_CLEAR(e->home);
    Py_CLEAR(e->token);
    Py_CLEAR(e->source_json);
    Py_CLEAR(e->destination_json);
}

typedef struct Slot {
    uint64_t hash; /* 0: free */
    PyObject *entry;          /* the _addresses entry (held), and its parts (borrowed): */
    PyObject *canonical, *network;
    /* the address's identity as resolver._cache had it, with its parts (kept.ident NULL:
     * none); Identity attributes are never reassigned, so the parts stay its own */
    End kept;
    Py_ssize_t generation; /* ... at this resolver.generation */
    /* the NameCache.generation at which no entry answered this address (-1: not known):
     * until an address gets its first entry, lookups of this one miss (name_json) */
    Py_ssize_t unanswered;
    int answered; /* an entry answered this address once (name_json) */
    uint8_t len, alen;
    uint8_t key_canonical; /* key is the canonical str's text (merge_owner compares keys) */
    char key[KEY_MAX + 1];
    uint8_t packed[16];    /* the entry's packed bytes, alen of them */
} Slot;

/* A probe of NameCache._entries made a few records ahead of its record (look_near): the
 * entry (client, address) had, while Batch.names_touched was `touched`. name_json takes
 * it instead of probing again while no Python code that may change the entries ran
 * since; the references keep the three objects alive, so identity compares them. */
typedef struct Probe {
    PyObject *client, *address; /* new references; client NULL: no probe made */
    PyObject *entry;            /* new reference, NULL: no entry */
    Py_ssize_t touched;
    struct NameWay *way; /* the name way the entry was found in or kept in, or NULL */
} Probe;

/* The fields of one raw record that this core can handle (borrowed references). */
typedef struct {
    PyObject *observer, *reason, *proto_obj, *src_text, *dst_text, *sport_obj, *dport_obj;
    long long start_ns, end_ns, fwd_b, fwd_p, rev_b, rev_p;
    long proto, sport, dport, flags;
    int initiator;
    PyObject *src, *dst, *network, *src_packed, *dst_packed; /* from the address cache */
    const uint8_t *src_bytes, *dst_bytes; /* the packed addresses, alen bytes each */
    Py_ssize_t alen;
    Slot *src_slot, *dst_slot; /* flow_body's address table slots, or NULL */
    const struct Probe *probes; /* flow_body's name probes for this record (2), or NULL */
    /* flow_body's observer table entry: the observer's JSON (NULL: json_cached) */
    PyObject *observer_json;
} Raw;

/* An exact int in [lo, hi] (0 when not: the record goes to the Python path). */
static int
small_int(PyObject *obj, long lo, long hi, long *out)
{
    if (obj == NULL || !PyLong_CheckExact(obj))
        return 0;
    int overflow;
    long v = PyLong_AsLongAndOverflow(obj, &overflow);
    if (overflow || v < lo || v > hi)
        return 0; /* no exception is set on overflow */
    *out = v;
    return 1;
}

/* An exact int that fits in 64 bits (and is >= 0 when `counter`). */
/* A report's first and last packet times: unix ns, not negative, the last not before
 * the first (enriching._flow_fields: such a record is a bad one, dead-lettered; an
 * "end" before the "start" gave a negative event.duration downstream). */
static inline int
ordered_times(long long start_ns, long long end_ns)
{
    return start_ns >= 0 && end_ns >= start_ns;
}

static int
wide_int(PyObject *obj, int counter, long long *out)
{
    if (obj == NULL || !PyLong_CheckExact(obj))
        return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (counter && v < 0))
        return 0;
    *out = v;
    return 1;
}

static int entry_parts(PyObject *found, PyObject **canonical, PyObject **network,
                       PyObject **packed);

/* A cached canonical address: (canonical text, network.type, packed bytes). */
static int
cached_address(PyObject *addresses, PyObject *text, PyObject **canonical, PyObject **network,
               PyObject **packed)
{
    PyObject *found = PyDict_GetItemWithError(addresses, text);
    if (found == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return entry_parts(found, canonical, network, packed);
}

/* The parts of an _addresses entry (borrowed), when it has the expected shape. */
static int
entry_parts(PyObject *found, PyObject **canonical, PyObject **network, PyObject **packed)
{
    if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 3)
        return 0;
    *canonical = PyTuple_GET_ITEM(found, 0);
    *network = PyTuple_GET_ITEM(found, 1);
    *packed = PyTuple_GET_ITEM(found, 2);
    if (!PyUnicode_CheckExact(*canonical) || !PyUnicode_CheckExact(*network) ||
        !PyBytes_CheckExact(*packed))
        return 0;
    Py_ssize_t n = PyBytes_GET_SIZE(*packed);
    return n == 4 || n == 16;
}

/* Both ends of the same family, by their network types and packed lengths (read_raw's
 * and read_line's addresses alike): 1 yes, 0 no (a bad record), -1 error. */
static int
same_family(PyObject *src_network, PyObject *dst_network, Py_ssize_t src_len,
            Py_ssize_t dst_len)
{
    int rc = PyUnicode_Compare(src_network, dst_network);
    if (rc == -1 && PyErr_Occurred())
        return -1;
    return rc == 0 && src_len == dst_len;
}

/* read_raw's packed addresses as flow_body's (bytes and length). */
static void
packed_bytes(Raw *r)
{
    r->src_bytes = (const uint8_t *)PyBytes_AS_STRING(r->src_packed);
    r->dst_bytes = (const uint8_t *)PyBytes_AS_STRING(r->dst_packed);
    r->alen = PyBytes_GET_SIZE(r->src_packed);
}

#define GET(key) PyDict_GetItemWithError(raw, key)

#define MAX_NODE_NAME 253 /* enriching.MAX_NODE_NAME: longer (or empty) is a bad record */

/* Whether an observer of n characters may be a node's name (else: the Python path). */
static int
node_name_length(Py_ssize_t n)
{
    return n > 0 && n <= MAX_NODE_NAME;
}

/* Read and check one raw record. 1: this core handles it; 0: the Python path does;
 * -1: error. Nothing is changed either way. */
static int
read_raw(Batch *b, PyObject *raw, Raw *r)
{
    if (!PyDict_CheckExact(raw))
        return 0;
    r->src_slot = r->dst_slot = NULL;
    r->probes = NULL;
    r->observer_json = NULL;
    PyObject *v;
    if ((v = GET(k_nat_dst)) != NULL)
        return 0; /* DNAT'ed: the Service's name and the client's socket (Python path) */
    if (PyErr_Occurred())
        return -1;
    r->observer = GET(k_observer);
    r->reason = GET(k_end_reason);
    r->src_text = GET(k_src);
    r->dst_text = GET(k_dst);
    if (PyErr_Occurred())
        return -1;
    if (r->observer == NULL || !PyUnicode_CheckExact(r->observer) ||
        !node_name_length(PyUnicode_GET_LENGTH(r->observer)) || r->reason == NULL ||
        !PyUnicode_CheckExact(r->reason) || r->src_text == NULL ||
        !PyUnicode_CheckExact(r->src_text) || r->dst_text == NULL ||
        !PyUnicode_CheckExact(r->dst_text))
        return 0;
    r->proto_obj = GET(k_proto);
    r->sport_obj = GET(k_sport);
    r->dport_obj = GET(k_dport);
    if (!small_int(r->proto_obj, 0, 255, &r->proto) ||
        !small_int(r->sport_obj, 0, 65535, &r->sport) ||
        !small_int(r->dport_obj, 0, 65535, &r->dport) ||
        !wide_int(GET(k_start_ns), 0, &r->start_ns) || !wide_int(GET(k_end_ns), 0, &r->end_ns) ||
        !wide_int(GET(k_bytes), 1, &r->fwd_b) || !wide_int(GET(k_packets), 1, &r->fwd_p) ||
        !wide_int(GET(k_rbytes), 1, &r->rev_b) || !wide_int(GET(k_rpackets), 1, &r->rev_p))
        return PyErr_Occurred() ? -1 : 0;
    if (!ordered_times(r->start_ns, r->end_ns))
        return 0; /* a bad record: the Python path names it */
    r->flags = 0;
    if ((v = GET(k_tcp_flags)) != NULL) {
        if (!small_int(v, 0, 255, &r->flags))
            return 0;
    }
    r->initiator = 0;
    if ((v = GET(k_initiator)) != NULL) {
        if (!PyBool_Check(v))
            return 0;
        r->initiator = v == Py_True;
    }
    if ((v = GET(k_ifindex)) != NULL && !PyLong_CheckExact(v))
        return 0;
    if (PyErr_Occurred())
        return -1;
    int known = PySet_Contains(end_reasons, r->reason);
    if (known <= 0)
        return known;
    PyObject *dst_network;
    int rc = cached_address(b->addresses, r->src_text, &r->src, &r->network, &r->src_packed);
    if (rc <= 0)
        return rc;
    rc = cached_address(b->addresses, r->dst_text, &r->dst, &dst_network, &r->dst_packed);
    if (rc <= 0)
        return rc;
    packed_bytes(r);
    return same_family(r->network, dst_network, PyBytes_GET_SIZE(r->src_packed),
                       PyBytes_GET_SIZE(r->dst_packed));
}

#undef GET

/* str equality (both exact str). -1 on error. */
static int
str_eq(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    int rc = PyUnicode_Compare(a, b);
    if (rc == -1 && PyErr_Occurred())
        return -1;
    return rc == 0;
}

/* resolver.resolve(address), through its cache when it has one. New reference. */
static PyObject *
resolve(Batch *b, PyObject *address)
{
    if (b->resolved != NULL) {
        PyObject *found = PyDict_GetItemWithError(b->resolved, address);
        if (found != NULL && found != Py_None)
            return Py_NewRef(found);
        if (PyErr_Occurred())
            return NULL;
    }
    b->generation_stale = 1; /* resolve() may empty the cache (Inventory.generation) */
    return PyObject_CallOneArg(b->resolve, address);
}

/* resolver.generation read again when Python code ran since it was read. */
static int
fresh_generation(Batch *b)
{
    if (!b->generation_stale)
        return 0;
    PyObject *g = PyObject_GetAttr(b->resolver, s_generation);
    if (g == NULL)
        return -1;
    b->generation = PyLong_AsSsize_t(g);
    Py_DECREF(g);
    if (b->generation == -1 && PyErr_Occurred())
        return -1;
    b->generation_stale = 0;
    return 0;
}

static int
bytes_attr(PyObject *obj, PyObject *name, PyObject **out)
{
    *out = PyObject_GetAttr(obj, name);
    if (*out == NULL)
        return -1;
    if (!PyBytes_Check(*out)) {
        PyErr_Format(PyExc_TypeError, "%U must be bytes", name);
        Py_CLEAR(*out);
        return -1;
    }
    return 0;
}

/* An identity's parts (End). Steals ident. */
static int
end_of(PyObject *ident, End *e)
{
    *e = (End){.ident = ident, .owned = 1};
    if (ident == NULL)
        return -1;
    PyObject *kind = PyObject_GetAttr(ident, s_kind);
    if (kind == NULL)
        goto fail;
    e->kind = -1;
    for (int i = 0; i < N_KINDS && e->kind < 0; i++) {
        int eq = kind == kinds[i] ? 1 : PyObject_RichCompareBool(kind, kinds[i], Py_EQ);
        if (eq < 0) {
            Py_DECREF(kind);
            goto fail;
        }
        if (eq)
            e->kind = i;
    }
    if (e->kind < 0) {
        PyErr_SetObject(PyExc_KeyError, kind); /* as the Python path's lookups[kind] */
        Py_DECREF(kind);
        goto fail;
    }
    Py_DECREF(kind);
    if ((e->home = PyObject_GetAttr(ident, s_home)) == NULL ||
        (e->token = PyObject_GetAttr(ident, s_token)) == NULL ||
        bytes_attr(ident, s_source_json, &e->source_json) < 0 ||
        bytes_attr(ident, s_destination_json, &e->destination_json) < 0)
        goto fail;
    return 0;
fail:
    end_clear(e);
    return -1;
}

/* A copy of an End that owns its references. */
static void
end_copy(End *to, const End *from)
{
    *to = *from;
    to->owned = 1;
    Py_INCREF(to->ident);
    Py_INCREF(to->home);
    Py_INCREF(to->token);
    Py_INCREF(to->source_json);
    Py_INCREF(to->destination_json);
}

/* resolve() and end_of, through the identity a slot of the address table keeps: the one
 * resolver._cache held for the address, valid while resolver.generation is the one it
 * was read at (the resolver bumps it whenever _cache loses an entry). With `borrow`, a
 * kept End is lent (no reference taken: cache lines not touched): the caller does not
 * let this slot's End be replaced while it holds the loan — only end_at replaces it, and
 * a record's two ends have two slots, or (one address at both ends) the source's End is
 * an owned copy. */
static int
end_at(Batch *b, Slot *slot, PyObject *address, End *e, int borrow)
{
    if (slot == NULL || !b->has_generation || b->resolved == NULL)
        return end_of(resolve(b, address), e);
    if (fresh_generation(b) < 0)
        return -1;
    if (slot->kept.ident != NULL && slot->generation == b->generation) {
        if (borrow) {
            *e = slot->kept;
            e->owned = 0;
        } else {
            end_copy(e, &slot->kept);
        }
        return 0;
    }
    PyObject *found = PyDict_GetItemWithError(b->resolved, address);
    if (found != NULL && found != Py_None) {
        if (end_of(Py_NewRef(found), e) < 0)
            return -1;
        end_clear(&slot->kept);
        end_copy(&slot->kept, e);
        slot->generation = b->generation;
        return 0;
    }
    if (PyErr_Occurred())
        return -1;
    b->generation_stale = 1;
    return end_of(PyObject_CallOneArg(b->resolve, address), e);
}

/* end_at, and the end's kind counted: lookups[kind] += 1 (counted here, added to the
 * tally's dict at the end). */
static int
resolve_at(Batch *b, Slot *slot, PyObject *address, End *e, int borrow)
{
    if (end_at(b, slot, address, e, borrow) < 0)
        return -1;
    b->kind_counts[e->kind]++;
    return 0;
}

/* SocketTable.find(observer, proto, laddr, lport, raddr, rport): the owner (new
 * reference), or NULL with no exception when there is none (find_end asks only while
 * some socket is known). */
static PyObject *
find(Batch *b, PyObject *observer, PyObject *proto, PyObject *laddr, PyObject *lport,
     PyObject *raddr, PyObject *rport)
{
    PyObject *key = PyTuple_Pack(6, observer, proto, laddr, lport, raddr, rport);
    if (key == NULL)
        return NULL;
    PyObject *owner = PyDict_GetItemWithError(b->sockets, key);
    PyObject *table = b->sockets;
    if (owner == NULL && !PyErr_Occurred() && PyDict_GET_SIZE(b->locals) > 0) {
        Py_DECREF(key);
        key = PyTuple_Pack(4, observer, proto, laddr, lport);
        if (key == NULL)
            return NULL;
        owner = PyDict_GetItemWithError(b->locals, key);
        table = b->locals;
    }
    if (owner == NULL || owner == Py_None) {
        Py_DECREF(key);
        return NULL;
    }
    Py_INCREF(owner);
    PyObject *moved = PyObject_CallMethodOneArg(table, s_move_to_end, key);
    Py_DECREF(key);
    if (moved == NULL) {
        Py_DECREF(owner);
        return NULL;
    }
    Py_DECREF(moved);
    return owner;
}

/* The process behind one end: on the reporting node, else on the end's own node. */
static PyObject *
find_end(Batch *b, PyObject *observer, PyObject *home, PyObject *proto, PyObject *laddr,
         PyObject *lport, PyObject *raddr, PyObject *rport)
{
    if (PyDict_GET_SIZE(b->sockets) == 0 && PyDict_GET_SIZE(b->locals) == 0)
        return NULL; /* no socket known: nothing to find on either node */
    PyObject *owner = find(b, observer, proto, laddr, lport, raddr, rport);
    if (owner != NULL || PyErr_Occurred())
        return owner;
    if (!PyUnicode_Check(home) || PyUnicode_GET_LENGTH(home) == 0)
        return NULL;
    int same = str_eq(home, observer);
    if (same != 0)
        return NULL; /* same node (or an error, which stays set) */
    return find(b, home, proto, laddr, lport, raddr, rport);
}

/* Whether the socket at local (laddr, lport) dialled some remote on its own node, when
 * that node is neither the reporting one nor the other end's (SocketTable._dialled holds
 * its key): 1 yes, 0 no, -1 error. The record is then the Python path's (Enricher._via:
 * a Service the client's node DNAT'ed, reported by the backend's node). */
static int
dialled_end(Batch *b, PyObject *observer, PyObject *home, PyObject *other_home,
            PyObject *proto, PyObject *laddr, PyObject *lport)
{
    if (!PyUnicode_Check(home) || PyUnicode_GET_LENGTH(home) == 0 ||
        !PyUnicode_Check(other_home) || PyUnicode_GET_LENGTH(other_home) == 0)
        return 0;
    int same = str_eq(home, observer);
    if (same == 0)
        same = str_eq(home, other_home);
    if (same != 0)
        return same < 0 ? -1 : 0;
    PyObject *key = PyTuple_Pack(4, home, proto, laddr, lport);
    if (key == NULL)
        return -1;
    int found = PyDict_Contains(b->dialled, key);
    Py_DECREF(key);
    return found;
}

/* The end as Enricher._refine(ident, proc) makes it when the socket names a container
 * (else unchanged). */
static int
refine(Batch *b, End *e, PyObject *proc)
{
    PyObject *cid = PyObject_GetAttr(proc, s_container_id);
    if (cid == NULL)
        return -1;
    int named = !(PyUnicode_CheckExact(cid) && PyUnicode_GET_LENGTH(cid) == 0);
    Py_DECREF(cid);
    if (!named)
        return 0;
    b->generation_stale = 1;
    PyObject *refined = PyObject_CallFunctionObjArgs(b->refine, e->ident, proc, NULL);
    if (refined == e->ident) {
        Py_DECREF(refined);
        return 0;
    }
    end_clear(e);
    return end_of(refined, e);
}

/* Whether the socket events say `this` end opened the connection (enriching._initiated). */
static int
initiated(PyObject *this, PyObject *other)
{
    for (int side = 0; side < 2; side++) {
        PyObject *proc = side == 0 ? this : other;
        if (proc == NULL)
            continue;
        PyObject *event = PyObject_GetAttr(proc, s_event);
        if (event == NULL)
            return -1;
        int eq = PyObject_RichCompareBool(event, side == 0 ? s_connect : s_accept, Py_EQ);
        Py_DECREF(event);
        if (eq != 0)
            return eq;
    }
    return 0;
}

/* enriching.event_time: an event time held in [0, 2^63) (a long long is below). */
static inline long long
event_time(long long at)
{
    return at < 0 ? 0 : at;
}

/* observers.seen[node] as a long long: 1, 0 (no entry), -1 (an error), 2 (a value that
 * is not an int in [0, 2^63): Observers.active decides then). */
static int
seen_at(Batch *b, PyObject *node, long long *at)
{
    PyObject *seen = PyDict_GetItemWithError(b->seen, node);
    if (seen == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyLong_CheckExact(seen))
        return 2;
    int overflow;
    *at = PyLong_AsLongLongAndOverflow(seen, &overflow);
    if (*at == -1 && PyErr_Occurred())
        return -1;
    return overflow || *at < 0 ? 2 : 1;
}

/* Observers.active(node, at), in Python: what the minutes say. */
static int
active_by_minutes(Batch *b, PyObject *node, long long at)
{
    PyObject *when = PyLong_FromLongLong(at);
    PyObject *yes = when == NULL ? NULL
                                 : PyObject_CallFunctionObjArgs(b->observers_active, node,
                                                                when, NULL);
    Py_XDECREF(when);
    int result = yes == NULL ? -1 : PyObject_IsTrue(yes);
    Py_XDECREF(yes);
    return result;
}

/* Observers.active(node, at): node's newest event within ttl_ns of `at` (an
 * event_time), |at - seen| < ttl_ns — both in [0, 2^63), so the difference fits; else
 * (a backlog's report, an event far ahead) Observers.active reads the minutes. */
static int
active(Batch *b, PyObject *node, long long at)
{
    long long seen;
    int found = seen_at(b, node, &seen);
    if (found == 2)
        return active_by_minutes(b, node, at);
    if (found <= 0)
        return found;
    long long distance = at > seen ? at - seen : seen - at;
    return distance < b->observer_ttl_ns ? 1 : active_by_minutes(b, node, at);
}

/* The observer's newest event (Observers.saw, as enriching._flow writes it inline):
 * observers.seen[observer] = at when it has none or an older one. */
static int
observe_newest(Batch *b, PyObject *observer, long long at)
{
    long long seen;
    int found = seen_at(b, observer, &seen);
    if (found < 0)
        return -1;
    if (found == 1 && at <= seen)
        return 0;
    if (found == 2) { /* as Python compares: at > seen (any int) */
        PyObject *when = PyLong_FromLongLong(at);
        PyObject *old = when == NULL ? NULL : PyDict_GetItemWithError(b->seen, observer);
        int later = old == NULL ? -1 : PyObject_RichCompareBool(when, old, Py_GT);
        Py_XDECREF(when);
        if (later <= 0)
            return later;
    }
    PyObject *when = PyLong_FromLongLong(at);
    if (when == NULL)
        return -1;
    int failed = PyDict_SetItem(b->seen, observer, when);
    Py_DECREF(when);
    return failed;
}

#define MINUTE_NS 60000000000LL /* enriching.MINUTE_NS */

/* Whether observers.minutes[observer] ends with `minute` (Observers.in_minute would find
 * it there and change nothing): 1 yes; 0 no, or not the array('i') Observers keeps
 * (in_minute is asked then); -1 an error. */
static int
minute_is_last(Batch *b, PyObject *observer, long long minute)
{
    PyObject *minutes = PyDict_GetItemWithError(b->minutes, observer);
    if (minutes == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_buffer view;
    if (PyObject_GetBuffer(minutes, &view, PyBUF_FORMAT) < 0) {
        PyErr_Clear(); /* not a buffer: in_minute decides */
        return 0;
    }
    Py_ssize_t n = view.itemsize == (Py_ssize_t)sizeof(int) && view.format != NULL &&
                           strcmp(view.format, "i") == 0
                       ? view.len / (Py_ssize_t)sizeof(int)
                       : 0;
    int last = n > 0 && ((const int *)view.buf)[n - 1] == minute;
    PyBuffer_Release(&view);
    return last;
}

/* The observer's minute (Observers.saw): given to Observers.in_minute, which adds it to
 * observers.minutes[observer] when it is not there, unless it was the last one given
 * or is the last there. */
static int
observe_minute(Batch *b, PyObject *observer, long long minute)
{
    if (observer == b->minute_node && minute == b->minute_last)
        return 0;
    int last = minute_is_last(b, observer, minute);
    if (last != 0)
        return last < 0 ? -1 : 0;
    PyObject *m = PyLong_FromLongLong(minute);
    if (m == NULL)
        return -1;
    PyObject *added = PyObject_CallFunctionObjArgs(b->in_minute, observer, m, NULL);
    Py_DECREF(m);
    if (added == NULL)
        return -1;
    Py_DECREF(added);
    Py_XSETREF(b->minute_node, Py_NewRef(observer));
    b->minute_last = minute;
    return 0;
}

/* Observers.saw(observer, at) for a record judged at `at` (an event_time). */
static int
observe(Batch *b, PyObject *observer, long long at)
{
    if (observe_newest(b, observer, at) < 0)
        return -1;
    return observe_minute(b, observer, at / MINUTE_NS);
}

/* The key (client, address) to probe NameCache._entries with: one tuple, reused while
 * nothing else holds it (a probe keeps no reference to the key it is given). New
 * reference. */
static PyObject *scratch_pair;

static PyObject *
pair_of(PyObject *a, PyObject *b)
{
    if (scratch_pair == NULL || Py_REFCNT(scratch_pair) != 1) {
        Py_XSETREF(scratch_pair, PyTuple_Pack(2, a, b));
        return Py_XNewRef(scratch_pair);
    }
    PyObject *old_a = PyTuple_GET_ITEM(scratch_pair, 0), *old_b = PyTuple_GET_ITEM(scratch_pair, 1);
    PyTuple_SET_ITEM(scratch_pair, 0, Py_NewRef(a));
    PyTuple_SET_ITEM(scratch_pair, 1, Py_NewRef(b));
    Py_DECREF(old_a);
    Py_DECREF(old_b);
    return Py_NewRef(scratch_pair);
}

static PyObject *json_of(PyObject *text);

/* The name ways: what look_near found in NameCache._entries, by the texts' hashes.
 *
 * A hit in _entries is a chain of misses the look-ahead cannot ask for early — the
 * dict's index, its entry, the key tuple and its items — because the key is known only
 * once both slots are (look_near). The ways remember the entry list a probe found for a
 * (client, address), with the canonical client and address it was found for (held, and
 * compared by identity), under a tag mixed from the two texts' address-table hashes, in
 * sets of NAME_WAYS that share one 64-byte line: look_far asks for a record's set as it
 * asks for its slots, and look_near takes the entry from there instead of probing.
 *
 * They rely on NameCache's side of it (names.py): an entry list stays the one under its
 * key as long as it has its four items — learning a key again updates its entry in
 * place, and an entry dropped (evicted, or expired by lookup) is emptied. So an emptied
 * entry found in a way goes the NameCache.lookup way in name_json, which answers for the
 * key as it is now, and leaves its way. Negative answers are not kept: an address no
 * entry answers is the slot's business (unanswered), and a client that did not ask for an
 * answered address is probed in _entries every time. The ways are emptied when flow_body
 * is handed another _entries dict; at most NAME_SETS * NAME_WAYS entries (and their
 * client and address str) are held. */
typedef struct NameWay {
    uint64_t tag; /* 0: empty */
    PyObject *client, *address, *entry;
} NameWay;
#define NAME_SETS (1 << 15)
#define NAME_WAYS 2 /* 2 x 32 bytes: a set per cache line */
static NameWay *name_ways;          /* NAME_SETS * NAME_WAYS, 64-byte aligned, or NULL */
static PyObject *name_ways_entries; /* the _entries dict they were filled from (held) */

static inline uint64_t
name_tag(uint64_t client_hash, uint64_t address_hash)
{
    uint64_t x = (client_hash ^ (address_hash * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL;
    return (x ^ (x >> 31)) | 1;
}

static inline NameWay *
name_set(uint64_t tag)
{
    return &name_ways[((tag >> 32) & (NAME_SETS - 1)) * NAME_WAYS];
}

static void
name_way_clear(NameWay *w)
{
    w->tag = 0;
    Py_CLEAR(w->client);
    Py_CLEAR(w->address);
    Py_CLEAR(w->entry);
}

/* Empty the ways, and keep them for `entries` (held) from now on. */
static void
name_ways_reset(PyObject *entries)
{
    for (size_t i = 0; name_ways != NULL && i < (size_t)NAME_SETS * NAME_WAYS; i++)
        if (name_ways[i].tag)
            name_way_clear(&name_ways[i]);
    Py_XSETREF(name_ways_entries, Py_XNewRef(entries));
}

/* The way holding (client, address) under `tag`, moved to the front of its set; NULL:
 * none. */
static NameWay *
name_way_find(uint64_t tag, PyObject *client, PyObject *address)
{
    if (name_ways == NULL)
        return NULL;
    NameWay *set = name_set(tag);
    for (int w = 0; w < NAME_WAYS; w++) {
        if (set[w].tag == tag && set[w].client == client && set[w].address == address) {
            if (w > 0) { /* most recent first: the last way is the one given up */
                NameWay hit = set[w];
                memmove(&set[1], &set[0], (size_t)w * sizeof(NameWay));
                set[0] = hit;
            }
            return &set[0];
        }
    }
    return NULL;
}

/* Keep entry for (client, address) under `tag`, in front of its set (giving up its last
 * way). The way, or NULL: no memory for the ways (no exception; it is only a cache). */
static NameWay *
name_way_keep(uint64_t tag, PyObject *client, PyObject *address, PyObject *entry)
{
    if (name_ways == NULL) {
        size_t size = (size_t)NAME_SETS * NAME_WAYS * sizeof(NameWay);
        name_ways = aligned_alloc(64, size);
        if (name_ways == NULL)
            return NULL;
        memset(name_ways, 0, size);
    }
    NameWay *set = name_set(tag);
    name_way_clear(&set[NAME_WAYS - 1]);
    memmove(&set[1], &set[0], (NAME_WAYS - 1) * sizeof(NameWay));
    set[0] = (NameWay){tag, Py_NewRef(client), Py_NewRef(address), Py_NewRef(entry)};
    return &set[0];
}

/* Give up `way` if it still holds `entry` (another probe may have taken it since). */
static void
name_way_drop(NameWay *way, PyObject *entry)
{
    if (way != NULL && way->tag && way->entry == entry)
        name_way_clear(way);
}

/* NameCache.lookup(client, address, now), as the name's JSON form: a new reference
 * (bytes) or NULL, no exception. Its steps, on the cache's own dicts: an address no
 * entry answers is a miss (kept in its slot, when it has one, until
 * NameCache.generation moves; an address once answered skips that probe: the entry's
 * own is then the test); in the OrderedDict of (client, address) → [name, expiry, JSON,
 * used], a live entry is marked used (second-chance eviction) and lives at least
 * ttl_min from now; an expired one, or another shape, is left to the method, which
 * deletes it, and its name rendered by json_of. `probes` (flow_body's, or NULL): the
 * entry probed ahead for this (client, address), when still good, instead of the
 * OrderedDict's. */
static PyObject *
name_json(Batch *b, PyObject *client, PyObject *address, Slot *slot, const Probe *probes)
{
    if (PyDict_GET_SIZE(b->entries) == 0)
        return NULL;
    if (slot != NULL && slot->unanswered == b->names_generation)
        return NULL;
    if (slot == NULL || !slot->answered) {
        int answered = PyDict_Contains(b->answers, address);
        if (answered <= 0) { /* no entry answers this address: a miss (or an error) */
            if (answered == 0 && slot != NULL)
                slot->unanswered = b->names_generation;
            return NULL;
        }
        if (slot != NULL)
            slot->answered = 1;
    }
    PyObject *key = NULL, *json = NULL, *entry = NULL;
    const Probe *used = NULL;
    for (int k = 0; probes != NULL && k < 2; k++) {
        const Probe *p = &probes[k];
        if (p->client == client && p->address == address && p->touched == b->names_touched) {
            if (p->entry == NULL)
                return NULL;
            entry = Py_NewRef(p->entry);
            used = p;
            break;
        }
    }
    if (entry == NULL) {
        if ((key = pair_of(client, address)) == NULL)
            return NULL;
        entry = PyDict_GetItemWithError(b->entries, key);
        if (entry == NULL)
            goto done;
        Py_INCREF(entry);
    }
    /* the shape NameCache.learn writes: [name, expiry, JSON, used] */
    int learned = PyList_CheckExact(entry) && PyList_GET_SIZE(entry) == 4 &&
                  PyBytes_CheckExact(PyList_GET_ITEM(entry, 2));
    double expiry = learned ? PyFloat_AsDouble(PyList_GET_ITEM(entry, 1)) : 0;
    if (expiry == -1.0 && PyErr_Occurred())
        goto release;
    if (!learned || expiry <= b->now_s) {
        /* emptied (dropped by NameCache), or expired and about to be: not a way's any
         * more (name_way_drop checks the way still holds this entry) */
        if (used != NULL)
            name_way_drop(used->way, entry);
        b->names_touched++;
        PyObject *name = PyObject_CallFunctionObjArgs(b->names_lookup, client, address,
                                                      b->now, NULL);
        if (name != NULL && name != Py_None)
            json = json_of(name);
        Py_XDECREF(name);
        goto release;
    }
    if (PyList_GET_ITEM(entry, 3) != Py_True &&
        PyList_SetItem(entry, 3, Py_NewRef(Py_True)) < 0) /* steals the reference */
        goto release;
    if (expiry < b->now_s + b->ttl_min) {
        PyObject *later = PyFloat_FromDouble(b->now_s + b->ttl_min);
        if (later == NULL || PyList_SetItem(entry, 1, later) < 0) /* steals later */
            goto release;
    }
    json = Py_NewRef(PyList_GET_ITEM(entry, 2));
release:
    Py_DECREF(entry);
done:
    Py_XDECREF(key);
    return json;
}

/* PyObject_IsTrue, without its calls for the str and bytes every caller has. */
static inline int
truthy(PyObject *obj)
{
    if (PyUnicode_CheckExact(obj))
        return PyUnicode_GET_LENGTH(obj) > 0;
    if (PyBytes_CheckExact(obj))
        return PyBytes_GET_SIZE(obj) > 0;
    return PyObject_IsTrue(obj);
}

/* A str's JSON form: _STRINGS.get(text) or json_str(text). New reference. */
static PyObject *
json_of(PyObject *text)
{
    PyObject *found = PyDict_GetItemWithError(strings, text);
    if (found != NULL && truthy(found) == 1)
        return Py_NewRef(found);
    if (PyErr_Occurred())
        return NULL;
    PyObject *made = PyObject_CallOneArg(json_str, text);
    if (made != NULL && !PyBytes_Check(made)) {
        Py_DECREF(made);
        PyErr_SetString(PyExc_TypeError, "json_str must return bytes");
        return NULL;
    }
    return made;
}

/* json_of(text) through the batch's small cache of recent str objects (by identity;
 * the cache holds them, so an address is never reused while it is in there). */
static PyObject *
json_cached(Batch *b, PyObject *text)
{
    for (int i = 0; i < b->json_used; i++)
        if (b->json_keys[i] == text)
            return Py_NewRef(b->json_values[i]);
    PyObject *json = json_of(text);
    if (json != NULL && b->json_used < (int)(sizeof(b->json_keys) / sizeof(b->json_keys[0]))) {
        b->json_keys[b->json_used] = Py_NewRef(text);
        b->json_values[b->json_used++] = Py_NewRef(json);
    }
    return json;
}

/* One side of process_json(proc): proc.json[side], rendered on first use. New ref. */
static PyObject *
process_part(PyObject *proc, int side)
{
    PyObject *pair = PyObject_GetAttr(proc, s_json);
    if (pair == Py_None) {
        Py_DECREF(pair);
        pair = PyObject_CallOneArg(process_json, proc);
    }
    if (pair == NULL)
        return NULL;
    PyObject *part = NULL;
    if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 &&
        PyBytes_Check(PyTuple_GET_ITEM(pair, side)))
        part = Py_NewRef(PyTuple_GET_ITEM(pair, side));
    else
        PyErr_SetString(PyExc_TypeError, "process_json must return two bytes objects");
    Py_DECREF(pair);
    return part;
}

/* The subject f"{FLOWS}.{source token}.{destination token}", cached. New reference. */
static PyObject *
subject_made(PyObject *src_token, PyObject *dst_token)
{
    PyObject *inner = PyDict_GetItemWithError(subject_cache, src_token);
    if (inner == NULL) {
        if (PyErr_Occurred())
            return NULL;
        if (PyDict_GET_SIZE(subject_cache) >= MAX_SUBJECT_SOURCES)
            PyDict_Clear(subject_cache);
        inner = PyDict_New();
        if (inner == NULL)
            return NULL;
        int rc = PyDict_SetItem(subject_cache, src_token, inner);
        Py_DECREF(inner); /* the cache holds it */
        if (rc < 0)
            return NULL;
    }
    PyObject *subject = PyDict_GetItemWithError(inner, dst_token);
    if (subject != NULL)
        return Py_NewRef(subject);
    if (PyErr_Occurred())
        return NULL;
    subject = PyUnicode_FromFormat("%S.%S.%S", flows_prefix, src_token, dst_token);
    if (subject == NULL || PyDict_SetItem(inner, dst_token, subject) < 0) {
        Py_XDECREF(subject);
        return NULL;
    }
    return subject;
}

/* subject_made's answers by the tokens' identity: a record's two dict probes were 2 %
 * of the steady state in process, and identities share their token str (identities.py,
 * _TOKENS). Direct-mapped; each way holds its tokens, so an address is never reused
 * while it is here, and its subject. Emptied by configure (another prefix). */
#define SUBJECT_WAYS 1024
typedef struct {
    PyObject *src, *dst, *subject;
} SubjectWay;
static SubjectWay subject_ways[SUBJECT_WAYS];

static void
subject_ways_clear(void)
{
    for (int i = 0; i < SUBJECT_WAYS; i++) {
        Py_CLEAR(subject_ways[i].src);
        Py_CLEAR(subject_ways[i].dst);
        Py_CLEAR(subject_ways[i].subject);
    }
}

static PyObject *
subject_of(PyObject *src_token, PyObject *dst_token)
{
    uint64_t x = ((uint64_t)(uintptr_t)src_token * 0x9E3779B97F4A7C15ULL) ^ (uintptr_t)dst_token;
    SubjectWay *w = &subject_ways[((x * 0xBF58476D1CE4E5B9ULL) >> 40) & (SUBJECT_WAYS - 1)];
    if (w->src == src_token && w->dst == dst_token)
        return Py_NewRef(w->subject);
    PyObject *subject = subject_made(src_token, dst_token);
    if (subject == NULL)
        return NULL;
    Py_XSETREF(w->src, Py_NewRef(src_token));
    Py_XSETREF(w->dst, Py_NewRef(dst_token));
    Py_XSETREF(w->subject, Py_NewRef(subject));
    return subject;
}

static int
bucket_append(PyObject *lines, PyObject *subject, PyObject *line)
{
    PyObject *bucket = PyDict_GetItemWithError(lines, subject);
    if (bucket != NULL)
        return PyList_Append(bucket, line);
    if (PyErr_Occurred())
        return -1;
    bucket = PyList_New(1);
    if (bucket == NULL)
        return -1;
    PyList_SET_ITEM(bucket, 0, Py_NewRef(line));
    int rc = PyDict_SetItem(lines, subject, bucket);
    Py_DECREF(bucket);
    return rc;
}

/* ------------------------------------------------------------------ the line */

/* "00" "01" ... "99": two digits at a time */
static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

#define INT_MAX_TEXT 20 /* "-9223372036854775808" */

/* Decimal text of v into buf (room for INT_MAX_TEXT bytes), written in place from its
 * last digit (no copy of a scratch text: a call per number); returns its length. */
static Py_ssize_t
format_int(long long v, char *buf)
{
    static const unsigned long long powers[20] = {
        1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
        100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
        10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
        100000000000000000ULL, 1000000000000000000ULL, 10000000000000000000ULL};
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    /* floor(log10(u)) from the bit length (1233 / 4096 ~ log10(2)), off by one at most */
    int t = ((64 - __builtin_clzll(u | 1)) * 1233) >> 12;
    Py_ssize_t digits = u < 10 ? 1 : t + 1 - (u < powers[t]);
    Py_ssize_t len = (v < 0) + digits;
    char *p = buf + len;
    if (v < 0)
        buf[0] = '-';
    while (u >= 100) {
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        p -= 2;
        memcpy(p, digit_pairs + 2 * r, 2);
    }
    if (u >= 10) {
        p -= 2;
        memcpy(p, digit_pairs + 2 * u, 2);
    } else {
        *--p = (char)('0' + u);
    }
    return len;
}

/* Room for a line of `most` bytes at most under `subject`: in the batch's Lines
 * (flow_body), else in a new bytes object *line. NULL: an error. */
static char *
line_open(Batch *b, PyObject *subject, Py_ssize_t most, PyObject **line)
{
    if (b->rendered != NULL)
        return lines_reserve(b->rendered, subject, most);
    if ((*line = PyBytes_FromStringAndSize(NULL, most)) == NULL)
        return NULL;
    return PyBytes_AS_STRING(*line);
}

/* line_open's line, `len` of its `most` bytes written, added. 0, or -1: an error. */
static int
line_close(Batch *b, PyObject *subject, PyObject *line, Py_ssize_t len, Py_ssize_t most)
{
    if (line == NULL) {
        lines_trim(b->rendered, most - len);
        return 0;
    }
    if (_PyBytes_Resize(&line, len) < 0) /* frees it on failure */
        return -1;
    int rc = bucket_append(b->lines, subject, line);
    Py_DECREF(line);
    return rc;
}

/* At least what render's literal texts add up to (329 bytes with every optional one) */
#define RENDER_TEXT 512

/* The record's line, as render_line writes it, emitted under `subject`: written in
 * place — the literal texts by copies of a known size, the integers by format_int —
 * into room for the longest it can be, then trimmed (pieces joined by a memcpy call
 * each were ~40 calls a line). */
static int
render(Batch *b, PyObject *subject, const Raw *r, const char *cid, PyObject *direction_json, PyObject *reason_json,
       PyObject *network_json, PyObject *observer_json, long sport, long dport,
       long long fwd_b, long long fwd_p, long long rev_b, long long rev_p, PyObject *src_json,
       PyObject *dst_json, PyObject *src_proc_json, PyObject *dst_proc_json,
       PyObject *dst_name_json, PyObject *src_name_json)
{
    PyObject *transport = PyList_GET_ITEM(transports, r->proto);
    PyObject *flags = r->proto == TCP ? PyList_GET_ITEM(flag_tags, r->flags & 0xFF) : NULL;
    PyObject *parts[] = {reason_json, direction_json, network_json, transport, observer_json,
                         flags, src_json, dst_json, src_proc_json, dst_proc_json,
                         dst_name_json, src_name_json};
    Py_ssize_t most = RENDER_TEXT + CID_LEN + 8 * INT_MAX_TEXT;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (parts[i] != NULL)
            most += PyBytes_GET_SIZE(parts[i]);
    PyObject *line = NULL;
    char *start = line_open(b, subject, most, &line), *o = start;
    if (start == NULL)
        return -1;
#define PUT(s) (memcpy(o, s, sizeof(s) - 1), o += sizeof(s) - 1)
#define PUT_B(x) (memcpy(o, PyBytes_AS_STRING(x), (size_t)PyBytes_GET_SIZE(x)), o += PyBytes_GET_SIZE(x))
#define PUT_N(v) (o += format_int(v, o))
    PUT("{\"flow.community_id\":\"");
    memcpy(o, cid, CID_LEN);
    o += CID_LEN;
    PUT("\",\"flow.start_ns\":");
    PUT_N(r->start_ns);
    PUT(",\"flow.end_ns\":");
    PUT_N(r->end_ns);
    PUT(",\"flow.end_reason\":");
    PUT_B(reason_json);
    PUT(",\"flow.direction\":");
    PUT_B(direction_json);
    PUT(",\"network.type\":");
    PUT_B(network_json);
    PUT(",\"network.transport\":");
    PUT_B(transport);
    PUT(",\"source.port\":");
    PUT_N(sport);
    PUT(",\"destination.port\":");
    PUT_N(dport);
    PUT(",\"flow.bytes.delta\":");
    PUT_N(fwd_b);
    PUT(",\"flow.packets.delta\":");
    PUT_N(fwd_p);
    PUT(",\"flow.reverse.bytes.delta\":");
    PUT_N(rev_b);
    PUT(",\"flow.reverse.packets.delta\":");
    PUT_N(rev_p);
    PUT(",\"observer.node.name\":");
    PUT_B(observer_json);
    if (flags != NULL)
        PUT_B(flags);
    PUT(",");
    PUT_B(src_json);
    PUT(",");
    PUT_B(dst_json);
    if (src_proc_json != NULL)
        PUT_B(src_proc_json);
    if (dst_proc_json != NULL)
        PUT_B(dst_proc_json);
    if (dst_name_json != NULL) {
        PUT(",\"destination.domain\":");
        PUT_B(dst_name_json);
    }
    if (src_name_json != NULL) {
        PUT(",\"source.domain\":");
        PUT_B(src_name_json);
    }
    PUT("}\n");
#undef PUT
#undef PUT_B
#undef PUT_N
    return line_close(b, subject, line, o - start, most);
}

/* ------------------------------------------------------------------ one record */

/* enrich's answer for a record that is the Python path's after all (nothing changed but
 * the observer's newest time, which the Python path sets alike, and LRU positions) */
#define DEFERRED 3

/* enriching.merge_owner: the node whose report is kept, or NULL (no home known).
 * Borrowed; -1 in *error when a comparison failed. */
static PyObject *
merge_owner(PyObject *src, long sport, PyObject *dst, long dport, PyObject *src_home,
            PyObject *dst_home, const Slot *src_slot, const Slot *dst_slot, int *error)
{
    int truthy_s = truthy(src_home), truthy_d = truthy(dst_home);
    if (truthy_s < 0 || truthy_d < 0)
        goto failed;
    if (!truthy_s)
        return truthy_d ? dst_home : NULL;
    if (!truthy_d)
        return src_home;
    int same = PyObject_RichCompareBool(src_home, dst_home, Py_EQ);
    if (same < 0)
        goto failed;
    if (same)
        return src_home;
    /* (src, sport) <= (dst, dport) picks the source's node; the slots' keys, in the
     * cache, order as their ASCII str do (the str's text was a cache miss per record) */
    int order;
    if (src == dst)
        order = 0;
    else if (src_slot != NULL && dst_slot != NULL && src_slot->key_canonical &&
             dst_slot->key_canonical) {
        int n = Py_MIN(src_slot->len, dst_slot->len);
        order = memcmp(src_slot->key, dst_slot->key, (size_t)n);
        if (order == 0)
            order = src_slot->len < dst_slot->len ? -1 : src_slot->len > dst_slot->len;
    } else
        order = PyUnicode_Compare(src, dst);
    if (order == -1 && PyErr_Occurred())
        goto failed;
    return (order == 0 ? sport <= dport : order < 0) ? src_home : dst_home;
failed:
    *error = -1;
    return NULL;
}

/* Enricher._duplicate: 1 when this report is another node's copy of the one its
 * merge owner reports (every known home active at `at`), 0 when kept, -1 error. */
static int
duplicate(Batch *b, PyObject *observer, long long at, PyObject *src, long sport,
          PyObject *dst, long dport, PyObject *src_home, PyObject *dst_home,
          const Slot *src_slot, const Slot *dst_slot)
{
    int error = 0;
    PyObject *owner = merge_owner(src, sport, dst, dport, src_home, dst_home, src_slot,
                                  dst_slot, &error);
    if (owner == NULL)
        return error;
    int other = PyObject_RichCompareBool(owner, observer, Py_NE);
    if (other <= 0)
        return other;
    /* not src_home or active(src_home); not dst_home or dst_home == src_home or active */
    int known_s = truthy(src_home), known_d = truthy(dst_home);
    if (known_s < 0 || known_d < 0)
        return -1;
    if (known_s) {
        int a = active(b, src_home, at);
        if (a <= 0)
            return a;
    }
    if (!known_d)
        return 1;
    if (known_s) {
        int same = PyObject_RichCompareBool(dst_home, src_home, Py_EQ);
        if (same != 0)
            return same;
    }
    return active(b, dst_home, at);
}

/* enrich's view of one record: its two ends in the order the line reports them (swapped
 * when the destination opened the connection), each end's identity and the process
 * behind it. Borrowed from the Raw, but for the Ends (see end_clear) and the processes
 * (new references, NULL: none known). */
typedef struct {
    PyObject *src, *dst, *sport_obj, *dport_obj;
    const uint8_t *src_bytes, *dst_bytes;
    Slot *src_slot, *dst_slot;
    long sport, dport;
    long long fwd_b, fwd_p, rev_b, rev_p;
    End src_end, dst_end;
    PyObject *src_proc, *dst_proc;
    PyObject *direction; /* forward or unknown (borrowed) */
    long long at;        /* the observer's newest event: the record's end time */
} Flow;

/* The JSON parts of a record's line that are not its ends', and its subject: new
 * references, NULL when absent (or not made yet). */
typedef struct {
    PyObject *src_pj, *dst_pj;           /* the processes' keys (process_part) */
    PyObject *dst_nj, *src_nj;           /* the ends' DNS names */
    PyObject *reason_j, *dir_j, *net_j, *obs_j;
    PyObject *subject;
} Parts;

/* Both ends' identities, each end's kind counted (resolve_at). */
static inline int
resolve_ends(Batch *b, const Raw *r, Flow *f)
{
    /* the ends borrow what their slots keep; one address at both ends: one slot, which
     * the destination's end_at may refill, so the source's End is owned then */
    int two_slots = r->src_slot != r->dst_slot;
    if (resolve_at(b, r->src_slot, f->src, &f->src_end, two_slots) < 0 ||
        resolve_at(b, r->dst_slot, f->dst, &f->dst_end, 1) < 0)
        return -1;
    return 0;
}

/* The process behind each end (find_end), or NULL: none known. */
static inline int
find_procs(Batch *b, const Raw *r, Flow *f)
{
    f->src_proc = find_end(b, r->observer, f->src_end.home, r->proto_obj, f->src,
                           f->sport_obj, f->dst, f->dport_obj);
    if (f->src_proc == NULL && PyErr_Occurred())
        return -1;
    f->dst_proc = find_end(b, r->observer, f->dst_end.home, r->proto_obj, f->dst,
                           f->dport_obj, f->src, f->sport_obj);
    if (f->dst_proc == NULL && PyErr_Occurred())
        return -1;
    return 0;
}

/* DEFERRED when an end with no process found dialled from a third node (dialled_end),
 * its lookups uncounted; else 0, or -1 error. */
static inline int
via_dialled(Batch *b, const Raw *r, const Flow *f)
{
    if ((f->src_proc != NULL && f->dst_proc != NULL) || PyDict_GET_SIZE(b->dialled) == 0)
        return 0;
    int via = f->src_proc == NULL ? dialled_end(b, r->observer, f->src_end.home,
                                                f->dst_end.home, r->proto_obj, f->src,
                                                f->sport_obj)
                                  : 0;
    if (via == 0 && f->dst_proc == NULL)
        via = dialled_end(b, r->observer, f->dst_end.home, f->src_end.home, r->proto_obj,
                          f->dst, f->dport_obj);
    if (via < 0)
        return -1;
    if (!via)
        return 0;
    /* the Python path: its lookups are counted there */
    b->kind_counts[f->src_end.kind]--;
    b->kind_counts[f->dst_end.kind]--;
    return DEFERRED;
}

/* Each end with a process found, counted and refined: a refined identity has its own
 * parts (a hostNetwork pod's home, not its node's). */
static inline int
refine_ends(Batch *b, Flow *f)
{
    if (f->src_proc != NULL) {
        b->process_hits++;
        if (refine(b, &f->src_end, f->src_proc) < 0)
            return -1;
    }
    if (f->dst_proc != NULL) {
        b->process_hits++;
        if (refine(b, &f->dst_end, f->dst_proc) < 0)
            return -1;
    }
    return 0;
}

/* The ends exchanged, with all they carry (their counters too). */
static inline void
flow_swap(Flow *f)
{
    PyObject *t;
    t = f->src, f->src = f->dst, f->dst = t;
    const uint8_t *u = f->src_bytes;
    f->src_bytes = f->dst_bytes, f->dst_bytes = u;
    Slot *v = f->src_slot;
    f->src_slot = f->dst_slot, f->dst_slot = v;
    t = f->sport_obj, f->sport_obj = f->dport_obj, f->dport_obj = t;
    End e = f->src_end;
    f->src_end = f->dst_end, f->dst_end = e;
    t = f->src_proc, f->src_proc = f->dst_proc, f->dst_proc = t;
    long p = f->sport;
    f->sport = f->dport, f->dport = p;
    long long c;
    c = f->fwd_b, f->fwd_b = f->rev_b, f->rev_b = c;
    c = f->fwd_p, f->fwd_p = f->rev_p, f->rev_p = c;
}

/* The flow's direction: forward when the record says its source initiated it or the
 * socket events do; when they say the destination did, forward with the ends swapped;
 * else unknown. */
static inline int
orient(const Raw *r, Flow *f)
{
    f->direction = forward;
    int forward_known = r->initiator;
    if (!forward_known && (forward_known = initiated(f->src_proc, f->dst_proc)) < 0)
        return -1;
    if (forward_known)
        return 0;
    int reverse = initiated(f->dst_proc, f->src_proc);
    if (reverse < 0)
        return -1;
    if (reverse) /* the destination opened it: swap the ends */
        flow_swap(f);
    else
        f->direction = unknown;
    return 0;
}

/* The name each end knows the other by (name_json), the destination's hit or miss
 * counted. */
static inline int
name_parts(Batch *b, const Raw *r, const Flow *f, Parts *p)
{
    p->dst_nj = name_json(b, f->src, f->dst, f->dst_slot, r->probes);
    if (p->dst_nj == NULL && PyErr_Occurred())
        return -1;
    p->src_nj = name_json(b, f->dst, f->src, f->src_slot, r->probes);
    if (p->src_nj == NULL && PyErr_Occurred())
        return -1;
    if (p->dst_nj != NULL)
        b->dns_hits++;
    else
        b->dns_misses++;
    return 0;
}

/* The processes' parts, the JSON of the record's texts, and the line's subject. */
static inline int
line_parts(Batch *b, const Raw *r, const Flow *f, Parts *p)
{
    if (f->src_proc != NULL && (p->src_pj = process_part(f->src_proc, 0)) == NULL)
        return -1;
    if (f->dst_proc != NULL && (p->dst_pj = process_part(f->dst_proc, 1)) == NULL)
        return -1;
    if ((p->reason_j = json_cached(b, r->reason)) == NULL ||
        (p->dir_j = json_cached(b, f->direction)) == NULL ||
        (p->net_j = json_cached(b, r->network)) == NULL ||
        (p->obs_j = r->observer_json != NULL ? Py_NewRef(r->observer_json)
                                             : json_cached(b, r->observer)) == NULL)
        return -1;
    if ((p->subject = subject_of(f->src_end.token, f->dst_end.token)) == NULL)
        return -1;
    return 0;
}

/* render with the flow's ends and parts; ICMP's ports carry its type and code: 0. */
static inline int
render_flow(Batch *b, const Raw *r, const Flow *f, const Parts *p, const char *cid)
{
    int ported = r->proto != ICMP && r->proto != ICMPV6;
    return render(b, p->subject, r, cid, p->dir_j, p->reason_j, p->net_j, p->obs_j,
                  ported ? f->sport : 0, ported ? f->dport : 0, f->fwd_b, f->fwd_p, f->rev_b,
                  f->rev_p, f->src_end.source_json, f->dst_end.destination_json, p->src_pj,
                  p->dst_pj, p->dst_nj, p->src_nj);
}

/* What enrich holds, released (in the order it always was). */
static inline void
enrich_release(PyObject *held[4], Flow *f, Parts *p)
{
    for (int i = 0; i < 4; i++)
        Py_XDECREF(held[i]);
    end_clear(&f->src_end);
    end_clear(&f->dst_end);
    Py_XDECREF(f->src_proc);
    Py_XDECREF(f->dst_proc);
    Py_XDECREF(p->src_pj);
    Py_XDECREF(p->dst_pj);
    Py_XDECREF(p->dst_nj);
    Py_XDECREF(p->src_nj);
    Py_XDECREF(p->reason_j);
    Py_XDECREF(p->dir_j);
    Py_XDECREF(p->net_j);
    Py_XDECREF(p->obs_j);
    Py_XDECREF(p->subject);
}

/* Enricher._flow for a record read_raw accepted: 1 a line was added, 0 a dropped
 * duplicate, DEFERRED, -1 error. */
static int
enrich(Batch *b, Raw *r)
{
    int result = -1;
    Parts p = {0};
    /* The address cache's entries are held while Python code runs (resolve, _refine,
     * names.lookup): none of it touches that cache, but nothing here relies on it. */
    PyObject *held[4] = {Py_NewRef(r->src), Py_NewRef(r->dst), Py_XNewRef(r->src_packed),
                         Py_XNewRef(r->dst_packed)};
    Flow f = {.src = r->src, .dst = r->dst, .sport_obj = r->sport_obj,
              .dport_obj = r->dport_obj, .src_bytes = r->src_bytes,
              .dst_bytes = r->dst_bytes, .src_slot = r->src_slot, .dst_slot = r->dst_slot,
              .sport = r->sport, .dport = r->dport, .fwd_b = r->fwd_b, .fwd_p = r->fwd_p,
              .rev_b = r->rev_b, .rev_p = r->rev_p};
    /* the observer's newest event; the report is judged at its own end time */
    f.at = event_time(r->end_ns);
    if (observe(b, r->observer, f.at) < 0)
        goto done;
    if (resolve_ends(b, r, &f) < 0 || find_procs(b, r, &f) < 0)
        goto done;
    int via = via_dialled(b, r, &f);
    if (via != 0) { /* -1 or DEFERRED */
        result = via;
        goto done;
    }
    if (refine_ends(b, &f) < 0 || orient(r, &f) < 0)
        goto done;

    /* cross-node dedup (Enricher._duplicate) */
    int dropped = duplicate(b, r->observer, f.at, f.src, f.sport, f.dst, f.dport,
                            f.src_end.home, f.dst_end.home, f.src_slot, f.dst_slot);
    if (dropped < 0)
        goto done;
    if (dropped) {
        result = 0;
        goto done;
    }

    if (name_parts(b, r, &f, &p) < 0)
        goto done;
    char cid[CID_LEN];
    community_id((int)r->proto, f.src_bytes, f.dst_bytes, r->alen, f.sport, f.dport, cid);
    if (line_parts(b, r, &f, &p) < 0 || render_flow(b, r, &f, &p, cid) < 0)
        goto done;
    result = 1;
done:
    enrich_release(held, &f, &p);
    return result;
}

/* One record through the Python path: Enricher._flow(raw, i, now, tally, render_line).
 * 1: a line was added, 0: a dropped duplicate, 2: a bad record (appended to out.bad),
 * -1: error. */
static int
python_path(Batch *b, PyObject *raw, Py_ssize_t i)
{
    PyObject *index = PyLong_FromSsize_t(i);
    if (index == NULL)
        return -1;
    PyObject *args[5] = {raw, index, b->now, b->tally, render_line};
    b->generation_stale = 1;
    b->names_touched++;
    Py_CLEAR(b->minute_node);
    PyObject *result = PyObject_Vectorcall(b->flow, args, 5, NULL);
    Py_DECREF(index);
    if (result == NULL) {
        if (!PyErr_ExceptionMatches(record_error))
            return -1;
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL)
            PyException_SetTraceback(value, tb);
        PyObject *pair = PyTuple_Pack(2, raw, value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (pair == NULL)
            return -1;
        int rc = PyList_Append(b->bad, pair);
        Py_DECREF(pair);
        return rc < 0 ? -1 : 2;
    }
    if (result == Py_None) {
        Py_DECREF(result);
        return 0;
    }
    int rc = -1;
    if (PyTuple_CheckExact(result) && PyTuple_GET_SIZE(result) == 2) {
        PyObject *subject = PyTuple_GET_ITEM(result, 0), *line = PyTuple_GET_ITEM(result, 1);
        if (b->rendered == NULL) {
            rc = bucket_append(b->lines, subject, line);
        } else if (PyBytes_CheckExact(line)) {
            Py_ssize_t n = PyBytes_GET_SIZE(line);
            char *o = lines_reserve(b->rendered, subject, n);
            if (o != NULL) {
                memcpy(o, PyBytes_AS_STRING(line), (size_t)n);
                rc = 0;
            }
        } else {
            PyErr_SetString(PyExc_TypeError, "_flow must render a line as bytes");
        }
    } else
        PyErr_SetString(PyExc_TypeError, "_flow must return (subject, line) or None");
    Py_DECREF(result);
    return rc < 0 ? -1 : 1;
}

/* ------------------------------------------------------------------ the batch */

static int
add_to(PyObject *obj, PyObject *name, Py_ssize_t n)
{
    /* obj.name += n */
    if (n == 0)
        return 0;
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    PyObject *delta = PyLong_FromSsize_t(n);
    PyObject *sum = delta == NULL ? NULL : PyNumber_Add(value, delta);
    Py_DECREF(value);
    Py_XDECREF(delta);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

/* One record's outcome (enrich or python_path): 1 a line, 0 a dropped duplicate,
 * 2 a bad record (listed in out.bad). */
static void
counted(Batch *b, int rc)
{
    if (rc == 1)
        b->n_out++;
    else if (rc == 0)
        b->n_dropped++;
}

static int
commit_tally(Batch *b)
{
    if (add_to(b->tally, s_records_in, b->n_in) < 0 ||
        add_to(b->tally, s_records_out, b->n_out) < 0 ||
        add_to(b->tally, s_dedup_dropped, b->n_dropped) < 0 ||
        add_to(b->tally, s_process_hits, b->process_hits) < 0 ||
        add_to(b->tally, s_dns_hits, b->dns_hits) < 0 ||
        add_to(b->tally, s_dns_misses, b->dns_misses) < 0)
        return -1;
    PyObject *lookups = PyObject_GetAttr(b->tally, s_lookups);
    if (lookups == NULL)
        return -1;
    int rc = 0;
    for (int i = 0; i < N_KINDS && rc == 0; i++) {
        if (b->kind_counts[i] == 0)
            continue;
        PyObject *count = PyObject_GetItem(lookups, kinds[i]);
        PyObject *delta = count == NULL ? NULL : PyLong_FromSsize_t(b->kind_counts[i]);
        PyObject *sum = delta == NULL ? NULL : PyNumber_Add(count, delta);
        rc = sum == NULL ? -1 : PyObject_SetItem(lookups, kinds[i], sum);
        Py_XDECREF(count);
        Py_XDECREF(delta);
        Py_XDECREF(sum);
    }
    Py_DECREF(lookups);
    return rc;
}

/* getattr(getattr(obj, a), b) — new reference */
static PyObject *
attr2(PyObject *obj, PyObject *a, PyObject *b)
{
    PyObject *mid = PyObject_GetAttr(obj, a);
    if (mid == NULL)
        return NULL;
    PyObject *got = PyObject_GetAttr(mid, b);
    Py_DECREF(mid);
    return got;
}

static int
require_dict(PyObject *obj, const char *what)
{
    if (obj != NULL && !PyDict_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dict", what);
        return -1;
    }
    return obj == NULL ? -1 : 0;
}

static void
release(Batch *b)
{
    Py_CLEAR(b->tally);
    Py_CLEAR(b->lines);
    Py_CLEAR(b->rendered);
    Py_CLEAR(b->bad);
    Py_CLEAR(b->flow);
    Py_CLEAR(b->refine);
    Py_CLEAR(b->addresses);
    Py_CLEAR(b->known_address);
    Py_CLEAR(b->resolver);
    Py_CLEAR(b->resolve);
    Py_CLEAR(b->resolved);
    Py_CLEAR(b->sockets);
    Py_CLEAR(b->locals);
    Py_CLEAR(b->dialled);
    Py_CLEAR(b->entries);
    Py_CLEAR(b->answers);
    Py_CLEAR(b->names_lookup);
    Py_CLEAR(b->seen);
    Py_CLEAR(b->observers_active);
    Py_CLEAR(b->in_minute);
    Py_CLEAR(b->minutes);
    Py_CLEAR(b->minute_node);
    for (int i = 0; i < b->json_used; i++) {
        Py_CLEAR(b->json_keys[i]);
        Py_CLEAR(b->json_values[i]);
    }
    b->json_used = 0;
}

/* The batch's view of the enricher's state (see the header comment). */
static int
prepare(Batch *b, PyObject *enricher, PyObject *out, Lines *rendered)
{
    PyObject *resolver = NULL, *ttl = NULL, *ttl_min = NULL, *names_generation = NULL;
    b->rendered = (Lines *)Py_XNewRef(rendered);
    if ((b->tally = PyObject_GetAttr(out, s_tally)) == NULL ||
        (rendered == NULL && (b->lines = PyObject_GetAttr(out, s_lines)) == NULL) ||
        (b->bad = PyObject_GetAttr(out, s_bad)) == NULL ||
        (b->flow = PyObject_GetAttr(enricher, s_flow)) == NULL ||
        (b->refine = PyObject_GetAttr(enricher, s_refine)) == NULL ||
        (b->addresses = PyObject_GetAttr(enricher, s_addresses)) == NULL ||
        (b->resolver = resolver = PyObject_GetAttr(enricher, s_resolver)) == NULL ||
        (b->resolve = PyObject_GetAttr(resolver, s_resolve)) == NULL ||
        (b->sockets = attr2(enricher, s_sockets, s_sockets_table)) == NULL ||
        (b->locals = attr2(enricher, s_sockets, s_locals)) == NULL ||
        (b->dialled = attr2(enricher, s_sockets, s_dialled)) == NULL ||
        (b->entries = attr2(enricher, s_names, s_entries)) == NULL ||
        (b->answers = attr2(enricher, s_names, s_answers)) == NULL ||
        (names_generation = attr2(enricher, s_names, s_generation)) == NULL ||
        (b->names_lookup = attr2(enricher, s_names, s_lookup)) == NULL ||
        (b->seen = attr2(enricher, s_observers, s_seen)) == NULL ||
        (ttl = attr2(enricher, s_observers, s_ttl)) == NULL ||
        (b->observers_active = attr2(enricher, s_observers, s_active)) == NULL ||
        (b->in_minute = attr2(enricher, s_observers, s_in_minute)) == NULL ||
        (b->minutes = attr2(enricher, s_observers, s_minutes)) == NULL ||
        (ttl_min = attr2(enricher, s_names, s_ttl_min)) == NULL)
        goto fail;
    /* a resolver without an identity cache is asked every time */
    b->resolved = PyObject_GetAttr(resolver, s_cache);
    if (b->resolved == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            goto fail;
        PyErr_Clear();
    } else if (!PyDict_CheckExact(b->resolved)) {
        Py_CLEAR(b->resolved);
    }
    if ((rendered == NULL && !PyDict_CheckExact(b->lines)) || !PyList_CheckExact(b->bad)) {
        PyErr_SetString(PyExc_TypeError, "out.lines must be a dict and out.bad a list");
        goto fail;
    }
    if (require_dict(b->addresses, "_addresses") < 0 || require_dict(b->sockets, "_sockets") < 0 ||
        require_dict(b->locals, "_locals") < 0 || require_dict(b->dialled, "_dialled") < 0 ||
        require_dict(b->entries, "_entries") < 0 || require_dict(b->answers, "_answers") < 0 ||
        require_dict(b->seen, "observers.seen") < 0 ||
        require_dict(b->minutes, "observers.minutes") < 0)
        goto fail;
    b->names_generation = PyLong_AsSsize_t(names_generation);
    if (b->names_generation == -1 && PyErr_Occurred())
        goto fail;
    b->observer_ttl_ns = PyLong_AsLongLong(ttl);
    if (b->observer_ttl_ns == -1 && PyErr_Occurred())
        goto fail;
    b->ttl_min = PyFloat_AsDouble(ttl_min);
    if (b->ttl_min == -1.0 && PyErr_Occurred())
        goto fail;
    b->now_s = PyFloat_AsDouble(b->now);
    if (b->now_s == -1.0 && PyErr_Occurred())
        goto fail;
    /* a resolver with a generation lets flow_body keep identities (resolve_at) */
    PyObject *generation = PyObject_GetAttr(resolver, s_generation);
    if (generation == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            goto fail;
        PyErr_Clear();
    } else {
        b->generation = PyLong_AsSsize_t(generation);
        Py_DECREF(generation);
        if (b->generation == -1 && PyErr_Occurred())
            goto fail;
        b->has_generation = 1;
    }
    Py_DECREF(ttl);
    Py_DECREF(ttl_min);
    Py_DECREF(names_generation);
    return 0;
fail:
    Py_XDECREF(ttl);
    Py_XDECREF(ttl_min);
    Py_XDECREF(names_generation);
    return -1;
}

static PyObject *
flow_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "flow_lines(enricher, records, now, out)");
        return NULL;
    }
    if (render_line == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_flowcore.configure() was not called");
        return NULL;
    }
    Batch b = {.now = args[2]};
    PyObject *seq = NULL, *result = NULL;
    if (prepare(&b, args[0], args[3], NULL) < 0)
        goto done;
    if ((seq = PySequence_Fast(args[1], "records must be iterable")) == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        Raw r;
        b.n_in++;
        int rc = read_raw(&b, items[i], &r);
        if (rc < 0)
            goto done;
        rc = rc > 0 ? enrich(&b, &r) : rc == 0 ? DEFERRED : rc;
        if (rc == DEFERRED)
            rc = python_path(&b, items[i], i);
        if (rc < 0)
            goto done;
        counted(&b, rc);
    }
    if (commit_tally(&b) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(seq);
    release(&b);
    return result;
}

/* ------------------------------------------------------------------ raw bodies */

/* flow_body reads a raw batch's NDJSON body itself instead of receiving orjson's dicts:
 * a line written the way the collector writes it (see `plain`) is read straight into a
 * Raw, with no Python object per field; any other line is parsed by orjson.loads and
 * goes the dict way above. Decoding a body into dicts cost about as much as enriching
 * them here (per record: ~1.5-2 µs of orjson, ~0.7 µs of reading the dict back). */

enum {
    F_OBSERVER, F_START_NS, F_END_NS, F_END_REASON, F_PROTO, F_SRC, F_DST, F_SPORT, F_DPORT,
    F_BYTES, F_PACKETS, F_RBYTES, F_RPACKETS, /* the fields every record has */
    F_TCP_FLAGS, F_INITIATOR, F_IFINDEX, N_FIELDS
};
#define REQUIRED ((1u << F_TCP_FLAGS) - 1)
/* the shortest plain line: every required key, each value one character or "" */
#define MIN_PLAIN                                                                          \
    ((Py_ssize_t)sizeof("{\"observer\":\"\",\"start_ns\":0,\"end_ns\":0,\"end_reason\":\"\","  \
                        "\"proto\":0,\"src\":\"\",\"dst\":\"\",\"sport\":0,\"dport\":0,"          \
                        "\"bytes\":0,\"packets\":0,\"rbytes\":0,\"rpackets\":0}") - 1)

typedef struct {
    const char *at[N_FIELDS]; /* text fields: into the body */
    Py_ssize_t len[N_FIELDS];
    long long value[N_FIELDS]; /* integer and boolean fields */
    unsigned present;
    /* the address table's hashes of src and dst, and (see look_near) their slots as
     * found a few records ahead, while the table had moved `moved` times (NULL: not
     * there then) */
    uint64_t hash[2];
    struct Slot *slot[2];
    uint64_t moved;
    /* look_near's probes of NameCache._entries: [0] the name of dst as src asked for
     * it, [1] the name of src as dst asked for it (released after the record) */
    Probe probe[2];
} Line;

/* The field a key names, or -1 (an unknown key: the line goes the dict way). */
static int
field_of(const char *k, Py_ssize_t n)
{
#define IS(s) (n == (Py_ssize_t)sizeof(s) - 1 && memcmp(k, s, sizeof(s) - 1) == 0)
    switch (k[0]) {
    case 'o': return IS("observer") ? F_OBSERVER : -1;
    case 's': return IS("start_ns") ? F_START_NS : IS("src") ? F_SRC : IS("sport") ? F_SPORT : -1;
    case 'e': return IS("end_ns") ? F_END_NS : IS("end_reason") ? F_END_REASON : -1;
    case 'p': return IS("proto") ? F_PROTO : IS("packets") ? F_PACKETS : -1;
    case 'd': return IS("dst") ? F_DST : IS("dport") ? F_DPORT : -1;
    case 'b': return IS("bytes") ? F_BYTES : -1;
    case 'r': return IS("rbytes") ? F_RBYTES : IS("rpackets") ? F_RPACKETS : -1;
    case 't': return IS("tcp_flags") ? F_TCP_FLAGS : -1;
    case 'i': return IS("initiator") ? F_INITIATOR : IS("ifindex") ? F_IFINDEX : -1;
    default: return -1;
    }
#undef IS
}

/* A JSON string of printable ASCII without escapes, from p (at its opening quote);
 * returns the position after the closing quote, or NULL. */
static const char *
plain_string(const char *p, const char *end, const char **at, Py_ssize_t *len)
{
    if (p >= end || *p != '"')
        return NULL;
    const char *s = ++p;
    while (p < end && *p != '"') {
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e || *p == '\\')
            return NULL;
        p++;
    }
    if (p >= end)
        return NULL;
    *at = s;
    *len = p - s;
    return p + 1;
}

/* A JSON integer (no fraction or exponent) that fits in 64 bits signed. */
static const char *
plain_int(const char *p, const char *end, long long *out)
{
    int negative = p < end && *p == '-';
    if (negative)
        p++;
    if (p >= end || *p < '0' || *p > '9' || (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9'))
        return NULL;
    unsigned long long u = 0;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        if (u > (ULLONG_MAX - 9) / 10)
            return NULL;
        u = u * 10 + (unsigned long long)(*p - '0');
    }
    if (u > (unsigned long long)LLONG_MAX + negative)
        return NULL;
    *out = negative ? (long long)(0ULL - u) : (long long)u;
    return p;
}

/* Whether [p, end) is a raw flow record as the collector writes it: one JSON object,
 * no white space, each known key once, values of the type and range the fields have
 * (the checks of read_raw), strings of printable ASCII without escapes. Everything else
 * — other keys, nat_dst, escapes, floats, null, duplicate keys, invalid JSON — is left
 * to orjson and the dict way, so a plain line means exactly what orjson reads in it. */
/* Each field's key as the collector writes it, with its colon, in the collector's order
 * (the order of the enum): plain() tries the one after the last key first. */
static const struct {
    const char *text;
    Py_ssize_t len;
} key_texts[N_FIELDS + 1] = {
#define KEY(s) {"\"" s "\":", (Py_ssize_t)sizeof(s) + 2}
    KEY("observer"), KEY("start_ns"), KEY("end_ns"), KEY("end_reason"), KEY("proto"),
    KEY("src"), KEY("dst"), KEY("sport"), KEY("dport"), KEY("bytes"), KEY("packets"),
    KEY("rbytes"), KEY("rpackets"), KEY("tcp_flags"), KEY("initiator"), KEY("ifindex"),
    {"", 0} /* after the last: none expected */
#undef KEY
};

/* memcmp(p, key, n) == 0 for a key text (6 to 13 bytes): two overlapping loads each
 * instead of a call per key (13 or more a line); a text outside 4 to 16 bytes, which
 * two loads do not cover, is compared by memcmp */
static inline int
key_at(const char *p, const char *key, Py_ssize_t n)
{
    uint64_t a, b, c, d;
    if (n < 4 || n > 16)
        return memcmp(p, key, (size_t)n) == 0;
    if (n < 8) {
        uint32_t w, x, y, z;
        memcpy(&w, p, 4), memcpy(&x, key, 4);
        memcpy(&y, p + n - 4, 4), memcpy(&z, key + n - 4, 4);
        return w == x && y == z;
    }
    memcpy(&a, p, 8), memcpy(&b, key, 8);
    memcpy(&c, p + n - 8, 8), memcpy(&d, key + n - 8, 8);
    return a == b && c == d;
}

static int
plain(const char *p, const char *end, Line *l)
{
    l->present = 0;
    if (p >= end || *p++ != '{')
        return 0;
    int f = -1;
    for (;;) {
        /* the key the collector writes next, else any key (plain_string, field_of):
         * the same field either way */
        int next = f + 1;
        Py_ssize_t n = key_texts[next].len;
        if (n > 0 && end - p > n && key_at(p, key_texts[next].text, n)) {
            f = next;
            p += n;
        } else {
            const char *key;
            Py_ssize_t klen;
            if ((p = plain_string(p, end, &key, &klen)) == NULL || klen == 0 || p >= end ||
                *p++ != ':')
                return 0;
            f = field_of(key, klen);
        }
        if (f < 0 || (l->present & (1u << f)))
            return 0;
        l->present |= 1u << f;
        switch (f) {
        case F_OBSERVER: case F_END_REASON: case F_SRC: case F_DST:
            if ((p = plain_string(p, end, &l->at[f], &l->len[f])) == NULL)
                return 0;
            break;
        case F_INITIATOR:
            if (end - p >= 4 && memcmp(p, "true", 4) == 0)
                l->value[f] = 1, p += 4;
            else if (end - p >= 5 && memcmp(p, "false", 5) == 0)
                l->value[f] = 0, p += 5;
            else
                return 0;
            break;
        default: {
            long long v;
            if ((p = plain_int(p, end, &v)) == NULL)
                return 0;
            long long hi = f == F_PROTO || f == F_TCP_FLAGS ? 255
                           : f == F_SPORT || f == F_DPORT   ? 65535
                                                            : LLONG_MAX;
            int bounded = f != F_START_NS && f != F_END_NS && f != F_IFINDEX;
            if (bounded && (v < 0 || v > hi))
                return 0;
            l->value[f] = v;
        }
        }
        if (p >= end)
            return 0;
        if (*p == '}')
            return p + 1 == end && (l->present & REQUIRED) == REQUIRED;
        if (*p++ != ',')
            return 0;
    }
}

/* The address table: raw address text → the enricher's _addresses entry, probed by the
 * text's bytes (no str is built). It caches what _addresses holds — a pure function of
 * the text — and is emptied when it is handed another _addresses dict, or one that
 * shrank (Enricher._address clears its dict at MAX_ADDRESSES). */
#define TABLE_MAX (1 << 16) /* entries; then emptied (4 MB of slots at most) */


static Slot *slots;
static size_t slot_mask;
static Py_ssize_t slots_used;
static uint64_t slots_moved; /* counts growths and clears: a Slot pointer is stale */
/* the _addresses dict, the resolver and the NameCache._answers dict the table was filled
 * from (held, so that another one can never have the same address) */
static PyObject *slots_addresses, *slots_resolver, *slots_answers;

/* A text's hash, never 0: its bytes 8 at a time (FNV-1a's byte at a time was ~2 % of a
 * record), the last 1 to 7 in one word read as overlapping loads, then mixed as
 * MurmurHash3's finalizer does (the table takes the low bits). */
static uint64_t
text_hash(const char *s, Py_ssize_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, s, 4);
        memcpy(&hi, s + n - 4, 4);
        w = (uint64_t)lo | (uint64_t)hi << 32;
    } else if (n > 0) {
        w = (uint64_t)(unsigned char)s[0] | (uint64_t)(unsigned char)s[n / 2] << 8 |
            (uint64_t)(unsigned char)s[n - 1] << 16;
    } else {
        w = 0;
    }
    h ^= w;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h | 1;
}

static void
table_clear(void)
{
    for (size_t i = 0; slots != NULL && i <= slot_mask; i++)
        if (slots[i].hash) {
            Py_CLEAR(slots[i].entry);
            end_clear(&slots[i].kept);
        }
    PyMem_Free(slots);
    slots = NULL;
    slot_mask = 0;
    slots_used = 0;
    slots_moved++;
}

/* The table moved to `size` slots (a power of two, larger than it has). */
static int
table_grow(size_t size)
{
    Slot *grown = PyMem_Calloc(size, sizeof(Slot));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; slots != NULL && i <= slot_mask; i++) {
        if (!slots[i].hash)
            continue;
        size_t j = slots[i].hash & (size - 1);
        while (grown[j].hash)
            j = (j + 1) & (size - 1);
        grown[j] = slots[i];
    }
    PyMem_Free(slots);
    slots = grown;
    slot_mask = size - 1;
    slots_moved++;
    return 0;
}

static Slot *
table_insert(uint64_t h, const char *s, Py_ssize_t n, PyObject *entry, PyObject *canonical,
             PyObject *network, PyObject *packed)
{
    if ((slots == NULL || (size_t)(slots_used + 1) * 2 > slot_mask + 1) &&
        table_grow(slots == NULL ? 1024 : (slot_mask + 1) * 2) < 0)
        return NULL;
    size_t j = h & slot_mask;
    while (slots[j].hash)
        j = (j + 1) & slot_mask;
    slots[j].hash = h;
    slots[j].entry = Py_NewRef(entry);
    slots[j].canonical = canonical;
    slots[j].network = network;
    slots[j].kept = (End){0};
    slots[j].unanswered = -1;
    slots[j].answered = 0;
    slots[j].len = (uint8_t)n;
    memcpy(slots[j].key, s, (size_t)n);
    slots[j].key_canonical = PyUnicode_IS_COMPACT_ASCII(canonical) &&
                             PyUnicode_GET_LENGTH(canonical) == n &&
                             memcmp(PyUnicode_DATA(canonical), s, (size_t)n) == 0;
    slots[j].alen = (uint8_t)PyBytes_GET_SIZE(packed);
    memcpy(slots[j].packed, PyBytes_AS_STRING(packed), slots[j].alen);
    slots_used++;
    return &slots[j];
}

/* The slot of an address's text, or NULL. */
static Slot *
table_find(uint64_t h, const char *s, Py_ssize_t n)
{
    for (size_t j = h & slot_mask; slots != NULL && slots[j].hash; j = (j + 1) & slot_mask)
        if (slots[j].hash == h && slots[j].len == n && memcmp(slots[j].key, s, (size_t)n) == 0)
            return &slots[j];
    return NULL;
}

/* The slot of an address's text (h: its text_hash; found: its slot if known), added
 * from _addresses on first use; NULL: the text is not there, or too long, or its entry
 * has another shape (no exception: the record goes the Python way), or an error. The
 * table is never emptied while a record is read (read_line empties it before), so the
 * slot's entry lives until the next record. */
static Slot *
address_slot(Batch *b, const char *s, Py_ssize_t n, uint64_t h, Slot *found)
{
    if (n > KEY_MAX)
        return NULL;
    Slot *slot = found != NULL ? found : table_find(h, s, n);
    if (slot != NULL)
        return slot;
    PyObject *text = PyUnicode_FromStringAndSize(s, n);
    if (text == NULL)
        return NULL;
    PyObject *entry = Py_XNewRef(PyDict_GetItemWithError(b->addresses, text));
    if (entry == NULL && !PyErr_Occurred() && b->known_address != NULL) {
        /* seen for the first time: parsed and cached as the Python path would, in the
         * same order (source, then destination); not an address: the Python path */
        entry = PyObject_CallOneArg(b->known_address, text);
        if (entry == Py_None)
            Py_CLEAR(entry);
    }
    Py_DECREF(text);
    PyObject *canonical, *network, *packed;
    slot = NULL;
    if (entry != NULL && entry_parts(entry, &canonical, &network, &packed))
        slot = table_insert(h, s, n, entry, canonical, network, packed);
    Py_XDECREF(entry); /* held by the slot, and by _addresses */
    return slot;
}

/* The same str object for the same text in a row (a raw batch has one observer, and few
 * end reasons): *cache holds the last one. New reference. */
static PyObject *
text_of(PyObject **cache, const char *s, Py_ssize_t n)
{
    PyObject *last = *cache;
    if (last != NULL && PyUnicode_GET_LENGTH(last) == n &&
        memcmp(PyUnicode_DATA(last), s, (size_t)n) == 0)
        return Py_NewRef(last);
    PyObject *text = PyUnicode_FromStringAndSize(s, n);
    if (text != NULL)
        Py_XSETREF(*cache, Py_NewRef(text));
    return text;
}

/* The observer table: the node names raw lines carry, by their text — the str and its
 * JSON. A collector's raw
 * batch has one observer (text_of's last one would do), but a batch may mix them: then
 * each line's observer was a new str, hashed for observers.seen, and its JSON a probe of
 * _STRINGS (json_cached keeps 8). Direct-mapped by the text's hash; an entry holds its
 * str and JSON until another observer takes its place. */
#define OBSERVERS 256
#define OBSERVER_MAX 63 /* longer names: text_of */
typedef struct {
    uint64_t hash; /* 0: empty */
    PyObject *text, *json;
    Py_ssize_t len;
    char key[OBSERVER_MAX + 1];
} Observer;
static Observer observer_table[OBSERVERS];

static void
observers_clear(void)
{
    for (int i = 0; i < OBSERVERS; i++) {
        Py_CLEAR(observer_table[i].text);
        Py_CLEAR(observer_table[i].json);
        observer_table[i].hash = 0;
    }
}

/* The table's entry for an observer's text (plain ASCII, from plain()), filled on first
 * use; NULL: too long (no exception), or an error. */
static Observer *
observer_of(const char *s, Py_ssize_t n)
{
    if (n > OBSERVER_MAX)
        return NULL;
    uint64_t h = text_hash(s, n);
    Observer *o = &observer_table[(h >> 8) & (OBSERVERS - 1)];
    if (o->hash == h && o->len == n && memcmp(o->key, s, (size_t)n) == 0)
        return o;
    PyObject *text = PyUnicode_FromStringAndSize(s, n);
    if (text == NULL)
        return NULL;
    PyObject *json = json_of(text);
    if (json == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    Py_XSETREF(o->text, text);
    Py_XSETREF(o->json, json);
    o->hash = h;
    o->len = n;
    memcpy(o->key, s, (size_t)n);
    return o;
}

/* Looking ahead. The address table's slots and what they keep (the canonical str, an
 * identity's JSON) are spread over several MB, so each was a cache miss per record,
 * waited for in turn. flow_body asks for them a few records early: LOOK_FAR to
 * LOOK_FAR + LOOK_GROUP - 1 lines ahead the two slots and the record's set of name ways,
 * LOOK_NEAR to LOOK_NEAR + LOOK_GROUP - 1 lines ahead (the slots are in the cache by
 * then) what they point at — and keeps the slots found in the Line, valid while the
 * table has not moved (read_line). A prefetch never faults, and a stale one costs
 * nothing but the fetch; the loads (touch_span) read the tables' own memory and objects
 * the tables and probes hold. */
#define LOOK_FAR 8
#define LOOK_NEAR 4
#define LOOK_GROUP 4 /* records looked at together, their loads waited for together */
#define NOT_LOOKED UINT64_MAX /* Line.moved before look_near */

/* Every 64-byte cache line [p, p + n) touches (a slot straddles one more line than
 * n / 64 unless it starts on a line's first byte). */
static inline void
prefetch_span(const void *p, size_t n)
{
    const char *c = (const char *)((uintptr_t)p & ~(uintptr_t)63), *end = (const char *)p + n;
    for (; c < end; c += 64)
        __builtin_prefetch(c);
}

/* Ask for [p, p + n): its first line by a load, the others by prefetches. Measured on
 * the development machine (a VM), a prefetch into the address table — 4 to 11 MB, and
 * so a TLB miss — did nothing: without look_far's prefetches flow_body took as long, and
 * table_find waited on the slot as before (perf annotate). A load walks the page tables
 * and brings the line in; it holds up retirement until it is there, but loads that do
 * not depend on each other wait together — so the records are looked at LOOK_GROUP at a
 * time: the loads of four records' look_far (two slots and a name set each), then of
 * four records' look_near. Both cores in one process, steady state: 5 to 8 % less time
 * per record with look_far's loads than with its prefetches (three pairs of runs), 6 %
 * less again looking at four records at a time, 2 to 3 % less again with look_near's
 * loads (four pairs). */
static inline void
touch_span(const void *p, size_t n)
{
    (void)*(const volatile char *)p;
    prefetch_span((const char *)p + 1, n > 1 ? n - 1 : 0);
}

static void
look_far(const Line *l)
{
    if (slots == NULL)
        return;
    for (int k = 0; k < 2; k++)
        touch_span(&slots[l->hash[k] & slot_mask], sizeof(Slot));
    if (name_ways != NULL) /* the name of dst as src asked for it (the other is rare) */
        touch_span(name_set(name_tag(l->hash[0], l->hash[1])), 64);
}

static void
look_near(Batch *b, Line *l)
{
    l->moved = slots_moved;
    for (int k = 0; k < 2; k++) {
        Slot *slot = table_find(l->hash[k], l->at[F_SRC + k], l->len[F_SRC + k]);
        l->slot[k] = slot;
        if (slot == NULL)
            continue;
        touch_span(slot->canonical, 1);
        PyObject *json = k == 0 ? slot->kept.source_json : slot->kept.destination_json;
        if (slot->kept.ident != NULL && json != NULL)
            touch_span(json, offsetof(PyBytesObject, ob_sval) + 256); /* its size, too */
    }
    /* A name hit is a chain of misses: the OrderedDict's index and entry, the key, the
     * entry's list, its items, the expiry's float and the JSON. The probe is made here,
     * for an address an entry answered (name_json probes any other as before), and the
     * rest is asked for in steps (look_items) by the time the record reads it. */
    if (l->slot[0] == NULL || l->slot[1] == NULL || PyDict_GET_SIZE(b->entries) == 0)
        return;
    for (int k = 0; k < 2; k++) {
        Slot *client = l->slot[k], *address = l->slot[1 - k];
        if (!address->answered || address->unanswered == b->names_generation)
            continue;
        uint64_t tag = name_tag(l->hash[k], l->hash[1 - k]);
        NameWay *way = name_way_find(tag, client->canonical, address->canonical);
        PyObject *entry;
        if (way != NULL) {
            entry = way->entry;
        } else {
            PyObject *key = pair_of(client->canonical, address->canonical);
            if (key == NULL) {
                PyErr_Clear(); /* name_json probes again, and reports it */
                continue;
            }
            entry = PyDict_GetItemWithError(b->entries, key);
            Py_DECREF(key);
            if (entry == NULL && PyErr_Occurred()) {
                PyErr_Clear();
                continue;
            }
            if (entry != NULL)
                way = name_way_keep(tag, client->canonical, address->canonical, entry);
        }
        Probe *p = &l->probe[k];
        p->client = Py_NewRef(client->canonical);
        p->address = Py_NewRef(address->canonical);
        p->entry = Py_XNewRef(entry);
        p->touched = b->names_touched;
        p->way = way;
        if (entry != NULL)
            touch_span(entry, 1);
    }
}

/* The steps after look_near's probe: `step` 1 (two records later) the entry list's item
 * array, 2 (one later) the expiry's float and the JSON. */
static void
look_items(const Line *l, int step)
{
    for (int k = 0; k < 2; k++) {
        PyObject *entry = l->probe[k].entry;
        if (entry == NULL || !PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 4)
            continue;
        if (step == 1) {
            __builtin_prefetch(&PyList_GET_ITEM(entry, 0));
        } else {
            __builtin_prefetch(PyList_GET_ITEM(entry, 1));
            prefetch_span(PyList_GET_ITEM(entry, 2), 96);
        }
    }
}

static void
probes_release(Line *l)
{
    for (int k = 0; k < 2; k++) {
        Py_CLEAR(l->probe[k].client);
        Py_CLEAR(l->probe[k].address);
        Py_CLEAR(l->probe[k].entry);
        l->probe[k].way = NULL;
    }
}

/* The objects a plain line's Raw points at, released after the record. */
typedef struct {
    PyObject *observer, *reason, *proto, *sport, *dport;
} Held;

static void
let_go(Held *h)
{
    Py_CLEAR(h->observer);
    Py_CLEAR(h->reason);
    Py_CLEAR(h->proto);
    Py_CLEAR(h->sport);
    Py_CLEAR(h->dport);
}

/* read_raw for a plain line: 1 this core handles it, 0 the Python path does, -1 error. */
static int
read_line(Batch *b, const Line *l, Raw *r, Held *h, PyObject **last_observer,
          PyObject **last_reason)
{
    if (!node_name_length(l->len[F_OBSERVER]) || /* plain ASCII: a byte a character */
        !ordered_times(l->value[F_START_NS], l->value[F_END_NS]))
        return 0;
    Observer *o = observer_of(l->at[F_OBSERVER], l->len[F_OBSERVER]);
    if (o != NULL)
        h->observer = Py_NewRef(o->text);
    else if (PyErr_Occurred() ||
             (h->observer = text_of(last_observer, l->at[F_OBSERVER], l->len[F_OBSERVER])) == NULL)
        return -1;
    if ((h->reason = text_of(last_reason, l->at[F_END_REASON], l->len[F_END_REASON])) == NULL)
        return -1;
    int known = PySet_Contains(end_reasons, h->reason);
    if (known <= 0)
        return known;
    if (slots_used > TABLE_MAX - 2) /* room for both ends: never emptied in between */
        table_clear();
    /* look_near's slots, while the table has not moved since (the source's insertion
     * may grow it: asked again for the destination) */
    Slot *src = address_slot(b, l->at[F_SRC], l->len[F_SRC], l->hash[0],
                             l->moved == slots_moved ? l->slot[0] : NULL);
    if (src == NULL)
        return PyErr_Occurred() ? -1 : 0;
    uint64_t moved = slots_moved, src_hash = src->hash;
    Slot *dst = address_slot(b, l->at[F_DST], l->len[F_DST], l->hash[1],
                             l->moved == slots_moved ? l->slot[1] : NULL);
    if (dst == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (slots_moved != moved) /* the table grew: the source's slot moved */
        src = table_find(src_hash, l->at[F_SRC], l->len[F_SRC]);
    r->src_slot = src;
    r->dst_slot = dst;
    r->probes = l->probe;
    r->src = src->canonical;
    r->dst = dst->canonical;
    r->network = src->network;
    r->src_packed = r->dst_packed = NULL; /* held by the slots' entries */
    r->src_bytes = src->packed;
    r->dst_bytes = dst->packed;
    r->alen = src->alen;
    int rc = same_family(src->network, dst->network, src->alen, dst->alen);
    if (rc <= 0)
        return rc;
    r->proto = (long)l->value[F_PROTO];
    r->sport = (long)l->value[F_SPORT];
    r->dport = (long)l->value[F_DPORT];
    if ((h->proto = PyLong_FromLong(r->proto)) == NULL ||
        (h->sport = PyLong_FromLong(r->sport)) == NULL ||
        (h->dport = PyLong_FromLong(r->dport)) == NULL)
        return -1;
    r->observer = h->observer;
    r->observer_json = o != NULL ? o->json : NULL;
    r->reason = h->reason;
    r->proto_obj = h->proto;
    r->sport_obj = h->sport;
    r->dport_obj = h->dport;
    r->src_text = r->dst_text = NULL; /* read by read_raw only */
    r->start_ns = l->value[F_START_NS];
    r->end_ns = l->value[F_END_NS];
    r->fwd_b = l->value[F_BYTES];
    r->fwd_p = l->value[F_PACKETS];
    r->rev_b = l->value[F_RBYTES];
    r->rev_p = l->value[F_RPACKETS];
    r->flags = l->present & (1u << F_TCP_FLAGS) ? (long)l->value[F_TCP_FLAGS] : 0;
    r->initiator = l->present & (1u << F_INITIATOR) ? (int)l->value[F_INITIATOR] : 0;
    return 1;
}

/* orjson.loads of one line: a new dict, or NULL: not one (no exception; the body is
 * then left to codec.decode, which reports it) or an error. */
static PyObject *
loads_line(const char *p, Py_ssize_t n)
{
    PyObject *text = PyBytes_FromStringAndSize(p, n);
    if (text == NULL)
        return NULL;
    PyObject *value = PyObject_CallOneArg(json_loads, text);
    Py_DECREF(text);
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ValueError))
            PyErr_Clear(); /* orjson.JSONDecodeError */
        return NULL;
    }
    if (!PyDict_CheckExact(value))
        Py_CLEAR(value);
    return value;
}

/* The address table, emptied when it was filled from another enricher's state, or
 * its _addresses dict was emptied (see address_slot). */
static void
table_for(Batch *b)
{
    if (b->addresses != slots_addresses || b->resolver != slots_resolver ||
        b->answers != slots_answers || PyDict_GET_SIZE(b->addresses) < slots_used) {
        table_clear();
        Py_XSETREF(slots_addresses, Py_NewRef(b->addresses));
        Py_XSETREF(slots_resolver, Py_NewRef(b->resolver));
        Py_XSETREF(slots_answers, Py_NewRef(b->answers));
    }
}

/* learn_addresses for one ASCII str: 0, or -1 with an exception. */
static int
learn_address(Batch *b, PyObject *text)
{
    const char *s = (const char *)PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    Slot *slot = address_slot(b, s, n, text_hash(s, n), NULL);
    if (slot == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!b->has_generation || b->resolved == NULL)
        return 0;
    PyObject *found = PyDict_GetItemWithError(b->resolved, slot->canonical);
    if (found == NULL)
        return PyErr_Occurred() ? -1 : 0; /* not built: resolve() is the flows' */
    End e;
    if (end_at(b, slot, slot->canonical, &e, 0) < 0)
        return -1;
    end_clear(&e);
    return 0;
}

/* learn_addresses(enricher, texts, out): each address text into the address table,
 * with the identity resolver._cache holds for it, as a record naming the address would
 * put them there (and into _addresses; nothing is counted). The enricher's warming
 * task calls it with the addresses whose identities it has just built, so that a
 * cluster's addresses are not first seen by a flow: a first sight is a parse, two dict
 * probes and a slot, and the table's growth faults in fresh pages (a fifth of the first
 * flows' time at a start, ~100 page faults per raw batch of 1,000). A text that is not
 * an address, or has no cached identity, is left for the flows, and so is every text
 * once the table is half full. */
static PyObject *
learn_addresses(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "learn_addresses(enricher, texts: list, out)");
        return NULL;
    }
    if (render_line == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_flowcore.configure() was not called");
        return NULL;
    }
    PyObject *now = PyFloat_FromDouble(0.0), *result = NULL;
    Batch b = {.now = now};
    if (now == NULL || prepare(&b, args[0], args[2], NULL) < 0)
        goto done;
    if ((b.known_address = PyObject_GetAttr(args[0], s_known_address)) == NULL)
        goto done;
    table_for(&b);
    /* room for as many addresses again as the table will hold (the flows' external
     * ones), so that the flows' first sights grow it no further for a while */
    size_t want = 1024, room = (size_t)(slots_used + PyList_GET_SIZE(args[1])) * 4;
    while (want < room && want < 2 * (size_t)TABLE_MAX)
        want *= 2;
    if ((slots == NULL || want > slot_mask + 1) && table_grow(want) < 0)
        goto done;
    /* at most half the table's entries: the rest are the flows' (external addresses) */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[1]) && slots_used < TABLE_MAX / 2; i++) {
        PyObject *text = PyList_GET_ITEM(args[1], i);
        if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
            continue;
        Py_INCREF(text); /* its characters are read across calls into Python */
        int rc = learn_address(&b, text);
        Py_DECREF(text);
        if (rc < 0)
            goto done;
    }
    result = Py_NewRef(Py_None);
done:
    release(&b);
    Py_XDECREF(now);
    return result;
}

/* flow_body's raw body and what it reads of it ahead of any state: its n lines, line i
 * from starts[i] (starts[n]: the body's end); a plain line read into lines[which[i]]
 * (used of room), any other one into dicts[i] (which[i] -1). */
typedef struct {
    const char *data, *end;
    Py_ssize_t n, room, used;
    Line *lines;
    PyObject **dicts;
    const char **starts;
    int32_t *which; /* its Line, or -1 */
} Body;

/* flow_body's arguments checked, the body's text into body->data and ->end and the line
 * count asked for into *expected; -1 with an exception when they are not usable. */
static inline int
body_args(PyObject *const *args, Py_ssize_t nargs, Body *body, Py_ssize_t *expected)
{
    if (nargs != 5 || !PyBytes_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "flow_body(enricher, body: bytes, lines: int, now, out)");
        return -1;
    }
    *expected = PyLong_AsSsize_t(args[2]);
    if (*expected == -1 && PyErr_Occurred())
        return -1;
    if (render_line == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_flowcore.configure() was not called");
        return -1;
    }
    body->data = PyBytes_AS_STRING(args[1]);
    body->end = body->data + PyBytes_GET_SIZE(args[1]);
    if (body->data == body->end || body->end[-1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "a body of lines, each ending in a newline");
        return -1;
    }
    return 0;
}

/* The number of newlines in [data, end). */
static inline Py_ssize_t
line_count(const char *data, const char *end)
{
    Py_ssize_t n = 0;
    for (const char *p = data; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        n++;
    return n;
}

/* The body's arrays for its n lines; -1 with MemoryError. */
static inline int
body_alloc(Body *body)
{
    Py_ssize_t n = body->n;
    /* A plain line holds every required key: at least MIN_PLAIN bytes. So a body of
     * tiny lines (orjson's dicts, as codec.decode would make) cannot make the core ask
     * for a Line per line: 20 bytes per line, a Line (~400) per plain one. */
    body->room = Py_MIN(n, (body->end - body->data) / MIN_PLAIN + 1);
    body->lines = PyMem_Malloc((size_t)body->room * sizeof(Line));
    body->dicts = PyMem_Calloc((size_t)n, sizeof(PyObject *));
    body->starts = PyMem_Malloc((size_t)(n + 1) * sizeof(char *));
    body->which = PyMem_Malloc((size_t)n * sizeof(int32_t));
    if (body->lines == NULL || body->dicts == NULL || body->starts == NULL ||
        body->which == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Every line read before any state is touched: a plain one as a Line (with its
 * addresses' hashes, not looked at yet), any other by orjson.loads. 1, or 0 when a line
 * is not a JSON object, or -1 error. */
static inline int
body_read(Body *body)
{
    const char *p = body->data;
    for (Py_ssize_t i = 0; i < body->n; i++) {
        const char *nl = memchr(p, '\n', (size_t)(body->end - p));
        body->starts[i] = p;
        body->which[i] = -1;
        if (body->used < body->room && plain(p, nl, &body->lines[body->used])) {
            Line *l = &body->lines[body->used];
            l->hash[0] = text_hash(l->at[F_SRC], l->len[F_SRC]);
            l->hash[1] = text_hash(l->at[F_DST], l->len[F_DST]);
            l->moved = NOT_LOOKED;
            l->probe[0] = l->probe[1] = (Probe){0};
            body->which[i] = (int32_t)body->used++;
        }
        else if ((body->dicts[i] = loads_line(p, nl - p)) == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
        p = nl + 1;
    }
    body->starts[body->n] = body->end;
    return 1;
}

/* The batch's view of the enricher (prepare) with its _known_address when it has one,
 * and the address table and the name ways for its state. */
static inline int
body_prepare(Batch *b, PyObject *enricher, PyObject *out, Lines *rendered)
{
    if (prepare(b, enricher, out, rendered) < 0)
        return -1;
    b->known_address = PyObject_GetAttr(enricher, s_known_address);
    if (b->known_address == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
    }
    table_for(b);
    if (b->entries != name_ways_entries)
        name_ways_reset(b->entries);
    return 0;
}

/* The look-ahead for record i (see LOOK_FAR): at a group's first record the slots and
 * name ways of the group LOOK_FAR on and the probes of the group LOOK_NEAR on; at each
 * record the entries' items of the next two. */
static inline void
look_ahead(Batch *b, const Body *body, Py_ssize_t i)
{
    Py_ssize_t n = body->n;
    const int32_t *which = body->which;
    Line *lines = body->lines;
    if (i % LOOK_GROUP == 0) {
        for (Py_ssize_t j = i + LOOK_FAR; j < i + LOOK_FAR + LOOK_GROUP && j < n; j++)
            if (which[j] >= 0)
                look_far(&lines[which[j]]);
        for (Py_ssize_t j = i + LOOK_NEAR; j < i + LOOK_NEAR + LOOK_GROUP && j < n; j++)
            if (which[j] >= 0)
                look_near(b, &lines[which[j]]);
    }
    if (i + 2 < n && which[i + 2] >= 0)
        look_items(&lines[which[i + 2]], 1);
    if (i + 1 < n && which[i + 1] >= 0)
        look_items(&lines[which[i + 1]], 2);
}

/* dicts[i] for plain line i, which the Python path takes: its orjson dict; -1 error. */
static inline int
load_plain(Body *body, Py_ssize_t i)
{
    const char *p = body->starts[i];
    if ((body->dicts[i] = loads_line(p, body->starts[i + 1] - p - 1)) != NULL)
        return 0;
    if (!PyErr_Occurred()) /* a plain line is a JSON object */
        PyErr_SetString(PyExc_SystemError, "flow_body: a plain line did not load");
    return -1;
}

/* Record i of the body, looked ahead for, read and enriched here or by the Python path,
 * its Line's probes released: 1 a line, 0 a dropped duplicate, 2 a bad record, -1
 * error. */
static inline int
body_record(Batch *b, Body *body, Py_ssize_t i, PyObject **last_observer,
            PyObject **last_reason)
{
    Raw r;
    Held held = {0};
    int rc;
    b->n_in++;
    look_ahead(b, body, i);
    if (body->dicts[i] != NULL) {
        rc = read_raw(b, body->dicts[i], &r);
    } else {
        rc = read_line(b, &body->lines[body->which[i]], &r, &held, last_observer,
                       last_reason);
        if (rc == 0 && load_plain(body, i) < 0)
            rc = -1;
    }
    rc = rc > 0 ? enrich(b, &r) : rc == 0 ? DEFERRED : rc;
    if (rc == DEFERRED && body->dicts[i] == NULL && load_plain(body, i) < 0)
        rc = -1;
    if (rc == DEFERRED)
        rc = python_path(b, body->dicts[i], i);
    let_go(&held);
    if (body->which[i] >= 0)
        probes_release(&body->lines[body->which[i]]);
    return rc;
}

/* The body's dicts and probes released, and its arrays freed. */
static inline void
body_free(Body *body)
{
    for (Py_ssize_t i = 0; body->dicts != NULL && i < body->n; i++)
        Py_XDECREF(body->dicts[i]);
    for (Py_ssize_t i = 0; body->lines != NULL && i < body->used; i++)
        probes_release(&body->lines[i]);
    PyMem_Free(body->lines);
    PyMem_Free(body->dicts);
    PyMem_Free(body->starts);
    PyMem_Free(body->which);
}

/* flow_body(enricher, body, lines, now, out): flow_lines on a raw batch's NDJSON body
 * (bytes, ending in a newline) of `lines` lines (-1: any number). False, with nothing
 * done, when it has another number of lines or a line is not a JSON object: the caller
 * decodes the body with codec.decode, which names the fault. */
static PyObject *
flow_body(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Body body = {0};
    Py_ssize_t expected;
    if (body_args(args, nargs, &body, &expected) < 0)
        return NULL;
    body.n = line_count(body.data, body.end);
    if (expected >= 0 && body.n != expected)
        Py_RETURN_FALSE;
    Batch b = {.now = args[3]};
    PyObject *last_observer = NULL, *last_reason = NULL, *result = NULL;
    Lines *rendered = NULL;
    if (body_alloc(&body) < 0)
        goto done;
    int read = body_read(&body);
    if (read <= 0) {
        if (read == 0)
            result = Py_NewRef(Py_False);
        goto done;
    }
    /* the enriched lines: ~4 times the raw bytes (grown if not enough), one per record */
    if ((rendered = lines_new(4 * (body.end - body.data) + 65536, body.n)) == NULL ||
        body_prepare(&b, args[0], args[4], rendered) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < body.n; i++) {
        int rc = body_record(&b, &body, i, &last_observer, &last_reason);
        if (rc < 0)
            goto done;
        counted(&b, rc);
    }
    if (commit_tally(&b) < 0 || PyObject_SetAttr(args[4], s_rendered, (PyObject *)rendered) < 0)
        goto done;
    result = Py_NewRef(Py_True);
done:
    Py_XDECREF(rendered);
    body_free(&body);
    Py_XDECREF(last_observer);
    Py_XDECREF(last_reason);
    release(&b);
    return result;
}

/* ------------------------------------------------------------------ framing the output */

/* A subject nats-py's publish sends as given, in ASCII: printable, no space. */
static int
plain_subject(PyObject *subject)
{
    if (!PyUnicode_CheckExact(subject) || !PyUnicode_IS_ASCII(subject) ||
        PyUnicode_GET_LENGTH(subject) == 0)
        return 0;
    const unsigned char *s = PyUnicode_1BYTE_DATA(subject);
    for (Py_ssize_t i = 0; i < PyUnicode_GET_LENGTH(subject); i++)
        if (s[i] <= 0x20 || s[i] > 0x7E)
            return 0;
    return 1;
}

static char *
put(char *o, const char *s, Py_ssize_t n)
{
    memcpy(o, s, (size_t)n);
    return o + n;
}

/* The subjects and lines frame_atomic frames: a Lines, or a dict of subject → list of
 * bytes (items: its items, for their order). */
typedef struct {
    Lines *rendered;
    PyObject *items;
} Framed;

static PyObject *
framed_subject(const Framed *f, Py_ssize_t s)
{
    if (f->rendered != NULL)
        return PyList_GET_ITEM(f->rendered->subjects, s);
    return PyTuple_GET_ITEM(PyList_GET_ITEM(f->items, s), 0);
}

/* A subject's line count and body size; -1: not all its lines are bytes, or none. */
static Py_ssize_t
framed_size(const Framed *f, Py_ssize_t s, Py_ssize_t *count)
{
    if (f->rendered != NULL) {
        *count = f->rendered->per[s].count;
        return f->rendered->per[s].bytes;
    }
    PyObject *list = PyTuple_GET_ITEM(PyList_GET_ITEM(f->items, s), 1);
    if (!PyList_CheckExact(list) || PyList_GET_SIZE(list) == 0)
        return -1;
    Py_ssize_t body = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(list); k++) {
        PyObject *line = PyList_GET_ITEM(list, k);
        if (!PyBytes_CheckExact(line))
            return -1;
        body += PyBytes_GET_SIZE(line);
    }
    *count = PyList_GET_SIZE(list);
    return body;
}

static char *
framed_body(const Framed *f, Py_ssize_t s, char *o)
{
    if (f->rendered != NULL) {
        const Lines *l = f->rendered;
        for (Py_ssize_t i = l->per[s].first; i >= 0; i = l->at[i].next)
            o = put(o, l->buf + l->at[i].offset, l->at[i].len);
        return o;
    }
    PyObject *list = PyTuple_GET_ITEM(PyList_GET_ITEM(f->items, s), 1);
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(list); k++) {
        PyObject *line = PyList_GET_ITEM(list, k);
        o = put(o, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line));
    }
    return o;
}

/* The header text around a message's count, subject and batch sequence (made and
 * checked by the caller), the end of the commit's message id, and the commit's reply
 * subject; or, for the last tail_n messages, their message ids in full (tail: a tuple
 * of bytes, else NULL), each written after msg_id's first key_len bytes — the text up
 * to the id header's value. */
typedef struct {
    const char *head, *msg_id, *marks, *commit, *last_id, *reply;
    Py_ssize_t head_len, msg_id_len, marks_len, commit_len, last_id_len, reply_len;
    PyObject *tail;
    Py_ssize_t tail_n, tail_room, key_len; /* tail_room: the longest tail id */
} FrameText;

static const char nats_line[] = "NATS/1.0\r\n";
#define NATS_LINE_LEN ((Py_ssize_t)sizeof nats_line - 1)

/* At most how many bytes framed_head writes for a subject of `subject_len`. */
static Py_ssize_t
framed_head_room(const FrameText *t, Py_ssize_t subject_len)
{
    return 64 + 2 * subject_len + t->reply_len + NATS_LINE_LEN + t->head_len + t->msg_id_len +
           t->marks_len + t->commit_len + t->last_id_len + t->tail_room + 3 * 24;
}

/* Message i (1-based) of n, subject s: its HPUB line and header block up to the body,
 * written at o; returns the end. */
static char *
framed_head(const Framed *f, Py_ssize_t s, Py_ssize_t n, const FrameText *t, char *o)
{
    Py_ssize_t i = s + 1, count, body = framed_size(f, s, &count);
    PyObject *subject = framed_subject(f, s);
    const char *subj = (const char *)PyUnicode_1BYTE_DATA(subject);
    Py_ssize_t subj_len = PyUnicode_GET_LENGTH(subject);
    char count_text[24], seq_text[24], size_text[24], total_text[24];
    Py_ssize_t count_len = format_int(count, count_text), seq_len = format_int(i, seq_text);
    Py_ssize_t tail_at = i - (n - t->tail_n); /* 1..tail_n: the message has a tail id */
    PyObject *own = t->tail != NULL && tail_at > 0 ? PyTuple_GET_ITEM(t->tail, tail_at - 1)
                                                   : NULL;
    Py_ssize_t id_len = own != NULL ? t->key_len + PyBytes_GET_SIZE(own)
                                    : t->msg_id_len + (i == n ? t->last_id_len
                                                              : subj_len + 2); /* <subject>:0 */
    Py_ssize_t head_size = NATS_LINE_LEN + t->head_len + count_len + id_len + t->marks_len +
                           seq_len + 2 + (i == n ? t->commit_len : 0) + 2;
    Py_ssize_t size_len = format_int(head_size, size_text);
    Py_ssize_t total_len = format_int(head_size + body, total_text);
    o = put(o, "HPUB ", 5);
    o = put(o, subj, subj_len);
    o = put(o, " ", 1);
    if (i == n)
        o = put(o, t->reply, t->reply_len);
    o = put(o, " ", 1);
    o = put(o, size_text, size_len);
    o = put(o, " ", 1);
    o = put(o, total_text, total_len);
    o = put(o, "\r\n", 2);
    o = put(o, nats_line, NATS_LINE_LEN);
    o = put(o, t->head, t->head_len);
    o = put(o, count_text, count_len);
    if (own != NULL) {
        o = put(o, t->msg_id, t->key_len);
        o = put(o, PyBytes_AS_STRING(own), PyBytes_GET_SIZE(own));
    } else if (i == n) {
        o = put(o, t->msg_id, t->msg_id_len);
        o = put(o, t->last_id, t->last_id_len);
    } else {
        o = put(o, t->msg_id, t->msg_id_len);
        o = put(o, subj, subj_len);
        o = put(o, ":0", 2);
    }
    o = put(o, t->marks, t->marks_len);
    o = put(o, seq_text, seq_len);
    o = put(o, "\r\n", 2);
    if (i == n)
        o = put(o, t->commit, t->commit_len);
    return put(o, "\r\n", 2);
}

/* last_id as tail ids (a tuple of one bytes object or more): their number, and in
 * *room the longest one's length; 0 when it is bytes, -1 when it is neither. */
static Py_ssize_t
tail_ids(PyObject *last_id, Py_ssize_t *room)
{
    *room = 0;
    if (PyBytes_Check(last_id))
        return 0;
    if (!PyTuple_Check(last_id) || PyTuple_GET_SIZE(last_id) == 0)
        return -1;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(last_id); k++) {
        PyObject *id = PyTuple_GET_ITEM(last_id, k);
        if (!PyBytes_Check(id))
            return -1;
        *room = Py_MAX(*room, PyBytes_GET_SIZE(id));
    }
    return PyTuple_GET_SIZE(last_id);
}

/* The length of msg_id's text up to its header's value: through its first ": " (a
 * header key has no colon); -1: none. */
static Py_ssize_t
id_key_length(const char *msg_id, Py_ssize_t len)
{
    for (Py_ssize_t k = 0; k + 1 < len; k++)
        if (msg_id[k] == ':' && msg_id[k + 1] == ' ')
            return k + 2;
    return -1;
}

/* The arguments of frame_atomic and gather_atomic, checked: 1 the messages are of the
 * plain shape (*n of them, *heads_room: at most the bytes of their heads and line ends,
 * *body_bytes: of their bodies), 0 they are not (the caller builds them in Python),
 * -1 an error. f->items is a new reference when set. */
static int
framed_args(const char *name, PyObject *const *args, Py_ssize_t nargs, int lines_only,
            Framed *f, FrameText *t, Py_ssize_t *n, Py_ssize_t *heads_room,
            Py_ssize_t *body_bytes)
{
    int lines = nargs == 8 && Py_IS_TYPE(args[0], &LinesType);
    Py_ssize_t tail_room, tail_n = nargs == 8 ? tail_ids(args[5], &tail_room) : -1;
    if (nargs != 8 || !(lines || (!lines_only && PyDict_CheckExact(args[0]))) ||
        !PyBytes_Check(args[1]) || !PyBytes_Check(args[2]) || !PyBytes_Check(args[3]) ||
        !PyBytes_Check(args[4]) || tail_n < 0 || !PyUnicode_Check(args[6]) ||
        !PyLong_Check(args[7])) {
        PyErr_Format(PyExc_TypeError,
                     "%s(lines: %s, head: bytes, msg_id: bytes, marks: bytes, commit: bytes, "
                     "last_id: bytes | tuple[bytes, ...] (one or more), reply: str, "
                     "max_body: int)",
                     name, lines_only ? "Lines" : "Lines | dict");
        return -1;
    }
    Py_ssize_t max_body = PyLong_AsSsize_t(args[7]);
    if (max_body == -1 && PyErr_Occurred())
        return -1;
    if (!plain_subject(args[6]))
        return 0;
    *t = (FrameText){
        .head = PyBytes_AS_STRING(args[1]), .head_len = PyBytes_GET_SIZE(args[1]),
        .msg_id = PyBytes_AS_STRING(args[2]), .msg_id_len = PyBytes_GET_SIZE(args[2]),
        .marks = PyBytes_AS_STRING(args[3]), .marks_len = PyBytes_GET_SIZE(args[3]),
        .commit = PyBytes_AS_STRING(args[4]), .commit_len = PyBytes_GET_SIZE(args[4]),
        .reply = (const char *)PyUnicode_1BYTE_DATA(args[6]),
        .reply_len = PyUnicode_GET_LENGTH(args[6]),
    };
    if (tail_n == 0) {
        t->last_id = PyBytes_AS_STRING(args[5]);
        t->last_id_len = PyBytes_GET_SIZE(args[5]);
    } else {
        t->tail = args[5];
        t->tail_n = tail_n;
        t->tail_room = tail_room;
        if ((t->key_len = id_key_length(t->msg_id, t->msg_id_len)) < 0)
            return 0;
    }
    *f = (Framed){0};
    if (lines)
        f->rendered = (Lines *)args[0];
    else if ((f->items = PyDict_Items(args[0])) == NULL)
        return -1;
    *n = f->rendered != NULL ? PyList_GET_SIZE(f->rendered->subjects) : PyList_GET_SIZE(f->items);
    if (*n == 0 || *n < t->tail_n) /* nothing to publish: not a batch; too few messages */
        return 0;
    *heads_room = *body_bytes = 0;
    for (Py_ssize_t s = 0; s < *n; s++) {
        PyObject *subject = framed_subject(f, s);
        Py_ssize_t count, body = framed_size(f, s, &count);
        if (!plain_subject(subject) || body < 0 || body > max_body)
            return 0;
        *body_bytes += body;
        *heads_room += framed_head_room(t, PyUnicode_GET_LENGTH(subject)) + 2;
    }
    return 1;
}

/* frame_atomic(lines, head, msg_id, marks, commit, last_id, reply, max_body): one raw
 * batch's flow lines (a Lines, or subject → lines, in order) as the HPUB commands of one
 * JetStream atomic batch, byte for byte what publishing.encode writes for
 * Pipeline._messages's messages:
 *   HPUB <subject> <reply on the last, else nothing> <head size> <total size>\r\n
 *   NATS/1.0\r\n<head><count><msg_id><subject>:0<marks><n>\r\n<body>\r\n
 * and the last one, the commit, with the id ending `last_id` instead of the subject
 *   NATS/1.0\r\n<head><count><msg_id><last_id><marks><n>\r\n<commit>\r\n<body>\r\n
 * `head`, `msg_id`, `marks`, `commit` are the header text around the count, the subject
 * and the batch sequence, made (and checked) by the caller. `last_id` may instead be a
 * tuple of k ids (bytes, made and checked by the caller): the last k messages' ids in
 * full, the k-th the commit's — msg_id's text up to its header's value (through its
 * first ": "), then the id:
 *   NATS/1.0\r\n<head><count>\r\nNats-Msg-Id: <tail id><marks><n>\r\n...
 * Returns (data, messages, body bytes), or None when a message is not of that plain
 * shape (a subject that is not printable ASCII without spaces, a subject's lines over
 * max_body or none, no subject at all, fewer messages than tail ids, tail ids with a
 * msg_id without ": "): the caller then builds the messages in Python. */
static PyObject *
frame_atomic(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Framed f = {0};
    FrameText t;
    Py_ssize_t n, heads_room, body_bytes;
    PyObject *result = NULL, *data = NULL;
    int rc = framed_args("frame_atomic", args, nargs, 0, &f, &t, &n, &heads_room, &body_bytes);
    if (rc <= 0) {
        result = rc == 0 ? Py_NewRef(Py_None) : NULL;
        goto done;
    }
    data = PyBytes_FromStringAndSize(NULL, heads_room + body_bytes); /* cut below */
    if (data == NULL)
        goto done;
    char *o = PyBytes_AS_STRING(data), *start = o;
    for (Py_ssize_t s = 0; s < n; s++) {
        o = framed_head(&f, s, n, &t, o);
        o = framed_body(&f, s, o);
        o = put(o, "\r\n", 2);
    }
    if (_PyBytes_Resize(&data, o - start) < 0)
        goto done;
    result = Py_BuildValue("(Nnn)", data, n, body_bytes);
    data = NULL;
done:
    Py_XDECREF(data);
    Py_XDECREF(f.items);
    return result;
}

/* A Frame: frame_atomic's bytes, gathered rather than copied — the messages' heads and
 * line ends in a buffer of its own, the lines where flow_body rendered them (the Lines
 * is held) — and sent from there by send(); what a full socket did not take, rest()
 * copies (the socket's transport buffers it). A raw batch's output is ~1.1 MB: copied
 * into one bytes object, it was written onto fresh memory and read again by the kernel. */
typedef struct {
    PyObject_HEAD
    Lines *lines;
    char *heads;
    struct iovec *iov;
    Py_ssize_t n_iov, at; /* iov[at:] is unsent; iov[at] moved past what was sent of it */
    Py_ssize_t left;      /* bytes unsent */
} Frame;

static PyTypeObject FrameType;

static void
frame_dealloc(Frame *fr)
{
    Py_XDECREF(fr->lines);
    PyMem_Free(fr->heads);
    PyMem_Free(fr->iov);
    PyObject_Free(fr);
}

/* Mark `sent` bytes of iov[at:] sent. */
static void
frame_advance(Frame *fr, size_t sent)
{
    fr->left -= (Py_ssize_t)sent;
    while (sent > 0 && fr->at < fr->n_iov) {
        struct iovec *v = &fr->iov[fr->at];
        if (sent < v->iov_len) {
            v->iov_base = (char *)v->iov_base + sent;
            v->iov_len -= sent;
            return;
        }
        sent -= v->iov_len;
        fr->at++;
    }
}

/* Frame.send(fd): sendmsg the unsent bytes to the (non-blocking) socket `fd` until all
 * are sent or it would block; returns the bytes sent. OSError as sendmsg reports it. */
static PyObject *
frame_send(Frame *fr, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    Py_ssize_t sent = 0;
    while (fr->left > 0) {
        struct msghdr m = {0};
        m.msg_iov = fr->iov + fr->at;
        m.msg_iovlen = (size_t)Py_MIN(fr->n_iov - fr->at, (Py_ssize_t)IOV_MAX);
        ssize_t r;
        Py_BEGIN_ALLOW_THREADS
        r = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        Py_END_ALLOW_THREADS
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        frame_advance(fr, (size_t)r);
        sent += r;
    }
    return PyLong_FromSsize_t(sent);
}

/* Frame.rest(): the unsent bytes, copied; all of them count as sent then. */
static PyObject *
frame_rest(Frame *fr, PyObject *unused)
{
    PyObject *data = PyBytes_FromStringAndSize(NULL, fr->left);
    if (data == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(data);
    for (Py_ssize_t k = fr->at; k < fr->n_iov; k++)
        o = put(o, fr->iov[k].iov_base, (Py_ssize_t)fr->iov[k].iov_len);
    fr->at = fr->n_iov;
    fr->left = 0;
    return data;
}

static Py_ssize_t
frame_length(Frame *fr)
{
    return fr->left;
}

static PyMethodDef frame_methods[] = {
    {"send", (PyCFunction)frame_send, METH_O,
     "send(fd): send the unsent bytes to a non-blocking socket until it would block;\n"
     "returns how many were sent."},
    {"rest", (PyCFunction)frame_rest, METH_NOARGS,
     "rest(): the unsent bytes (a new bytes object); none are left unsent after it."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods frame_sequence = {.sq_length = (lenfunc)frame_length};

static PyTypeObject FrameType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowscope.enricher._flowcore.Frame",
    .tp_basicsize = sizeof(Frame),
    .tp_dealloc = (destructor)frame_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "frame_atomic's bytes of a Lines, gathered where they are, to be sent "
              "(len: the bytes not sent yet).",
    .tp_methods = frame_methods,
    .tp_as_sequence = &frame_sequence,
};

/* gather_atomic(lines, head, msg_id, marks, commit, last_id, reply, max_body): frame_atomic
 * of a Lines (last_id: bytes or tail ids, as there), as a Frame: (Frame, messages, body
 * bytes), or None as frame_atomic. */
static PyObject *
gather_atomic(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Framed f = {0};
    FrameText t;
    Py_ssize_t n, heads_room, body_bytes;
    int rc = framed_args("gather_atomic", args, nargs, 1, &f, &t, &n, &heads_room, &body_bytes);
    if (rc <= 0)
        return rc == 0 ? Py_NewRef(Py_None) : NULL;
    const Lines *l = f.rendered;
    Frame *fr = PyObject_New(Frame, &FrameType);
    if (fr == NULL)
        return NULL;
    fr->lines = (Lines *)Py_NewRef(l);
    fr->heads = PyMem_Malloc((size_t)heads_room); /* never moved: the iovecs point into it */
    fr->iov = PyMem_Malloc((size_t)(n + l->n + 1) * sizeof(struct iovec));
    fr->n_iov = fr->at = fr->left = 0;
    if (fr->heads == NULL || fr->iov == NULL) {
        Py_DECREF(fr);
        return PyErr_NoMemory();
    }
    char *o = fr->heads;
    /* each message's head, with the line end of the one before (one vector), then its
     * lines, one vector each, or one for a run that lies end to end in the buffer */
    for (Py_ssize_t s = 0; s < n; s++) {
        char *head = o;
        if (s > 0)
            o = put(o, "\r\n", 2);
        o = framed_head(&f, s, n, &t, o);
        fr->iov[fr->n_iov++] = (struct iovec){head, (size_t)(o - head)};
        struct iovec *last = NULL;
        for (Py_ssize_t i = l->per[s].first; i >= 0; i = l->at[i].next) {
            char *line = l->buf + l->at[i].offset;
            if (last != NULL && (char *)last->iov_base + last->iov_len == line) {
                last->iov_len += (size_t)l->at[i].len;
                continue;
            }
            last = &fr->iov[fr->n_iov++];
            *last = (struct iovec){line, (size_t)l->at[i].len};
        }
    }
    char *end = o;
    o = put(o, "\r\n", 2);
    fr->iov[fr->n_iov++] = (struct iovec){end, 2};
    for (Py_ssize_t k = 0; k < fr->n_iov; k++)
        fr->left += (Py_ssize_t)fr->iov[k].iov_len;
    return Py_BuildValue("(Nnn)", fr, n, body_bytes);
}

static PyObject *
configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"render_line", "record_error", "strings", "json_str",
                            "process_json", "transports", "flags", "end_reasons",
                            "flows_prefix", "directions", "kinds", "loads", NULL};
    PyObject *render, *error, *strs, *js, *pj, *tr, *fl, *reasons, *prefix, *dirs, *kind_tuple,
        *loads;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOO!OOO!O!OUOOO:configure", names, &render,
                                     &error, &PyDict_Type, &strs, &js, &pj, &PyList_Type, &tr,
                                     &PyList_Type, &fl, &reasons, &prefix, &dirs, &kind_tuple,
                                     &loads))
        return NULL;
    if (PyList_GET_SIZE(tr) != 256 || PyList_GET_SIZE(fl) != 256) {
        PyErr_SetString(PyExc_ValueError, "transports and flags need 256 entries each");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < 256; i++)
        if (!PyBytes_Check(PyList_GET_ITEM(tr, i)) || !PyBytes_Check(PyList_GET_ITEM(fl, i))) {
            PyErr_SetString(PyExc_TypeError, "transports and flags hold bytes");
            return NULL;
        }
    if (!PyTuple_Check(dirs) || PyTuple_GET_SIZE(dirs) != 2 || !PyTuple_Check(kind_tuple) ||
        PyTuple_GET_SIZE(kind_tuple) != N_KINDS) {
        PyErr_SetString(PyExc_ValueError, "directions: 2 strings; kinds: 6 strings");
        return NULL;
    }
    PyObject *reason_set = PyFrozenSet_New(reasons);
    if (reason_set == NULL)
        return NULL;
    Py_XSETREF(render_line, Py_NewRef(render));
    Py_XSETREF(json_loads, Py_NewRef(loads));
    Py_XSETREF(record_error, Py_NewRef(error));
    Py_XSETREF(strings, Py_NewRef(strs));
    Py_XSETREF(json_str, Py_NewRef(js));
    Py_XSETREF(process_json, Py_NewRef(pj));
    Py_XSETREF(transports, Py_NewRef(tr));
    Py_XSETREF(flag_tags, Py_NewRef(fl));
    Py_XSETREF(end_reasons, reason_set);
    Py_XSETREF(flows_prefix, Py_NewRef(prefix));
    Py_XSETREF(forward, Py_NewRef(PyTuple_GET_ITEM(dirs, 0)));
    Py_XSETREF(unknown, Py_NewRef(PyTuple_GET_ITEM(dirs, 1)));
    for (int i = 0; i < N_KINDS; i++)
        Py_XSETREF(kinds[i], Py_NewRef(PyTuple_GET_ITEM(kind_tuple, i)));
    PyDict_Clear(subject_cache);
    subject_ways_clear();
    observers_clear(); /* their JSON came from the strings and json_str configured before */
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ identities */

/* A str that JSON writes as it is: exact str, printable ASCII, no '"' or '\'. */
static int
plain_text(PyObject *text)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        return 0;
    const unsigned char *c = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (c[i] < 0x20 || c[i] > 0x7e || c[i] == '"' || c[i] == '\\')
            return 0;
    return 1;
}

/* One side's members `"<side>.address":"…","<side>.kind":"…","<side>.<key>":"…",…`. */
static PyObject *
sided_members(const char *side, Py_ssize_t side_len, PyObject *const *keys,
              PyObject *const *values, Py_ssize_t n)
{
    Py_ssize_t total = n - 1; /* the commas */
    for (Py_ssize_t i = 0; i < n; i++) /* "side.key":"value" */
        total += 1 + side_len + PyUnicode_GET_LENGTH(keys[i]) + 3 +
                 PyUnicode_GET_LENGTH(values[i]) + 1;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i)
            *o++ = ',';
        *o++ = '"';
        memcpy(o, side, (size_t)side_len);
        o += side_len;
        Py_ssize_t k = PyUnicode_GET_LENGTH(keys[i]), v = PyUnicode_GET_LENGTH(values[i]);
        memcpy(o, PyUnicode_1BYTE_DATA(keys[i]), (size_t)k);
        o += k;
        memcpy(o, "\":\"", 3);
        o += 3;
        memcpy(o, PyUnicode_1BYTE_DATA(values[i]), (size_t)v);
        o += v;
        *o++ = '"';
    }
    return out;
}

/* sided_json(address, kind, meta): (source_json, destination_json) of an identity, as
 * orjson.dumps({"source.address": address, "source.kind": kind, "source.<key>": value
 * for each meta item})[1:-1] writes them (and the same with "destination."); None when
 * a key or value is not a plain str (plain_text) or a key is "address" or "kind": the
 * caller renders that identity with orjson. */
#define SIDED_MAX 64
static PyObject *
sided_json(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "sided_json(address: str, kind: str, meta: dict)");
        return NULL;
    }
    PyObject *meta = args[2];
    Py_ssize_t n = 2 + PyDict_GET_SIZE(meta);
    if (n > SIDED_MAX || !plain_text(args[0]) || !plain_text(args[1]))
        Py_RETURN_NONE;
    PyObject *keys[SIDED_MAX], *values[SIDED_MAX];
    keys[0] = s_address, values[0] = args[0];
    keys[1] = s_kind, values[1] = args[1];
    Py_ssize_t pos = 0, i = 2;
    PyObject *key, *value;
    /* borrowed: nothing here runs Python code that could change the dict */
    while (PyDict_Next(meta, &pos, &key, &value)) {
        if (!plain_text(key) || !plain_text(value))
            Py_RETURN_NONE;
        Py_ssize_t k = PyUnicode_GET_LENGTH(key);
        const void *d = PyUnicode_1BYTE_DATA(key);
        if ((k == 7 && memcmp(d, "address", 7) == 0) || (k == 4 && memcmp(d, "kind", 4) == 0))
            Py_RETURN_NONE;
        keys[i] = key, values[i++] = value;
    }
    PyObject *source = sided_members("source.", 7, keys, values, n);
    if (source == NULL)
        return NULL;
    PyObject *destination = sided_members("destination.", 12, keys, values, n);
    if (destination == NULL) {
        Py_DECREF(source);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, source, destination);
    Py_DECREF(source);
    Py_DECREF(destination);
    return pair;
}

/* sha1(data, hardware) — for the tests: the core's SHA-1 of up to 55 bytes, with the
 * SHA extensions (when the CPU has them) or the portable rounds. */
static PyObject *
sha1(PyObject *module, PyObject *args)
{
    Py_buffer data;
    int hardware;
    if (!PyArg_ParseTuple(args, "y*p:sha1", &data, &hardware))
        return NULL;
    if (data.len > 55) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "one block: at most 55 bytes");
        return NULL;
    }
    uint8_t out[20];
    sha1_short_with(data.buf, (size_t)data.len, out, hardware);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out, 20);
}

static PyMethodDef methods[] = {
    {"flow_lines", (PyCFunction)(void (*)(void))flow_lines, METH_FASTCALL,
     "flow_lines(enricher, records, now, out): Enricher._flows's loop (lines path)."},
    {"flow_body", (PyCFunction)(void (*)(void))flow_body, METH_FASTCALL,
     "flow_body(enricher, body, lines, now, out): flow_lines on a raw batch's NDJSON body;\n"
     "False when it has another number of lines (-1: any) or a line is not a JSON object\n"
     "(nothing done: decode it with codec.decode)."},
    {"learn_addresses", (PyCFunction)(void (*)(void))learn_addresses, METH_FASTCALL,
     "learn_addresses(enricher, texts, out): addresses into the address table, with "
     "their cached identities."},
    {"merge_lines", merge_lines, METH_O,
     "merge_lines(parts): a new Lines of the parts' lines (a list or tuple of Lines, one or\n"
     "more), part after part, each in its order under its subject; subjects in the order\n"
     "of their first line. The parts are not changed."},
    {"frame_atomic", (PyCFunction)(void (*)(void))frame_atomic, METH_FASTCALL,
     "frame_atomic(lines, head, msg_id, marks, commit, last_id, reply, max_body): a raw\n"
     "batch's flow lines as one atomic batch's HPUB commands, or None (see flowcore.c);\n"
     "last_id: the commit's id after msg_id, or a tuple of the last messages' ids in full."},
    {"gather_atomic", (PyCFunction)(void (*)(void))gather_atomic, METH_FASTCALL,
     "gather_atomic(lines, head, msg_id, marks, commit, last_id, reply, max_body):\n"
     "frame_atomic of a Lines as a Frame, sent from where the lines are, or None (see\n"
     "flowcore.c)."},
    {"sided_json", (PyCFunction)(void (*)(void))sided_json, METH_FASTCALL,
     "sided_json(address, kind, meta): an identity's (source_json, destination_json), as\n"
     "orjson writes its source.*/destination.* members; None: not plain text (use orjson)."},
    {"sha1", sha1, METH_VARARGS,
     "sha1(data, hardware): the core's SHA-1 of at most 55 bytes (for the tests)."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, render_line, record_error, strings, json_str, process_json, transports,\n"
     "flags, end_reasons, flows_prefix, directions, kinds, loads): the Python path's pieces."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_flowcore", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__flowcore(void)
{
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
    return NULL
    INTERN(s_flow, "_flow");
    INTERN(s_tally, "tally");
    INTERN(s_lines, "lines");
    INTERN(s_bad, "bad");
    INTERN(s_records_in, "records_in");
    INTERN(s_records_out, "records_out");
    INTERN(s_dedup_dropped, "dedup_dropped");
    INTERN(s_process_hits, "process_hits");
    INTERN(s_dns_hits, "dns_hits");
    INTERN(s_dns_misses, "dns_misses");
    INTERN(s_lookups, "lookups");
    INTERN(s_addresses, "_addresses");
    INTERN(s_resolver, "resolver");
    INTERN(s_resolve, "resolve");
    INTERN(s_cache, "_cache");
    INTERN(s_generation, "generation");
    INTERN(s_known_address, "_known_address");
    INTERN(s_sockets, "sockets");
    INTERN(s_sockets_table, "_sockets");
    INTERN(s_dialled, "_dialled");
    INTERN(s_locals, "_locals");
    INTERN(s_names, "names");
    INTERN(s_entries, "_entries");
    INTERN(s_answers, "_answers");
    INTERN(s_lookup, "lookup");
    INTERN(s_observers, "observers");
    INTERN(s_seen, "seen");
    INTERN(s_in_minute, "in_minute");
    INTERN(s_minutes, "minutes");
    INTERN(s_ttl, "ttl_ns");
    INTERN(s_active, "active");
    INTERN(s_ttl_min, "ttl_min");
    INTERN(s_refine, "_refine");
    INTERN(s_move_to_end, "move_to_end");
    INTERN(s_kind, "kind");
    INTERN(s_address, "address");
    INTERN(s_rendered, "rendered");
    INTERN(s_token, "token");
    INTERN(s_home, "home");
    INTERN(s_source_json, "source_json");
    INTERN(s_destination_json, "destination_json");
    INTERN(s_event, "event");
    INTERN(s_json, "json");
    INTERN(s_container_id, "container_id");
    INTERN(s_connect, "connect");
    INTERN(s_accept, "accept");
    INTERN(k_observer, "observer");
    INTERN(k_start_ns, "start_ns");
    INTERN(k_end_ns, "end_ns");
    INTERN(k_end_reason, "end_reason");
    INTERN(k_proto, "proto");
    INTERN(k_src, "src");
    INTERN(k_dst, "dst");
    INTERN(k_sport, "sport");
    INTERN(k_dport, "dport");
    INTERN(k_bytes, "bytes");
    INTERN(k_packets, "packets");
    INTERN(k_rbytes, "rbytes");
    INTERN(k_rpackets, "rpackets");
    INTERN(k_tcp_flags, "tcp_flags");
    INTERN(k_initiator, "initiator");
    INTERN(k_ifindex, "ifindex");
    INTERN(k_nat_dst, "nat_dst");
#undef INTERN
    if ((subject_cache = PyDict_New()) == NULL)
        return NULL;
#ifdef HAVE_SHA_NI
    unsigned int a, b, c, d;
    int ssse3_sse41 = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 9)) && (c & (1u << 19));
    use_sha_ni = ssse3_sse41 && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29));
#endif
    if (PyType_Ready(&LinesType) < 0 || PyType_Ready(&FrameType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "SHA_NI", use_sha_ni) < 0 ||
                      PyModule_AddObjectRef(m, "Lines", (PyObject *)&LinesType) < 0 ||
                      PyModule_AddObjectRef(m, "Frame", (PyObject *)&FrameType) < 0))
        Py_CLEAR(m);
    return m;
}
