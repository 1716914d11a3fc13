/* ffirec_shim.so — the LD_PRELOAD allocation recorder.
 *
 * Interposes the C allocator and anonymous mmap/munmap/mremap, forwards every
 * call to the real implementation unchanged (same pointers, same errno, no
 * poisoning) and appends one record per call to the shared-memory ring named
 * by $FFIREC_SHM (layout and protocol: ffirec_shim.h). Without $FFIREC_SHM, or
 * with a ring it does not recognise, it is a transparent pass-through.
 *
 * Ordering: a call that releases memory (free, realloc, munmap, mremap)
 * reserves its sequence number *before* the real call, so no other thread can
 * be handed the same address with an earlier sequence number; a call that only
 * obtains memory reserves after.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>
#define SINGLE_THREADED() (__libc_single_threaded != 0)
#else
#define SINGLE_THREADED() 0
#endif

#include "ffirec_shim.h"

#define EXPORT __attribute__((visibility("default")))
#define TLS __thread __attribute__((tls_model("initial-exec")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define CALLER ((uint64_t)(uintptr_t)__builtin_return_address(0))

/* glibc's exported allocator entry points: calling them never re-enters us. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

/* ---- the flush trap ------------------------------------------------------
 * `ffirec_shim_flush_enter` loads the magic into rax and falls into the
 * exported `ffirec_shim_flush_trap`, whose first byte is int3. A tracer sees a
 * SIGTRAP stop with rip == &ffirec_shim_flush_trap + 1 and rax ==
 * FFIREC_FLUSH_MAGIC, drains the ring and resumes with the signal suppressed;
 * the `ret` then returns here. */
__asm__(".text\n"
        ".p2align 4\n"
        ".hidden ffirec_shim_flush_enter\n"
        ".type ffirec_shim_flush_enter,@function\n"
        "ffirec_shim_flush_enter:\n"
        "\tmovabsq $0x5041525448535546, %rax\n"
        ".globl ffirec_shim_flush_trap\n"
        ".type ffirec_shim_flush_trap,@function\n"
        "ffirec_shim_flush_trap:\n"
        "\tint3\n"
        "\tret\n"
        ".size ffirec_shim_flush_trap, .-ffirec_shim_flush_trap\n"
        ".size ffirec_shim_flush_enter, .-ffirec_shim_flush_enter\n");
void ffirec_shim_flush_enter(void);

/* ---- state ---------------------------------------------------------------- */
enum { ST_UNINIT = 0, ST_INIT = 1, ST_READY = 2, ST_OFF = 3 };
static _Atomic int g_state;
static struct ffirec_hdr *g_hdr;
static struct ffirec_ring *g_rc; /* this process's ring: control block */
static struct ffirec_slot *g_ring; /* ... and its slots */
static uint32_t g_ring_index;
static int g_primary; /* we own ring 1: nobody else ever reserves in it */
static struct ffirec_slot *g_recs; /* ring 0's slots; ring i at g_recs + i * g_cap */
static uint64_t g_cap;
static uint64_t g_fork_head; /* our ring's head, read just before fork() */
static uint32_t g_pid;
/* READY, and this process owns the primary ring: record() may take its fast
 * path (see there); 2 when host init tracks it (records may carry an epoch).
 * Cleared by use_ring(), set by ring_init(). */
static int g_fast;

/* The foreign arena's range, copied from the header at init (len 0: none). */
static uint64_t g_arena_lo, g_arena_len;

static TLS uint32_t t_tid;
static TLS uint64_t t_limit; /* a reservation below this has room (cached tail + capacity) */
static TLS int t_depth;      /* frames of this thread inside the record path */
/* The outermost frame's reserved, not yet committed slot: its seq + 1, 0 for
 * none, PENDING_UNKNOWN while it is reserving. A nested frame (a signal
 * handler) may wait for room only when that wait cannot need the consumer to
 * pass the outer slot first. */
static TLS uint64_t t_pending;
#define PENDING_UNKNOWN UINT64_MAX

static _Atomic(uint64_t) *hdr_head(void) { return (_Atomic(uint64_t) *)&g_rc->head; }
static _Atomic(uint64_t) *hdr_tail(void) { return (_Atomic(uint64_t) *)&g_rc->tail; }
static _Atomic(uint64_t) *hdr_dropped(void) { return (_Atomic(uint64_t) *)&g_rc->dropped; }
static _Atomic(uint64_t) *hdr_traps(void) { return (_Atomic(uint64_t) *)&g_rc->flush_traps; }
static _Atomic(uint32_t) *hdr_u32(uint32_t *p) { return (_Atomic(uint32_t) *)p; }

static void record_proc(uint16_t kind, uint64_t aux);
static uint8_t *g_hi_table; /* see "host initialisation tracking" below */
static void hi_init(void);

static void use_ring(uint32_t index) {
    g_ring_index = index;
    g_rc = &g_hdr->ring[index];
    g_ring = g_recs + (uint64_t)index * g_cap;
    g_primary = index == 1;
    g_fast = 0;
}

/* Maps the ring. Runs once per process image, from the constructor or from the
 * first allocation that precedes it. Uses raw syscalls only: no allocation, no
 * interposed symbol. */
static void ring_init(void) {
    int expected = ST_UNINIT;
    if (!atomic_compare_exchange_strong(&g_state, &expected, ST_INIT))
        return;
    int saved_errno = errno;
    int next = ST_OFF;
    const char *path = getenv("FFIREC_SHM");
    if (path && *path) {
        long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            struct stat st;
            if (syscall(SYS_fstat, fd, &st) == 0 && st.st_size >= (off_t)FFIREC_HDR_SIZE) {
                /* Populated below: our own ring only. */
                void *m = (void *)syscall(SYS_mmap, NULL, (size_t)st.st_size,
                                          PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (m != MAP_FAILED) {
                    struct ffirec_hdr *h = m;
                    uint64_t cap = h->capacity;
                    uint64_t magic = atomic_load_explicit((_Atomic(uint64_t) *)&h->magic,
                                                          memory_order_acquire);
                    if (magic == FFIREC_MAGIC && h->version == FFIREC_VERSION &&
                        h->hdr_size == FFIREC_HDR_SIZE && h->rec_size == FFIREC_REC_SIZE &&
                        cap != 0 && (cap & (cap - 1)) == 0 &&
                        cap <= ((uint64_t)st.st_size - FFIREC_HDR_SIZE) / FFIREC_REC_SIZE /
                                   FFIREC_RINGS) {
                        g_hdr = h;
                        g_recs = (struct ffirec_slot *)((char *)m + FFIREC_HDR_SIZE);
                        g_cap = cap;
                        g_pid = (uint32_t)syscall(SYS_getpid);
                        uint32_t owner = 0;
                        int primary = atomic_compare_exchange_strong(
                                          hdr_u32(&h->ring[1].owner_pid), &owner, g_pid) ||
                                      owner == g_pid;
                        use_ring(primary ? 1 : 0);
                        /* The primary ring's pages (allocated by the recorder)
                         * mapped in one batch, not one page fault per 128
                         * records in the program's first pass over them.
                         * Ring 0 is shared by forked children: they fault its
                         * pages in as they go rather than each mapping it whole. */
                        if (primary)
                            syscall(SYS_madvise, (char *)g_ring, (size_t)(cap * FFIREC_REC_SIZE),
                                    23 /* MADV_POPULATE_WRITE, Linux 5.14 */);
                        if (h->arena_end > h->arena_start && (h->arena_start & 4095) == 0 &&
                            (h->arena_end & 4095) == 0) {
                            g_arena_lo = h->arena_start;
                            g_arena_len = h->arena_end - h->arena_start;
                        }
                        next = ST_READY;
                    } else {
                        syscall(SYS_munmap, m, (size_t)st.st_size);
                    }
                }
            }
            syscall(SYS_close, fd);
        }
    }
    if (next == ST_READY)
        hi_init();
    atomic_store_explicit(&g_state, next, memory_order_release);
    /* 2: host-init tracking may put an epoch in a record (see record()). */
    g_fast = next == ST_READY && g_primary ? (g_hi_table == NULL ? 1 : 2) : 0;
    if (next == ST_READY) {
        /* We may be called from reserve() before it reserved anything, so no
         * slot of this thread is pending: the start record may wait. */
        int depth = t_depth;
        uint64_t pending = t_pending;
        t_depth = 0;
        record_proc(FFIREC_K_PROC_START, 0);
        t_depth = depth;
        t_pending = pending;
    }
    errno = saved_errno;
}

