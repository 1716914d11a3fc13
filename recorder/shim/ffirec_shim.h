/* ffirec allocation ring: the shared-memory layout spoken by the LD_PRELOAD
 * shim (producers, inside the traced program) and the recorder (the single
 * consumer, recorder/src/alloc/ring.rs mirrors every offset below).
 *
 * File layout: one 4096-byte header page, then two rings of `capacity` slots
 * of 32 bytes each (`capacity` a power of two): ring 0 at offset 4096, ring 1
 * right after it. Every field is little-endian, naturally aligned.
 *
 * Records (version 6)
 *  - A record is one slot, or two consecutive slots (sequence numbers seq and
 *    seq + 1, reserved together) when it has the EXT flag. A slot is four
 *    words: the slot header, then three payload words.
 *  - Slot header: bits 0..31 the commit tag, (seq + 1) mod 2^32 of that slot;
 *    bits 32..37 the kind; bit 38 FOREIGN; bit 39 EXT; bits 40..63 the tid.
 *  - First slot: ptr, size, caller. A FREE leaves `size` unwritten (the
 *    consumer reads 0). Second slot (kind FFIREC_K_CONT, its own tag):
 *    old_ptr, aux, and pid in the low half of the third word with the
 *    host-init epoch (see "Host init") in its high half.
 *  - Without EXT, old_ptr and aux are 0, pid is the primary ring's owner,
 *    ptr and size are below 2^48 (a record whose ptr or size is not takes
 *    EXT), and the host-init epoch sits in their top 16 bits: ptr bits
 *    48..63 hold its bits 0..15, size bits 48..63 its bits 16..31 (a FREE's
 *    epoch is 0: only its ptr word is written). Ring 0 (several processes)
 *    writes every record with EXT.
 *  - MALLOC_FREE is a malloc and the free of its block, in that order, with
 *    no record of that thread between them (see "Held malloc"): ptr, size
 *    and the epoch as a MALLOC's; `caller` is the malloc's. The free's caller
 *    is `aux` with EXT; without EXT, the caller word's bits 0..47 are the
 *    malloc's caller and bits 48..63 the free's caller minus it (signed 16
 *    bits; a pair whose callers are further apart takes EXT).
 *
 * Rings
 *  - Ring 1 is the primary ring: the first process whose shim starts claims
 *    it (CAS of `ring[1].owner_pid` from 0 to its pid; an exec'd image of the
 *    same pid keeps it). Only that process writes it, so while it is
 *    single-threaded (glibc's `__libc_single_threaded`) it reserves with a
 *    plain, unlocked `xadd` — one instruction, so a signal handler on the
 *    same thread cannot split it; once it has threads, with `lock xadd`.
 *  - Ring 0 is shared by every other process (forked children, other
 *    programs they exec) and always reserves with `lock xadd`.
 *  - Order is global within a ring; across rings only fork() matters. The
 *    parent's FORKED record marks the exact point of the fork in its ring
 *    (the child inherits the parent's mappings as of there); the child's
 *    first record, FORK, names in `old_ptr`/`size` the parent's ring and the
 *    sequence number of that point (when fork() went through the shim: of
 *    the FORKED slot, which is committed only after the child may already
 *    run): the consumer must consume the parent's ring up to there before
 *    any record of the child, and may meet FORKED after the child's records.
 *
 * Protocol (per ring)
 *  - A producer reserves sequence numbers `seq` (and `seq + 1` for an EXT
 *    record) with fetch_add on `head`, waits until its last one is below
 *    `tail + capacity` (the consumer has finished with the slots' previous
 *    use), fills slot `seq & (capacity-1)` (an EXT record: the second slot
 *    first, whole) and then stores the first slot's header, whose tag is
 *    seq + 1, with release ordering. That header is written last.
 *  - The consumer reads slot `tail & mask` while its header's tag is
 *    (tail + 1) mod 2^32 (acquire), then publishes the new `tail` with
 *    release ordering. It stops at the first slot not yet committed, so
 *    records come out in global sequence order with no gap. A slot's header
 *    word only ever holds a header (never payload), and the previous use of
 *    the slot had tag seq + 1 - capacity: a stale slot never passes.
 *  - A full ring never loses a record: the producer waits. When
 *    `tracer_present` is non-zero it waits by executing the `int3` at the
 *    exported symbol `ffirec_shim_flush_trap` (rax = FFIREC_FLUSH_MAGIC), so a
 *    recorder that only drains at ptrace stops gets a stop to drain at;
 *    otherwise it yields the CPU until the consumer catches up.
 *  - When the recorder sets `closed` (it is about to stop consuming), waiting
 *    producers stop waiting and overwrite unconsumed slots: the program must
 *    never hang on a ring nobody drains.
 *  - A producer already inside the shim on the same thread (a signal handler
 *    that allocates) never waits: when the ring is full it drops the record and
 *    counts it in `dropped`.
 *
 * Held malloc (the primary ring only)
 *  - A one-slot MALLOC of the primary ring's owner, written while it is
 *    single-threaded and not nested, is not reserved in the ring: its first
 *    slot's words go to `held` (ptr word last; a zero ptr word: nothing
 *    held). If that thread's next record is the FREE of the same block, both
 *    become one MALLOC_FREE record; any other record of the process first
 *    moves the held one into the ring. So the held record always follows
 *    every record of the ring that its thread wrote.
 *  - Taking it is one read-modify-write of the ptr word to 0 (unlocked
 *    cmpxchg while single-threaded, locked after): whoever takes it writes
 *    it. The shim moves it into the ring before fork() and before any other
 *    record; once the process has threads it is never held again.
 *  - The recorder takes it (atomic exchange) when its thread (the tid in
 *    `hdr`) is in a ptrace stop and every slot of the ring is consumed, and
 *    when no process is left: a stop sees every malloc that returned before it.
 *
 * Foreign arena
 *  - While the calling thread is `foreign_tid` and `arena_enabled` is set,
 *    malloc/calloc/realloc(NULL, n)/the aligned variants are served from a
 *    private anonymous mapping at exactly [arena_start, arena_end), created by
 *    the shim on first use in each process (MAP_FIXED_NOREPLACE; when the
 *    range is taken, that process falls back to glibc). The recorder never
 *    guards that range.
 *  - free/realloc/malloc_usable_size route a pointer by address, whoever calls
 *    them: arena pointers to the arena (realloc keeps them there), all others
 *    to glibc.
 *
 * Host init (recorder/src/hostinit.rs owns the other half)
 *  - With `hostinit_want` set, each process maps a page-state table at the
 *    fixed address FFIREC_HI_TABLE: one byte per 4 KiB page of the 47-bit
 *    user address space (MAP_NORESERVE: only touched parts cost memory).
 *    Private memory: a forked child has its own copy; the recorder reads and
 *    writes it through /proc/PID/mem.
 *  - States: 0 untracked, 1 write-protected by us (PROT_READ), 2 released by
 *    the recorder (all bytes written: may be protected again), 3 dead (over
 *    its fault budget, or the program changed its protection: never again),
 *    4 being protected by the shim (set before its mprotect: a write fault
 *    there is the recorder's, which sets 1 itself).
 *  - While `hostinit_pid` is this process, a host-mode malloc/realloc/
 *    memalign family call makes every page of the returned block that is in
 *    state 0, 2 or 4 PROT_READ (setting 4 first) and then moves it from 4
 *    to 1 (compare-and-swap: the recorder may have released it meanwhile),
 *    before returning. The shim never leaves 1 or 3; the recorder never sets
 *    1 (except when adopting pages while every thread is held).
 *  - Each such call puts `hostinit_epoch` (low 32 bits, read before looking at
 *    the table) in its record (see "Records"): a page the recorder released
 *    at that epoch or later may have been writable after the shim looked, so
 *    the block's bytes there are unknown.
 *  - Every thread of the tracked process protects. A forked child never
 *    protects (its pages are released by the recorder).
 */