static inline int ring_ready(void) {
    int st = atomic_load_explicit(&g_state, memory_order_acquire);
    if (LIKELY(st == ST_READY))
        return 1;
    if (st == ST_UNINIT) {
        ring_init();
        return atomic_load_explicit(&g_state, memory_order_acquire) == ST_READY;
    }
    return 0;
}

static inline uint32_t my_tid(void) {
    uint32_t tid = t_tid;
    if (UNLIKELY(tid == 0)) {
        int saved_errno = errno;
        tid = (uint32_t)syscall(SYS_gettid);
        errno = saved_errno;
        t_tid = tid;
    }
    return tid;
}

/* Waits until slot `seq` may be written. Never returns before it may. */
static void __attribute__((noinline)) wait_for_room(uint64_t seq) {
    int saved_errno = errno;
    for (;;) {
        uint64_t tail = atomic_load_explicit(hdr_tail(), memory_order_acquire);
        if (seq < tail + g_cap) {
            t_limit = tail + g_cap;
            break;
        }
        if (atomic_load_explicit(hdr_u32(&g_hdr->closed), memory_order_relaxed)) {
            t_limit = seq + g_cap; /* for good: no wait on the records after this one */
            break; /* nobody will consume: overwrite rather than hang */
        }
        if (atomic_load_explicit(hdr_u32(&g_hdr->tracer_present), memory_order_relaxed)) {
            atomic_fetch_add_explicit(hdr_traps(), 1, memory_order_relaxed);
            ffirec_shim_flush_enter();
            tail = atomic_load_explicit(hdr_tail(), memory_order_acquire);
            if (seq < tail + g_cap)
                continue;
        }
        sched_yield();
    }
    errno = saved_errno;
}

/* Slots a record of this process takes: 2 (EXT) when it has an old pointer
 * or an aux word, and always on ring 0 (the pid goes with every record). */
static inline uint64_t slots_for(int ext) { return ext || !g_primary ? 2 : 1; }

/* A record fits one slot when it has no old pointer and no aux word, and its
 * ptr and size (a FREE's size is not written) are below 2^48: the one-slot
 * form keeps the host-init epoch in their top 16 bits (see "Records"). */
static inline int one_slot(uint16_t kind, uint64_t ptr, uint64_t size, uint64_t old_ptr, uint64_t aux) {
    return old_ptr == 0 && aux == 0 && (ptr | (kind == FFIREC_K_FREE ? 0 : size)) >> 48 == 0;
}

/* Reserves `n` consecutive slots (1 or 2); returns NULL when the shim is off
 * or the record had to be dropped (re-entered from a signal handler on a full
 * ring). A non-NULL slot must be completed with fill(), whatever the outcome
 * (FFIREC_K_NOP for a call that failed). */
static inline struct ffirec_slot *reserve(uint64_t *seq_out, uint64_t n) {
    if (UNLIKELY(!ring_ready()))
        return NULL;
    uint64_t seq;
    /* The caller counted itself in t_depth: 1 means not nested. */
    if (LIKELY(t_depth == 1)) {
        t_pending = PENDING_UNKNOWN;
        __asm__ volatile("" ::: "memory"); /* ordered before the reservation, for handlers */
        if (LIKELY(g_primary) && SINGLE_THREADED()) {
            /* Sole producer of this ring: no lock needed, and a single
             * instruction cannot be split by a signal handler. */
            seq = n;
            __asm__ volatile("xaddq %0, %1" : "+r"(seq), "+m"(g_rc->head)::"memory");
        } else {
            seq = atomic_fetch_add_explicit(hdr_head(), n, memory_order_relaxed);
        }
        t_pending = seq + 1;
        if (UNLIKELY(seq + n > t_limit))
            wait_for_room(seq + n - 1);
    } else {
        /* Nested on this thread (a signal handler). Waiting for room is safe
         * unless the room needed lies past an outer frame's uncommitted slot,
         * which cannot be committed before we return: then drop. */
        uint64_t pend = t_depth == 2 ? t_pending : PENDING_UNKNOWN;
        seq = atomic_load_explicit(hdr_head(), memory_order_relaxed);
        int wait;
        for (;;) {
            uint64_t tail = atomic_load_explicit(hdr_tail(), memory_order_acquire);
            wait = seq + n > tail + g_cap;
            int may_wait = pend == 0 || (pend != PENDING_UNKNOWN && seq + n <= pend - 1 + g_cap);
            if (wait && !may_wait) {
                atomic_fetch_add_explicit(hdr_dropped(), 1, memory_order_relaxed);
                return NULL;
            }
            if (atomic_compare_exchange_weak_explicit(hdr_head(), &seq, seq + n,
                                                      memory_order_relaxed, memory_order_relaxed))
                break;
        }
        if (wait)
            wait_for_room(seq + n - 1);
    }
    *seq_out = seq;
    return &g_ring[seq & (g_cap - 1)];
}

/* The foreign tid slot naming `tid` (see the header), -1 when none does. */
static inline int foreign_slot(uint32_t tid) {
    if (LIKELY(atomic_load_explicit(hdr_u32(&g_hdr->foreign_any), memory_order_relaxed) == 0))
        return -1;
    if (atomic_load_explicit(hdr_u32(&g_hdr->foreign_tid), memory_order_relaxed) == tid)
        return 0;
    for (unsigned k = 0; k < FFIREC_FOREIGN_SLOTS - 1; k++)
        if (atomic_load_explicit(hdr_u32(&g_hdr->foreign_more[k]), memory_order_relaxed) == tid)
            return (int)k + 1;
    return -1;
}

static inline uint32_t *allocator_slot(int slot) {
    return slot == 0 ? &g_hdr->allocator_tid : &g_hdr->allocator_more[slot - 1];
}

/* The host-init epoch the next record carries (set by hi_track_slow). */
static TLS uint32_t t_hi_ep;

/* How far ahead of its own record a producer asks for ownership of the slot
 * it will probably write next (the consumer last read that line on another
 * core): a few percent off the hot path, measured. */
#define PREFETCH_AHEAD 16

/* Commits the record whose first slot `r` (sequence number `seq`) is
 * written but for its header: the header with `bits` (kind, flags, tid), last. */
static inline __attribute__((always_inline)) void commit(struct ffirec_slot *r, uint64_t seq, uint64_t bits) {
    atomic_store_explicit((_Atomic(uint64_t) *)&r->hdr, (uint64_t)(uint32_t)(seq + 1) | bits, memory_order_release);
    /* prefetchw is a hint (a NOP on CPUs without it); spelled in asm so the
     * baseline x86-64 target still emits it. */
    __asm__ volatile("prefetchw %0" ::"m"(*(const char *)&g_ring[(seq + PREFETCH_AHEAD) & (g_cap - 1)]));
}

/* The calling thread's slot header bits: its tid, and FOREIGN when it is in
 * a foreign tid slot. */
static inline uint64_t caller_bits(void) {
    uint32_t tid = my_tid();
    return (uint64_t)(tid & 0xffffff) << FFIREC_HDR_TID_SHIFT |
           (uint64_t)(foreign_slot(tid) >= 0 ? FFIREC_F_FOREIGN : 0) << FFIREC_HDR_FLAGS_SHIFT;
}

/* Writes the record into the `n` slots reserved at `seq`, the first slot's
 * header last (the commit), as a call of the thread and mode `bits` (see
 * caller_bits()) made it. A FREE leaves `size` unwritten. */
static inline __attribute__((always_inline)) void fill_as(struct ffirec_slot *r, uint64_t seq, uint64_t n,
                                                          uint16_t kind, uint64_t ptr, uint64_t size,
                                                          uint64_t old_ptr, uint64_t caller, uint64_t aux,
                                                          uint32_t hi_ep, uint64_t bits) {
    uint64_t flags = n == 2 ? FFIREC_F_EXT : 0;
    uint64_t who = bits & (uint64_t)0xffffff << FFIREC_HDR_TID_SHIFT;
    if (n == 2) {
        struct ffirec_slot *c = &g_ring[(seq + 1) & (g_cap - 1)];
        c->w[0] = old_ptr;
        c->w[1] = aux;
        c->w[2] = g_pid | (uint64_t)hi_ep << 32; /* see "Host init" in ffirec_shim.h */
        c->hdr = (uint64_t)(uint32_t)(seq + 2) | (uint64_t)FFIREC_K_CONT << FFIREC_HDR_KIND_SHIFT | who;
    }
    if (n == 2) {
        r->w[0] = ptr;
        if (kind != FFIREC_K_FREE)
            r->w[1] = size;
    } else {
        /* One slot: ptr and size are below 2^48 (see one_slot()); their top
         * 16 bits carry the host-init epoch's low and high halves. */
        r->w[0] = ptr | (uint64_t)(hi_ep & 0xffff) << 48;
        if (kind != FFIREC_K_FREE)
            r->w[1] = size | (uint64_t)(hi_ep >> 16) << 48;
    }
    r->w[2] = caller;
    commit(r, seq, (uint64_t)kind << FFIREC_HDR_KIND_SHIFT | flags << FFIREC_HDR_FLAGS_SHIFT | bits);
}

/* fill_as() for a record of the calling thread. */
static inline __attribute__((always_inline)) void fill(struct ffirec_slot *r, uint64_t seq, uint64_t n,
                                                       uint16_t kind, uint64_t ptr, uint64_t size,
                                                       uint64_t old_ptr, uint64_t caller, uint64_t aux,
                                                       uint32_t hi_ep) {
    fill_as(r, seq, n, kind, ptr, size, old_ptr, caller, aux, hi_ep, caller_bits());
}

/* reserve()'s outermost frame for the sole producer of the primary ring
 * (single-threaded, t_depth 1): `n` slots from one unlocked xadd, waiting
 * for room when the consumer is a ring behind. Returns the first's seq. */
static inline __attribute__((always_inline)) uint64_t reserve_fast(uint64_t n) {
    t_pending = PENDING_UNKNOWN;
    __asm__ volatile("" ::: "memory"); /* ordered before the reservation, for handlers */
    uint64_t seq = n;
    __asm__ volatile("xaddq %0, %1" : "+r"(seq), "+m"(g_rc->head)::"memory");
    t_pending = seq + 1;
    if (UNLIKELY(seq + n > t_limit))
        wait_for_room(seq + n - 1);
    return seq;
}

/* ---- the held malloc (contract: "Held malloc" in ffirec_shim.h) ---------- */
#define LOW48 ((1ull << 48) - 1)

/* The held record's slot header bits but its kind (its thread and mode):
 * its whole header, a MALLOC's kind being 0. And the host-init epoch in the
 * top bits of its ptr and size words. */
_Static_assert(FFIREC_K_MALLOC == 0, "held_bits(): a held header's kind bits are 0");
static inline uint64_t held_bits(void) { return g_hdr->held.hdr; }
static inline uint32_t held_epoch(uint64_t w, uint64_t size) {
    return (uint32_t)(w >> 48) | (uint32_t)(size >> 48) << 16;
}

/* Takes the held record: its ptr word, 0 when nothing is held (or someone
 * else took it first). One read-modify-write, so this thread's signal
 * handlers, other threads and the recorder take it at most once between them. */
static inline uint64_t held_take(void) {
    uint64_t w = *(volatile uint64_t *)&g_hdr->held.ptr;
    if (LIKELY(w == 0))
        return 0;
    if (SINGLE_THREADED()) {
        /* Only this thread and, while it is stopped, the recorder: an
         * unlocked cmpxchg is one instruction neither can split. */
        uint64_t seen = w;
        uint8_t ok;
        __asm__ volatile("cmpxchgq %3, %1" : "+a"(seen), "+m"(g_hdr->held.ptr), "=@ccz"(ok) : "r"(0ull) : "memory");
        return ok ? w : 0;
    }
    return atomic_compare_exchange_strong_explicit((_Atomic(uint64_t) *)&g_hdr->held.ptr, &w, 0,
                                                   memory_order_acq_rel, memory_order_relaxed)
               ? w
               : 0;
}

/* Writes the taken held record (ptr word `w`) into the ring: one slot, as it
 * would have been written at its malloc. The caller counted itself in t_depth. */
static void __attribute__((noinline)) held_write(uint64_t w) {
    uint64_t size = g_hdr->held.size, caller = g_hdr->held.caller;
    uint64_t seq;
    struct ffirec_slot *r = reserve(&seq, 1);
    if (!r)
        return;
    fill_as(r, seq, 1, FFIREC_K_MALLOC, w & LOW48, size & LOW48, 0, caller, 0, held_epoch(w, size), held_bits());
    if (t_depth == 1)
        t_pending = 0;
}