#ifndef FFIREC_SHIM_H
#define FFIREC_SHIM_H

#include <stdint.h>

#define FFIREC_MAGIC 0x3152434552494646ull /* "FFIRECR1" little-endian */
#define FFIREC_VERSION 6u /* 2: two rings (shared, primary); 3: foreign tid slots; 4: 32-byte slots;
                            5: the epoch in a one-slot record; 6: the held malloc, MALLOC_FREE */
#define FFIREC_FOREIGN_SLOTS 8u
#define FFIREC_RINGS 2u
#define FFIREC_HDR_SIZE 4096u
#define FFIREC_REC_SIZE 32u /* bytes per slot */
#define FFIREC_FLUSH_MAGIC 0x5041525448535546ull /* "FUSHTRAP" little-endian */
#define FFIREC_HI_TABLE 0x6e0000000000ull /* host-init page table: 1 byte per page */
#define FFIREC_HI_TABLE_LEN (1ull << 35)  /* 2^47 / 4096 */

/* Record kinds. 0..=10 are the allocation functions, in the order of
 * ffirec_format::AllocFn. */
enum ffirec_kind {
    FFIREC_K_MALLOC = 0,
    FFIREC_K_CALLOC = 1,
    FFIREC_K_REALLOC = 2,        /* ptr = new (0 when realloc(p, 0) freed p), old_ptr = p */
    FFIREC_K_REALLOCARRAY = 3,   /* same, size = n * m */
    FFIREC_K_POSIX_MEMALIGN = 4, /* aux = alignment */
    FFIREC_K_ALIGNED_ALLOC = 5,  /* aux = alignment */
    FFIREC_K_MEMALIGN = 6,       /* aux = alignment */
    FFIREC_K_VALLOC = 7,
    FFIREC_K_PVALLOC = 8,        /* size = request rounded up to the page size */
    FFIREC_K_MMAP = 9,           /* anonymous mappings only; aux = prot | flags << 32 */
    FFIREC_K_MREMAP = 10,        /* every successful mremap; aux = old size */
    FFIREC_K_FREE = 16,          /* free(ptr), ptr != 0 */
    FFIREC_K_MUNMAP = 17,        /* every successful munmap(ptr, size) */
    FFIREC_K_MALLOC_FREE = 19,   /* a MALLOC then the FREE of its block (see "Records") */
    FFIREC_K_NOP = 30,           /* a reserved slot whose call failed: skip */
    FFIREC_K_PROC_START = 32,    /* the shim started in process `pid` (after exec) */
    FFIREC_K_FORK = 33,          /* the child's first record: process `pid` was forked from
                                    process `aux`, whose records before the fork are in
                                    ring `old_ptr` below seq `size` */
    FFIREC_K_FORKED = 34,        /* the parent's record, at the exact point of fork():
                                    process `pid` forked child `aux` */
    FFIREC_K_CONT = 63,          /* the second slot of an EXT record */
};