/* Any record of the primary ring's owner moves the held one in first. */
static inline void held_flush(void) {
    if (LIKELY(g_primary)) {
        uint64_t w = held_take();
        if (UNLIKELY(w != 0))
            held_write(w);
    }
}

/* Holds a one-slot malloc record instead of reserving it (fast path only:
 * single-threaded, not nested, primary ring). */
static inline __attribute__((always_inline)) void held_put(uint64_t ptr, uint64_t size, uint64_t caller,
                                                          uint32_t hi_ep) {
    t_depth = 1;
    held_flush();
    g_hdr->held.size = size | (uint64_t)(hi_ep >> 16) << 48;
    g_hdr->held.caller = caller;
    g_hdr->held.hdr = (uint64_t)FFIREC_K_MALLOC << FFIREC_HDR_KIND_SHIFT | caller_bits();
    __asm__ volatile("" ::: "memory"); /* the ptr word last */
    *(volatile uint64_t *)&g_hdr->held.ptr = ptr | (uint64_t)(hi_ep & 0xffff) << 48;
    t_depth = 0;
}

/* The free of `ptr` when the held record is its malloc: one MALLOC_FREE
 * record, returns 1. Otherwise moves the held record into the ring, returns 0. */
static inline __attribute__((always_inline)) int held_pair(uint64_t ptr, uint64_t caller) {
    t_depth = 1;
    uint64_t w = held_take();
    if (LIKELY(w != 0) && (w & LOW48) == ptr) {
        uint64_t size = g_hdr->held.size, mcaller = g_hdr->held.caller;
        uint64_t delta = caller - mcaller;
        int one = (mcaller >> 48 | (delta + 0x8000) >> 16) == 0; /* a caller below 2^48, |delta| < 2^15 */
        uint64_t seq = reserve_fast(one ? 1 : 2);
        struct ffirec_slot *r = &g_ring[seq & (g_cap - 1)];
        if (LIKELY(one)) {
            /* The rule, written here as held: the words as they are (the
             * epoch in place), the free's caller as a difference in the
             * caller word's top 16 bits. */
            r->w[0] = w;
            r->w[1] = size;
            r->w[2] = mcaller | (uint64_t)(uint16_t)delta << 48;
            commit(r, seq, (uint64_t)FFIREC_K_MALLOC_FREE << FFIREC_HDR_KIND_SHIFT | held_bits());
        } else { /* the free's caller as the aux word */
            fill_as(r, seq, 2, FFIREC_K_MALLOC_FREE, ptr, size & LOW48, 0, mcaller, caller, held_epoch(w, size),
                    held_bits());
        }
        t_pending = 0;
        t_depth = 0;
        return 1;
    }
    if (w != 0)
        held_write(w);
    t_depth = 0;
    return 0;
}

/* The general record path: any ring, any thread, nested frames. */
static void __attribute__((noinline)) record_slow(uint16_t kind, uint64_t ptr, uint64_t size,
                                                  uint64_t old_ptr, uint64_t caller, uint64_t aux) {
    t_depth++;
    if (LIKELY(ring_ready()))
        held_flush();
    uint64_t seq;
    uint32_t hi_ep = t_hi_ep;
    t_hi_ep = 0;
    uint64_t n = slots_for(!one_slot(kind, ptr, size, old_ptr, aux));
    struct ffirec_slot *r = reserve(&seq, n);
    if (r) {
        if (n == 2)
            fill(r, seq, 2, kind, ptr, size, old_ptr, caller, aux, hi_ep);
        else
            fill(r, seq, 1, kind, ptr, size, 0, caller, 0, hi_ep);
        if (t_depth == 1)
            t_pending = 0;
    }
    t_depth--;
}

/* Appends one record. Fast path, inlined into every allocation function: the
 * sole producer of the primary ring (single-threaded), not nested — the same
 * steps as reserve()'s outermost frame, without its calls and re-checks. The
 * interposed malloc/free pair cost ~1.7x native before (passthrough alone),
 * most of it in those calls. */
/* record()'s fast path proper: `n` slots, the epoch `hi_ep` (0: none). */
static inline __attribute__((always_inline)) void record_fast(uint64_t n, uint16_t kind, uint64_t ptr,
                                                              uint64_t size, uint64_t old_ptr, uint64_t caller,
                                                              uint64_t aux, uint32_t hi_ep) {
    t_depth = 1;
    uint64_t seq = reserve_fast(n);
    struct ffirec_slot *r = &g_ring[seq & (g_cap - 1)];
    if (n == 2)
        fill(r, seq, 2, kind, ptr, size, old_ptr, caller, aux, hi_ep);
    else
        fill(r, seq, 1, kind, ptr, size, 0, caller, 0, hi_ep);
    t_pending = 0;
    t_depth = 0;
}

static inline __attribute__((always_inline)) void record(uint16_t kind, uint64_t ptr, uint64_t size,
                                                         uint64_t old_ptr, uint64_t caller, uint64_t aux) {
    int fast = g_fast;
    if (LIKELY(fast) && SINGLE_THREADED() && LIKELY(t_depth == 0)) {
        /* On the primary ring a record needs a second slot only for an old
         * pointer, an aux word (a constant 0 for malloc and free) or a
         * pointer or size of 2^48 or more; the host-init epoch (read only
         * while host init tracks this process) fits in the first slot. */
        uint32_t hi_ep = 0;
        if (fast == 2) {
            hi_ep = t_hi_ep;
            t_hi_ep = 0;
        }
        int one = one_slot(kind, ptr, size, old_ptr, aux);
        /* A malloc waits in `held` for its free (see "Held malloc"). */
        if (kind == FFIREC_K_MALLOC && LIKELY(one)) {
            held_put(ptr, size, caller, hi_ep);
            return;
        }
        if (kind == FFIREC_K_FREE) {
            if (LIKELY(held_pair(ptr, caller)))
                return;
        } else {
            t_depth = 1;
            held_flush();
            t_depth = 0;
        }
        record_fast(one ? 1 : 2, kind, ptr, size, old_ptr, caller, aux, hi_ep);
        return;
    }
    record_slow(kind, ptr, size, old_ptr, caller, aux);
}

static void record_proc(uint16_t kind, uint64_t aux) { record(kind, 0, 0, 0, 0, aux); }

/* A slot reserved before a releasing call: `begin` then exactly one `end`. */
struct pending {
    struct ffirec_slot *r;
    uint64_t seq;
    uint64_t n;
};

/* `ext`: the record may need an old pointer or an aux word (two slots). */
static inline struct pending begin(int ext) {
    struct pending p;
    t_depth++;
    p.r = NULL;
    p.n = 1;
    if (LIKELY(ring_ready())) { /* slots_for needs the ring chosen */
        held_flush();
        p.n = slots_for(ext);
        p.r = reserve(&p.seq, p.n);
    }
    return p;
}

static inline void end(struct pending p, uint16_t kind, uint64_t ptr, uint64_t size,
                       uint64_t old_ptr, uint64_t caller, uint64_t aux) {
    uint32_t hi_ep = t_hi_ep;
    t_hi_ep = 0;
    if (p.r) {
        if (p.n == 2)
            fill(p.r, p.seq, 2, kind, ptr, size, old_ptr, caller, aux, hi_ep);
        else
            fill(p.r, p.seq, 1, kind, ptr, size, 0, caller, 0, hi_ep);
        if (t_depth == 1)
            t_pending = 0;
    }
    t_depth--;
}


/* ---- the foreign arena ------------------------------------------------------
 * A small size-class allocator over the fixed range [g_arena_lo, +g_arena_len)
 * (layout contract: "Foreign arena" in ffirec_shim.h). Blocks are powers of
 * two from 32 bytes to 1 MiB, larger ones page-granular; every user pointer
 * has a 16-byte header just below it. Freed blocks go to per-class lists.
 * Fresh memory comes zeroed from the anonymous mapping; reused memory is
 * cleared only for calloc. One spinlock: foreign mode is one thread at a
 * time, frees from other threads are rare. */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#define ARENA_MAGIC 0xf0e1a7e5u
#define ARENA_FREED 0xdeadf4eeu
#define ARENA_HDR 16u
#define ARENA_MIN_SHIFT 5
#define ARENA_MAX_SHIFT 20
#define ARENA_CLASSES (ARENA_MAX_SHIFT - ARENA_MIN_SHIFT + 1)
#define ARENA_PAGE 4096u

struct arena_hdr {
    uint32_t magic;
    uint32_t back;       /* user pointer - block start */
    uint64_t block_size; /* bytes of the whole block */
};

struct arena_large {
    struct arena_large *next;
    uint64_t size;
};

enum { AR_UNMAPPED = 0, AR_MAPPED = 1, AR_FAILED = 2 };
static _Atomic int g_arena_state;
static atomic_flag g_arena_lock = ATOMIC_FLAG_INIT;
static char *g_arena_bump;
static char *g_arena_class_free[ARENA_CLASSES]; /* link at block + 8 */
static struct arena_large *g_arena_large;        /* node at block + 8 */

/* Only a process whose arena mapping succeeded owns that range: elsewhere
 * whatever lives there (the program's own mapping) is not ours to route. */
static inline int in_arena(const void *p) {
    return UNLIKELY((uint64_t)(uintptr_t)p - g_arena_lo < g_arena_len) &&
           atomic_load_explicit(&g_arena_state, memory_order_acquire) == AR_MAPPED;
}

static void arena_lock(void) {
    while (atomic_flag_test_and_set_explicit(&g_arena_lock, memory_order_acquire))
        sched_yield();
}

static void arena_unlock(void) { atomic_flag_clear_explicit(&g_arena_lock, memory_order_release); }

static int __attribute__((noinline)) arena_map(void) {
    int saved_errno = errno;
    arena_lock();
    if (atomic_load_explicit(&g_arena_state, memory_order_relaxed) == AR_UNMAPPED) {
        void *want = (void *)(uintptr_t)g_arena_lo;
        void *m = (void *)syscall(SYS_mmap, want, (size_t)g_arena_len, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
                                  -1, 0);
        int ok = m == want;
        if (!ok && m != MAP_FAILED) /* a kernel without MAP_FIXED_NOREPLACE put it elsewhere */
            syscall(SYS_munmap, m, (size_t)g_arena_len);
        g_arena_bump = want;
        atomic_store_explicit(&g_arena_state, ok ? AR_MAPPED : AR_FAILED, memory_order_release);
    }
    arena_unlock();
    errno = saved_errno;
    return atomic_load_explicit(&g_arena_state, memory_order_acquire) == AR_MAPPED;
}

/* True when this call must be served by the arena. */
static inline int want_arena(void) {
    if (LIKELY(g_arena_len == 0))
        return 0;
    if (LIKELY(foreign_slot(my_tid()) < 0))
        return 0;
    if (!atomic_load_explicit(hdr_u32(&g_hdr->arena_enabled), memory_order_relaxed))
        return 0;
    int st = atomic_load_explicit(&g_arena_state, memory_order_acquire);
    return st == AR_MAPPED || (st == AR_UNMAPPED && arena_map());
}

static inline unsigned arena_class(uint64_t total) {
    unsigned shift = total <= (1u << ARENA_MIN_SHIFT) ? ARENA_MIN_SHIFT
                                                      : 64 - (unsigned)__builtin_clzll(total - 1);
    return shift - ARENA_MIN_SHIFT;
}

static char *arena_bump(uint64_t size, uint64_t align) {
    uintptr_t at = ((uintptr_t)g_arena_bump + align - 1) & ~(uintptr_t)(align - 1);
    if (at + size > g_arena_lo + g_arena_len || at + size < at)
        return NULL;
    g_arena_bump = (char *)(at + size);
    return (char *)at;
}

/* n bytes aligned to `align` (a power of two); NULL + ENOMEM when full. */
static void *arena_alloc(size_t n, size_t align, int zero) {
    if (align < ARENA_HDR)
        align = ARENA_HDR;
    uint64_t total;
    if (__builtin_add_overflow((uint64_t)n, (uint64_t)ARENA_HDR + (align > ARENA_HDR ? align : 0),
                               &total)) {
        errno = ENOMEM;
        return NULL;
    }
    char *block = NULL;
    uint64_t bsize;
    int reused = 0;
    arena_lock();
    if (total <= (1u << ARENA_MAX_SHIFT)) {
        unsigned c = arena_class(total);
        bsize = 1ull << (c + ARENA_MIN_SHIFT);
        block = g_arena_class_free[c];
        if (block) {
            g_arena_class_free[c] = *(char **)(block + 8);
            reused = 1;
        } else {
            block = arena_bump(bsize, ARENA_HDR);
        }
    } else {
        bsize = (total + ARENA_PAGE - 1) & ~(uint64_t)(ARENA_PAGE - 1);
        if (bsize < total) {
            arena_unlock();
            errno = ENOMEM;
            return NULL;
        }
        for (struct arena_large **l = &g_arena_large; *l; l = &(*l)->next) {
            if ((*l)->size >= bsize) {
                bsize = (*l)->size;
                block = (char *)*l - 8;
                *l = (*l)->next;
                reused = 1;
                break;
            }
        }
        if (!block)
            block = arena_bump(bsize, ARENA_PAGE);
    }
    arena_unlock();
    if (!block) {
        errno = ENOMEM;
        return NULL;
    }
    uintptr_t user = ((uintptr_t)block + ARENA_HDR + align - 1) & ~(uintptr_t)(align - 1);
    struct arena_hdr *h = (struct arena_hdr *)(user - ARENA_HDR);
    h->magic = ARENA_MAGIC;
    h->back = (uint32_t)(user - (uintptr_t)block);
    h->block_size = bsize;
    if (zero && reused)
        memset((void *)user, 0, n);
    return (void *)user;
}

static inline struct arena_hdr *arena_hdr_of(void *p) {
    struct arena_hdr *h = (struct arena_hdr *)((char *)p - ARENA_HDR);
    if (h->magic != ARENA_MAGIC) /* double free or a pointer the arena never returned */
        abort();
    return h;
}

static size_t arena_usable(void *p) {
    struct arena_hdr *h = arena_hdr_of(p);
    return (size_t)(h->block_size - h->back);
}