#define FFIREC_F_FOREIGN 1u /* the calling tid was in a foreign tid slot */
#define FFIREC_F_EXT 2u     /* the record goes on in the next slot */

/* Slot header fields (see "Records"). */
#define FFIREC_HDR_KIND_SHIFT 32
#define FFIREC_HDR_FLAGS_SHIFT 38
#define FFIREC_HDR_TID_SHIFT 40

struct ffirec_slot {
    uint64_t hdr; /* tag | kind | flags | tid, stored last with release ordering */
    uint64_t w[3]; /* first slot: ptr, size, caller; CONT slot: old_ptr, aux, pid | hi_epoch << 32 */
};

struct ffirec_hdr {
    /* line 0: written by the recorder, read by producers */
    uint64_t magic;          /* 0: written last by the recorder */
    uint32_t version;        /* 8 */
    uint32_t hdr_size;       /* 12 */
    uint32_t rec_size;       /* 16 */
    uint32_t arena_enabled;  /* 20: non-zero: serve foreign-mode allocations from the arena */
    uint64_t capacity;       /* 24: slots per ring, a power of two */
    uint32_t tracer_present; /* 32: non-zero: wait on a full ring with the flush trap */
    uint32_t foreign_tid;    /* 36: tid currently in foreign mode, 0 when none */
    uint64_t arena_start;    /* 40: the foreign arena's fixed address range, the same in */
    uint64_t arena_end;      /* 48: every process (0, 0: no arena); see "Foreign arena" */
    uint32_t closed;         /* 56: the consumer is gone: producers stop waiting for room */
    uint32_t allocator_tid;  /* 60: the foreign tid while it runs inside an allocation
                                    function (allocator activity, not the library's), else 0 */
    uint32_t hostinit_want;  /* 64: non-zero: map the host-init page table (see "Host init") */
    uint32_t hostinit_pid;   /* 68: the process whose host pages are tracked now, 0: none */
    /* More threads in foreign mode at once (one per traced process at most):
     * slot 0 is foreign_tid/allocator_tid above, slot k >= 1 is
     * foreign_more[k-1]/allocator_more[k-1]. A tid is foreign when any slot names it. */
    uint32_t foreign_more[FFIREC_FOREIGN_SLOTS - 1];   /* 72 */
    uint32_t allocator_more[FFIREC_FOREIGN_SLOTS - 1]; /* 100 */
    uint64_t hostinit_epoch; /* 128: bumped by the recorder before it releases a tracked page */
    /* Non-zero whenever any foreign tid slot is (set before a slot, cleared
     * after the last one): one load tells a host-mode call it is not foreign. */
    uint32_t foreign_any; /* 136 */
    uint32_t pad1;        /* 140 */
    uint64_t hostinit_protects; /* 144: bumped by the shim after each protection it makes */
    uint32_t pad0[26];    /* 152 */
    struct ffirec_ring {
        /* line 0 */
        uint32_t owner_pid; /* +0: ring 1: the owning process, 0 while unclaimed */
        uint32_t pad0[15];
        /* line 1: producers */
        uint64_t head; /* +64: next sequence number to reserve */
        uint64_t pad1[7];
        /* line 2: the consumer */
        uint64_t tail; /* +128: every sequence number below it has been consumed */
        uint64_t pad2[7];
        /* line 3: counters, written by producers */
        uint64_t dropped;     /* +192 */
        uint64_t flush_traps; /* +200 */
        uint64_t pad3[6];
    } ring[FFIREC_RINGS]; /* 256: ring 0, 512: ring 1 */
    struct ffirec_held { /* 768: see "Held malloc" */
        uint64_t ptr;    /* +0: the first slot's ptr word (never 0 for a block), 0: none */
        uint64_t size;   /* +8: its size word */
        uint64_t caller; /* +16: its caller word */
        uint64_t hdr;    /* +24: its slot header without the tag (kind, flags, tid) */
        uint64_t pad[4];
    } held;
};

#endif