static void arena_free(void *p) {
    struct arena_hdr *h = arena_hdr_of(p);
    char *block = (char *)p - h->back;
    uint64_t bsize = h->block_size;
    h->magic = ARENA_FREED;
    arena_lock();
    if (bsize <= (1u << ARENA_MAX_SHIFT)) {
        unsigned c = arena_class(bsize);
        *(char **)(block + 8) = g_arena_class_free[c];
        g_arena_class_free[c] = block;
    } else {
        struct arena_large *l = (struct arena_large *)(block + 8);
        l->size = bsize;
        l->next = g_arena_large;
        g_arena_large = l;
    }
    arena_unlock();
}

/* realloc of an arena pointer: the result stays in the arena. */
static void *arena_realloc(void *old, size_t n) {
    size_t usable = arena_usable(old);
    if (n == 0) { /* glibc semantics: free, return NULL */
        arena_free(old);
        return NULL;
    }
    if (n <= usable)
        return old;
    int saved_errno = errno;
    void *p = arena_alloc(n, ARENA_HDR, 0);
    errno = saved_errno;
    if (!p) /* arena exhausted: the block moves to glibc's heap */
        p = __libc_malloc(n);
    if (p) {
        memcpy(p, old, usable);
        arena_free(old);
    }
    return p;
}

static inline size_t pow2_at_least(size_t a) {
    if (a <= 1)
        return 1;
    return (size_t)1 << (64 - __builtin_clzll(a - 1));
}

/* ---- host initialisation tracking ------------------------------------------
 * Contract: "Host init" in ffirec_shim.h; the recorder side is
 * recorder/src/hostinit.rs. Kept apart from the record path: the allocation
 * functions call hi_track() once, just before their record, and it costs two loads
 * when tracking is off. It runs before the block's record is committed: by the
 * time the recorder reads the record, the block's pages are protected and
 * marked (a syscall stop inside hi_track must not find the record first). */
static uint8_t *g_hi_table; /* NULL: no table in this process */

/* Maps the table (from ring_init, raw syscalls only). */
static void hi_init(void) {
    if (!atomic_load_explicit(hdr_u32(&g_hdr->hostinit_want), memory_order_relaxed))
        return;
    void *m = (void *)syscall(SYS_mmap, (void *)(uintptr_t)FFIREC_HI_TABLE, (size_t)FFIREC_HI_TABLE_LEN,
                              PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | 0x100000 /* FIXED_NOREPLACE */,
                              -1, 0);
    if (m == (void *)(uintptr_t)FFIREC_HI_TABLE)
        g_hi_table = m;
    else if (m != MAP_FAILED)
        syscall(SYS_munmap, m, (size_t)FFIREC_HI_TABLE_LEN);
}

/* mprotect(PROT_READ) issued from the shim's own text. */
static inline long hi_protect(uint64_t addr, uint64_t len) {
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"((long)SYS_mprotect), "D"(addr), "S"(len), "d"((long)PROT_READ)
                     : "rcx", "r11", "memory");
    return ret;
}

static void __attribute__((noinline)) hi_track_slow(const void *p, size_t n) {
    if (foreign_slot(my_tid()) >= 0)
        return; /* foreign mode: host pages are guarded; the block is the library's */
    uint64_t first = (uint64_t)(uintptr_t)p >> 12;
    uint64_t last = ((uint64_t)(uintptr_t)p + n - 1) >> 12;
    if (last >= FFIREC_HI_TABLE_LEN || last < first)
        return;
    /* Read before the table: see "Host init" in ffirec_shim.h. */
    t_hi_ep = (uint32_t)__atomic_load_n(&g_hdr->hostinit_epoch, __ATOMIC_SEQ_CST);
    uint64_t run = 0, run_len = 0;
    for (uint64_t pg = first; pg <= last + 1; pg++) {
        uint8_t st = pg <= last ? __atomic_load_n(&g_hi_table[pg], __ATOMIC_RELAXED) : 1;
        if (pg <= last && (st == 0 || st == 2 || st == 4)) {
            if (run_len == 0)
                run = pg;
            run_len++;
            continue;
        }
        if (run_len) {
            /* 4 first: a write fault on the page between the mprotect and the
             * final state (another thread, a signal handler here) is the
             * recorder's to record, not the program's SIGSEGV. Another thread
             * finding 4 protects the page itself before returning its block. */
            for (uint64_t k = run; k < run + run_len; k++)
                __atomic_store_n(&g_hi_table[k], 4, __ATOMIC_SEQ_CST);
            long rc = hi_protect(run << 12, run_len << 12);
            __atomic_fetch_add(&g_hdr->hostinit_protects, 1, __ATOMIC_SEQ_CST);
            /* Failed: never tracked here (the recorder reads 3 as unknown).
             * A page the recorder released meanwhile stays as it said. */
            for (uint64_t k = run; k < run + run_len; k++) {
                uint8_t four = 4;
                __atomic_compare_exchange_n(&g_hi_table[k], &four, rc == 0 ? 1 : 3, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_RELAXED);
            }
            run_len = 0;
        }
    }
}

static inline void hi_track(const void *p, size_t n) {
    if (LIKELY(g_hi_table == NULL) || UNLIKELY(p == NULL || n == 0))
        return;
    /* A block on one or two dead pages (3: never tracked again) needs
     * nothing, not even an epoch (the recorder reads a dead page's bytes as
     * unknown whatever the epoch): the rule once a heap has warmed up. */
    uint64_t first = (uint64_t)(uintptr_t)p >> 12, last = ((uint64_t)(uintptr_t)p + n - 1) >> 12;
    if (LIKELY(last - first <= 1 && last < FFIREC_HI_TABLE_LEN) &&
        __atomic_load_n(&g_hi_table[first], __ATOMIC_RELAXED) == 3 &&
        __atomic_load_n(&g_hi_table[last], __ATOMIC_RELAXED) == 3)
        return;
    if (atomic_load_explicit(hdr_u32(&g_hdr->hostinit_pid), memory_order_relaxed) != g_pid || in_arena(p))
        return;
    hi_track_slow(p, n);
}

/* ---- real functions resolved with dlsym ------------------------------------ */
static TLS int t_resolving;

static void *resolve(const char *name) {
    t_resolving++;
    void *f = dlsym(RTLD_NEXT, name);
    t_resolving--;
    return f;
}

#define REAL(type, name)                                                     \
    static _Atomic(type) real_##name;                                        \
    static type get_##name(void) {                                           \
        type f = atomic_load_explicit(&real_##name, memory_order_acquire);   \
        if (UNLIKELY(f == NULL) && t_resolving == 0) {                       \
            f = (type)resolve(#name);                                        \
            atomic_store_explicit(&real_##name, f, memory_order_release);    \
        }                                                                    \
        return f;                                                            \
    }

typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*aligned_alloc_fn)(size_t, size_t);
typedef size_t (*malloc_usable_size_fn)(void *);
typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*munmap_fn)(void *, size_t);
typedef void *(*mremap_fn)(void *, size_t, size_t, int, ...);
typedef pid_t (*fork_fn)(void);
REAL(posix_memalign_fn, posix_memalign)
REAL(aligned_alloc_fn, aligned_alloc)
REAL(malloc_usable_size_fn, malloc_usable_size)
REAL(mmap_fn, mmap)
REAL(munmap_fn, munmap)
REAL(mremap_fn, mremap)
REAL(fork_fn, fork)

/* ---- process lifecycle --------------------------------------------------- */
static void before_fork(void) {
    if (atomic_load_explicit(&g_state, memory_order_acquire) == ST_READY) {
        /* The child inherits the held block: its malloc goes before the fork point. */
        t_depth++;
        held_flush();
        t_depth--;
        g_fork_head = atomic_load_explicit(hdr_head(), memory_order_acquire);
        /* Inside our fork() wrapper the FORKED slot is reserved but is
         * committed only when fork() returns in the parent (after the
         * recorder has handled the fork): the child's records must not wait
         * for it, or they would reach the consumer after the child's first
         * ptrace stops. Everything before that slot is the fork point. */
        if (t_depth == 1 && t_pending != 0 && t_pending != PENDING_UNKNOWN && t_pending - 1 < g_fork_head)
            g_fork_head = t_pending - 1;
    }
    arena_lock();
}

static void after_fork_parent(void) { arena_unlock(); }

static void after_fork_child(void) {
    arena_unlock();
    uint32_t parent = g_pid;
    t_tid = 0;
    if (atomic_load_explicit(&g_state, memory_order_acquire) == ST_READY) {
        g_pid = (uint32_t)syscall(SYS_getpid);
        uint32_t parent_ring = g_ring_index;
        use_ring(0); /* ring 1 belongs to the parent */
        t_limit = 0; /* cached for the parent's ring */
        /* Inside our fork() wrapper t_depth counts the parent's pending slot,
         * which is not ours to wait for: this record may wait for room. */
        int depth = t_depth;
        t_depth = 0;
        t_pending = 0;
        record(FFIREC_K_FORK, 0, g_fork_head, parent_ring, 0, parent);
        t_depth = depth;
    }
}

__attribute__((constructor)) static void shim_init(void) {
    int saved_errno = errno;
    ring_init();
    (void)get_posix_memalign();
    (void)get_aligned_alloc();
    (void)get_malloc_usable_size();
    (void)get_mmap();
    (void)get_munmap();
    (void)get_mremap();
    (void)get_fork();
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    errno = saved_errno;
}

/* fork(): the parent's FORKED record takes its sequence number before the
 * child exists, so it marks exactly the state the child inherits. */
EXPORT pid_t fork(void) {
    fork_fn f = get_fork();
    if (UNLIKELY(f == NULL)) {
        errno = ENOSYS;
        return -1;
    }
    struct pending s = begin(1);
    pid_t child = f();
    if (child == 0) { /* the slot is the parent's to fill */
        t_depth--;
        return 0;
    }
    if (child > 0)
        end(s, FFIREC_K_FORKED, 0, 0, 0, CALLER, (uint64_t)child);
    else
        end(s, FFIREC_K_NOP, 0, 0, 0, CALLER, 0);
    return child;
}

/* ---- the C allocator ------------------------------------------------------
 * ALLOC_GUARD: while the foreign thread runs inside one of these functions,
 * header.allocator_tid names it, so the recorder can tag the faults glibc
 * takes on guarded host heap metadata (e.g. a foreign free of a host pointer)
 * as allocator activity. Restored, not cleared, on exit (signal nesting). */
#define NO_GUARD UINT64_MAX

/* Returns the slot (high half) and the allocator slot's previous value (low half). */
static inline uint64_t alloc_enter(void) {
    if (UNLIKELY(atomic_load_explicit(&g_state, memory_order_acquire) != ST_READY))
        return NO_GUARD;
    uint32_t tid = my_tid();
    int slot = foreign_slot(tid);
    if (LIKELY(slot < 0))
        return NO_GUARD;
    uint32_t *a = allocator_slot(slot);
    uint32_t prev = atomic_load_explicit(hdr_u32(a), memory_order_relaxed);
    atomic_store_explicit(hdr_u32(a), tid, memory_order_relaxed);
    return (uint64_t)slot << 32 | prev;
}

static inline void alloc_leave(uint64_t *prev) {
    if (UNLIKELY(*prev != NO_GUARD))
        atomic_store_explicit(hdr_u32(allocator_slot((int)(*prev >> 32))), (uint32_t)*prev, memory_order_relaxed);
}

#define ALLOC_GUARD uint64_t alloc_guard_ __attribute__((cleanup(alloc_leave))) = alloc_enter()

/* Foreign-mode allocations fall back to glibc when the arena is exhausted:
 * the program must get its memory exactly when it would natively. */
#define ARENA_OR(arena_call, libc_call) ({                                     \
    void *p_ = NULL;                                                          \
    if (UNLIKELY(want_arena())) {                                              \
        int saved_errno_ = errno;                                             \
        p_ = (arena_call);                                                    \
        errno = saved_errno_;                                                 \
    }                                                                         \
    p_ ? p_ : (libc_call);                                                    \
})

/* No thread of any process is in foreign mode: no allocator guard and no
 * arena (both are for foreign-mode threads only). A thread cannot enter
 * foreign mode while it runs here (that takes a stop at a call); another
 * thread entering it changes nothing for this one. */
static inline int all_host(void) {
    return LIKELY(atomic_load_explicit(&g_state, memory_order_acquire) == ST_READY) &&
           LIKELY(atomic_load_explicit(hdr_u32(&g_hdr->foreign_any), memory_order_relaxed) == 0);
}

static void *__attribute__((noinline)) malloc_guarded(size_t n, uint64_t caller) {
    ALLOC_GUARD;
    void *p = ARENA_OR(arena_alloc(n, ARENA_HDR, 0), __libc_malloc(n));
    if (p) {
        hi_track(p, n);
        record(FFIREC_K_MALLOC, (uintptr_t)p, n, 0, caller, 0);
    }
    return p;
}

EXPORT void *malloc(size_t n) {
    if (UNLIKELY(!all_host()))
        return malloc_guarded(n, CALLER);
    void *p = __libc_malloc(n);
    if (p) {
        hi_track(p, n);
        record(FFIREC_K_MALLOC, (uintptr_t)p, n, 0, CALLER, 0);
    }
    return p;
}

EXPORT void *calloc(size_t n, size_t m) {
    ALLOC_GUARD;
    size_t bytes;
    void *p = __builtin_mul_overflow(n, m, &bytes) ? __libc_calloc(n, m) /* fails as glibc does */
                                                   : ARENA_OR(arena_alloc(bytes, ARENA_HDR, 1),
                                                              __libc_calloc(n, m));
    if (p) /* success implies n * m did not overflow */
        record(FFIREC_K_CALLOC, (uintptr_t)p, (uint64_t)n * m, 0, CALLER, 0);
    return p;
}

static void __attribute__((noinline)) free_guarded(void *p, uint64_t caller) {
    ALLOC_GUARD;
    record(FFIREC_K_FREE, (uintptr_t)p, 0, 0, caller, 0);
    if (UNLIKELY(in_arena(p)))
        arena_free(p);
    else
        __libc_free(p);
}

EXPORT void free(void *p) {
    if (!p) {
        __libc_free(p);
        return;
    }
    if (UNLIKELY(!all_host())) {
        free_guarded(p, CALLER);
        return;
    }
    /* Recorded before the real free (see "Ordering" above). A host may free
     * an arena block the library handed it. */
    record(FFIREC_K_FREE, (uintptr_t)p, 0, 0, CALLER, 0);
    if (UNLIKELY(in_arena(p)))
        arena_free(p);
    else
        __libc_free(p);
}

static inline void *realloc_common(void *old, size_t n, uint16_t kind, uint64_t caller) {
    if (!old) {
        void *p = ARENA_OR(arena_alloc(n, ARENA_HDR, 0), __libc_realloc(NULL, n));
        if (p) {
            hi_track(p, n);
            record(kind, (uintptr_t)p, n, 0, caller, 0);
        }
        return p;
    }
    struct pending s = begin(1);
    void *p = UNLIKELY(in_arena(old)) ? arena_realloc(old, n) : __libc_realloc(old, n);
    if (p) {
        hi_track(p, n);
        end(s, kind, (uintptr_t)p, n, (uintptr_t)old, caller, 0);
    } else if (n == 0) /* glibc: realloc(p, 0) frees p and returns NULL */
        end(s, kind, 0, 0, (uintptr_t)old, caller, 0);
    else
        end(s, FFIREC_K_NOP, 0, 0, 0, caller, 0);
    return p;
}

EXPORT void *realloc(void *old, size_t n) {
    ALLOC_GUARD;
    return realloc_common(old, n, FFIREC_K_REALLOC, CALLER);
}

EXPORT void *reallocarray(void *old, size_t n, size_t m) {
    ALLOC_GUARD;
    size_t bytes;
    if (__builtin_mul_overflow(n, m, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc_common(old, bytes, FFIREC_K_REALLOCARRAY, CALLER);
}

EXPORT int posix_memalign(void **out, size_t align, size_t n) {
    ALLOC_GUARD;
    int valid = align != 0 && align % sizeof(void *) == 0 && (align & (align - 1)) == 0;
    posix_memalign_fn f = get_posix_memalign();
    int rc;
    void *in_arena_p = valid ? ARENA_OR(arena_alloc(n, align, 0), NULL) : NULL;
    if (in_arena_p) {
        *out = in_arena_p;
        rc = 0;
    } else if (UNLIKELY(f == NULL)) { /* only while dlsym itself is running */
        if (!valid)
            return EINVAL;
        int saved_errno = errno;
        void *p = __libc_memalign(align, n);
        errno = saved_errno;
        if (!p)
            return ENOMEM;
        *out = p;
        rc = 0;
    } else {
        rc = f(out, align, n);
    }
    if (rc == 0) {
        hi_track(*out, n);
        record(FFIREC_K_POSIX_MEMALIGN, (uintptr_t)*out, n, 0, CALLER, align);
    }
    return rc;
}

/* glibc 2.36's aligned_alloc is memalign: any alignment, rounded up to a power of two. */
EXPORT void *aligned_alloc(size_t align, size_t n) {
    ALLOC_GUARD;
    aligned_alloc_fn f = get_aligned_alloc();
    void *p = ARENA_OR(arena_alloc(n, pow2_at_least(align), 0),
                       LIKELY(f != NULL) ? f(align, n) : __libc_memalign(align, n));
    if (p) {
        hi_track(p, n);
        record(FFIREC_K_ALIGNED_ALLOC, (uintptr_t)p, n, 0, CALLER, align);
    }
    return p;
}

EXPORT void *memalign(size_t align, size_t n) {
    ALLOC_GUARD;
    void *p = ARENA_OR(arena_alloc(n, pow2_at_least(align), 0), __libc_memalign(align, n));
    if (p) {
        hi_track(p, n);
        record(FFIREC_K_MEMALIGN, (uintptr_t)p, n, 0, CALLER, align);
    }
    return p;
}

EXPORT void *valloc(size_t n) {
    ALLOC_GUARD;
    void *p = ARENA_OR(arena_alloc(n, ARENA_PAGE, 0), __libc_valloc(n));
    if (p) {
        hi_track(p, n);
        record(FFIREC_K_VALLOC, (uintptr_t)p, n, 0, CALLER, 0);
    }
    return p;
}

EXPORT void *pvalloc(size_t n) {
    ALLOC_GUARD;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t rounded = n == 0 ? page : (((uint64_t)n + page - 1) & ~(page - 1));
    void *p = ARENA_OR(rounded < n ? NULL : arena_alloc(rounded, ARENA_PAGE, 0), __libc_pvalloc(n));
    if (p) {
        hi_track(p, rounded);
        record(FFIREC_K_PVALLOC, (uintptr_t)p, rounded, 0, CALLER, 0);
    }
    return p;
}

EXPORT size_t malloc_usable_size(void *p) {
    ALLOC_GUARD;
    if (UNLIKELY(in_arena(p)))
        return arena_usable(p);
    malloc_usable_size_fn f = get_malloc_usable_size();
    return f ? f(p) : 0;
}

/* ---- anonymous mappings --------------------------------------------------- */
static inline void *mmap_common(void *addr, size_t len, int prot, int flags, int fd, off_t off,
                                uint64_t caller) {
    mmap_fn f = get_mmap();
    void *p = LIKELY(f != NULL) ? f(addr, len, prot, flags, fd, off)
                                : (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED && (flags & MAP_ANONYMOUS))
        record(FFIREC_K_MMAP, (uintptr_t)p, len, 0, caller,
               (uint64_t)(uint32_t)prot | ((uint64_t)(uint32_t)flags << 32));
    return p;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return mmap_common(addr, len, prot, flags, fd, off, CALLER);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return mmap_common(addr, len, prot, flags, fd, off, CALLER);
}

EXPORT int munmap(void *addr, size_t len) {
    munmap_fn f = get_munmap();
    struct pending s = begin(!one_slot(FFIREC_K_MUNMAP, (uintptr_t)addr, len, 0, 0));
    int rc = LIKELY(f != NULL) ? f(addr, len) : (int)syscall(SYS_munmap, addr, len);
    if (rc == 0)
        end(s, FFIREC_K_MUNMAP, (uintptr_t)addr, len, 0, CALLER, 0);
    else
        end(s, FFIREC_K_NOP, 0, 0, 0, CALLER, 0);
    return rc;
}

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...) {
    void *want = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        want = va_arg(ap, void *);
        va_end(ap);
    }
    mremap_fn f = get_mremap();
    struct pending s = begin(1);
    void *p = LIKELY(f != NULL)
                  ? f(old, old_len, new_len, flags, want)
                  : (void *)syscall(SYS_mremap, old, old_len, new_len, flags, want);
    if (p != MAP_FAILED)
        end(s, FFIREC_K_MREMAP, (uintptr_t)p, new_len, (uintptr_t)old, CALLER, old_len);
    else
        end(s, FFIREC_K_NOP, 0, 0, 0, CALLER, 0);
    return p;
}
