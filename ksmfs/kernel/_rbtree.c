/*
 * ksmfs.kernel._rbtree: the stable tree's red-black tree of uint64 content tokens, with
 * the exact rebalancing of lib/rbtree.c (__rb_insert(), __rb_erase_augmented() without
 * the augmentation, ____rb_erase_color()).
 *
 * This is ksmfs/kernel/rbtree.py compiled: the same algorithm case by case, so that the
 * tree has, after any sequence of inserts and erases, exactly the shape of the kernel's
 * tree (a search acts on every node it passes, so the shape decides what ksmd does).
 * tests/kernel/test_rbtree.py drives both with the same operations and compares every
 * node's parent, children and colour.
 *
 * Layout: nodes live in an array indexed by slot (key, left, right, parent, colour;
 * NIL = -1; freed slots are chained through `parent`), and an open-addressing hash
 * (hmap_t: linear probing, backward-shift deletion) maps a key to its slot for the by-key
 * calls (erase, __contains__, step, node). Keys may be any uint64 (tokens use the full
 * range), so an empty hash entry is marked by its value, not by a key value.
 *
 * Growth never stalls a call for a whole rehash (the mounted simulation serves readers
 * between ~1 ms slices of ksmd work; one 4M-key rehash took 158 ms): hmap_t keeps the
 * previous table as `old` after a growth and moves a few of its entries, in index order,
 * at every change (migrated or deleted old entries are dead, not empty, so old probe runs
 * stay intact; lookups look in both tables); it allocates the next table at load 7/16 and
 * faults it in a page at a time before the growth; large tables and the node array are
 * mmap()s of their own (lazy zero pages; the node array grows by mremap(), no copy).
 *
 * The module also has TokenMap (at the end), the stable tree's token -> node map.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define NIL (-1)
#define RED 0
#define BLACK 1

typedef struct {
    uint64_t key;
    int32_t left, right, parent;
    int32_t color;
} node_t;

static void hint_huge(void *p, size_t len);

/* -- incrementally grown hash: uint64 key -> int64 value -------------------------------- */

/* Both the rbtree's key -> slot index and TokenMap use this table: open addressing with
 * linear probing at load <= 1/2 and backward-shift deletion. A value v is stored as
 * v ^ HM_EMPTY, so that an all-zero entry is empty and a fresh table is calloc()'s lazy
 * zero pages: its first-touch faults are spread over the inserts that follow instead of
 * one init loop. v = HM_EMPTY (INT64_MIN) cannot be stored.
 *
 * Growth is incremental, so that no call stalls for a whole rehash (a mounted simulation
 * serves readers between ~1 ms slices of ksmd work; a 4M-key rehash took 158 ms): the
 * table twice as big becomes `e`, the previous one stays as `old`, and every set and
 * delete (and each key of a batch lookup) first moves HM_STEP entries of `old`, in index
 * order, to `e`. An entry of `old` is live iff its index is >= the cursor `cur`, it is
 * not empty and its bit in `tomb` is clear; `old` is never written, so its probe runs stay
 * intact: a lookup probes `e`, then `old` (passing over dead entries, stopping at an empty
 * one); setting or deleting a key still live in `old` sets its tomb bit. `count` counts
 * the keys of both tables. HM_STEP = 4 entries a change finishes `old` (2^b entries)
 * after 2^b / 4 changes, well before the new table (2^(b+1) entries, >= 2^(b-1) free
 * places at load 1/2) needs to grow again; a reserve that needs to grow while `old`
 * still exists finishes it first. */

#define HM_EMPTY INT64_MIN
#define HM_STEP 4

typedef struct {
    uint64_t key;
    uint64_t sv; /* value ^ HM_EMPTY; 0: empty */
} hment_t;

typedef struct {
    hment_t *e;
    size_t mask;
    int bits;
    hment_t *old;   /* the table before the last growth, or NULL */
    size_t omask;
    int obits;
    size_t cur;     /* entries of old below cur have been moved */
    uint64_t *tomb; /* bit i: old[i] was deleted or overwritten */
    hment_t *next;  /* the next, bigger table, being faulted in before the growth */
    int nbits;
    size_t ntouched; /* bytes of next faulted in */
    Py_ssize_t count;
} hmap_t;

/* A zeroed table. A large one is an mmap() of its own, so its zeroing is the kernel's lazy
 * zero pages, faulted in by the inserts that follow; calloc() could take it from the heap
 * (glibc's mmap threshold rises to 32 MiB after big frees) and memset it all at once. */
#define HM_MAP_MIN ((size_t)1 << 20)
static hment_t *hm_alloc(size_t n) {
    size_t bytes = n * sizeof(hment_t);
    if (bytes < HM_MAP_MIN)
        return PyMem_Calloc(n, sizeof(hment_t));
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void hm_free_table(hment_t *e, size_t n) {
    if (e == NULL)
        return;
    if (n * sizeof(hment_t) < HM_MAP_MIN)
        PyMem_Free(e);
    else
        munmap(e, n * sizeof(hment_t));
}

static inline uint64_t hm_enc(int64_t v) { return (uint64_t)v ^ (uint64_t)HM_EMPTY; }
static inline int64_t hm_dec(uint64_t sv) { return (int64_t)(sv ^ (uint64_t)HM_EMPTY); }

static inline size_t hm_home(uint64_t key, int bits) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> (64 - bits));
}

static inline hment_t *hm_prefetch_addr(const hmap_t *m, uint64_t key) {
    return &m->e[hm_home(key, m->bits)];
}

/* The entry of key in e, or the empty place where it would go. */
static inline hment_t *hm_slot(const hmap_t *m, uint64_t key) {
    size_t i = hm_home(key, m->bits);
    for (;;) {
        hment_t *e = &m->e[i];
        if (e->sv == 0 || e->key == key)
            return e;
        i = (i + 1) & m->mask;
    }
}

static inline int hm_old_live(const hmap_t *m, size_t i) {
    return i >= m->cur && m->old[i].sv != 0 && !(m->tomb[i >> 6] >> (i & 63) & 1);
}

/* The index of key's live entry in old, or -1. */
static inline Py_ssize_t hm_find_old(const hmap_t *m, uint64_t key) {
    if (m->old == NULL)
        return -1;
    size_t i = hm_home(key, m->obits);
    for (;;) {
        const hment_t *e = &m->old[i];
        if (e->sv == 0)
            return -1;
        if (e->key == key && hm_old_live(m, i))
            return (Py_ssize_t)i;
        i = (i + 1) & m->omask;
    }
}

static inline void hm_kill_old(hmap_t *m, size_t i) { m->tomb[i >> 6] |= (uint64_t)1 << (i & 63); }

static void hm_drop_old(hmap_t *m) {
    hm_free_table(m->old, m->old ? m->omask + 1 : 0);
    PyMem_Free(m->tomb);
    m->old = NULL;
    m->tomb = NULL;
}

/* Fault in the next HM_TOUCH bytes of next: a write of the zero each page holds already.
 * Between load 7/16 (next allocated) and 1/2 (growth) at least 1/16 of e's entries are
 * set, and next has 2 x 16 bytes per entry of e: 512 bytes a change; twice that leaves
 * room for deletes. Starting later would fault in less of a table that may never be
 * needed (at 3/8: +19 MiB peak RSS in the 16M-page run), with more faults per change. */
#define HM_TOUCH 1024
static void hm_touch(hmap_t *m) {
    size_t end = ((size_t)1 << m->nbits) * sizeof(hment_t);
    size_t from = m->ntouched, to = from + HM_TOUCH < end ? from + HM_TOUCH : end;
    volatile char *p = (volatile char *)m->next;
    for (size_t b = (from + 4095) & ~(size_t)4095; b < to; b += 4096)
        p[b] = 0;
    m->ntouched = to;
}

/* Move up to `budget` entries of old to e. */
static void hm_step(hmap_t *m, size_t budget) {
    if (m->next != NULL && budget != (size_t)-1)
        hm_touch(m);
    if (m->old == NULL)
        return;
    size_t end = m->omask + 1;
    while (budget-- && m->cur < end) {
        size_t i = m->cur;
        if (hm_old_live(m, i)) {
            hment_t *d = hm_slot(m, m->old[i].key);
            *d = m->old[i];
        }
        m->cur = i + 1;
    }
    if (m->cur >= end) {
        hm_drop_old(m);
        hint_huge(m->e, (m->mask + 1) * sizeof(hment_t));
    }
}

/* The value of key, or HM_EMPTY. */
static inline int64_t hm_get(const hmap_t *m, uint64_t key) {
    hment_t *e = hm_slot(m, key);
    if (e->sv != 0)
        return hm_dec(e->sv);
    Py_ssize_t i = hm_find_old(m, key);
    return i < 0 ? HM_EMPTY : hm_dec(m->old[i].sv);
}

/* Set key -> v; needs hm_reserve(m, 1). */
static inline void hm_set(hmap_t *m, uint64_t key, int64_t v) {
    hm_step(m, HM_STEP);
    hment_t *e = hm_slot(m, key);
    if (e->sv == 0) {
        Py_ssize_t i = hm_find_old(m, key);
        if (i >= 0)
            hm_kill_old(m, (size_t)i);
        else
            m->count++;
        e->key = key;
    }
    e->sv = hm_enc(v);
}

/* Delete key; 0 if it was absent. */
static int hm_del(hmap_t *m, uint64_t key) {
    hm_step(m, HM_STEP);
    hment_t *hole = hm_slot(m, key);
    if (hole->sv == 0) {
        Py_ssize_t o = hm_find_old(m, key);
        if (o < 0)
            return 0;
        hm_kill_old(m, (size_t)o);
        m->count--;
        return 1;
    }
    size_t i = (size_t)(hole - m->e), j = i;
    m->count--;
    for (;;) {
        m->e[i].sv = 0;
        for (;;) {
            j = (j + 1) & m->mask;
            if (m->e[j].sv == 0)
                return 1;
            size_t home = hm_home(m->e[j].key, m->bits);
            /* the entry at j may move to i unless its home lies cyclically in (i, j] */
            if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
                continue;
            break;
        }
        m->e[i] = m->e[j];
        i = j;
    }
}

static int hm_init(hmap_t *m, int bits) {
    memset(m, 0, sizeof(*m));
    m->e = hm_alloc((size_t)1 << bits);
    if (m->e == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    m->mask = ((size_t)1 << bits) - 1;
    m->bits = bits;
    return 0;
}

static void hm_drop_next(hmap_t *m) {
    hm_free_table(m->next, m->next ? (size_t)1 << m->nbits : 0);
    m->next = NULL;
}

static void hm_free(hmap_t *m) {
    hm_free_table(m->e, m->e ? m->mask + 1 : 0);
    hm_drop_old(m);
    hm_drop_next(m);
    m->e = NULL;
}

/* Room for `more` new keys at load <= 1/2 (of e alone, so also after old is moved). */
static int hm_reserve(hmap_t *m, Py_ssize_t more) {
    size_t need = (size_t)(m->count + more) * 2;
    if (((size_t)1 << m->bits) >= need) {
        /* past load 7/16 of a large table: allocate the next one, to fault it in bit by bit
         * (hm_touch()) rather than all in the inserts right after the growth */
        if (m->next == NULL && m->old == NULL && need * 8 > ((size_t)7 << m->bits)
            && ((size_t)2 << m->bits) * sizeof(hment_t) >= HM_MAP_MIN) {
            m->next = hm_alloc((size_t)2 << m->bits);
            m->nbits = m->bits + 1;
            m->ntouched = 0;
        }
        return 0;
    }
    int bits = m->bits;
    while (((size_t)1 << bits) < need)
        bits++;
    size_t size = (size_t)1 << bits;
    hment_t *ne;
    if (m->next != NULL && m->nbits == bits) {
        ne = m->next;
        m->next = NULL;
    } else {
        hm_drop_next(m);
        ne = hm_alloc(size);
    }
    uint64_t *tomb = PyMem_Calloc((m->mask + 1 + 63) / 64, sizeof(uint64_t));
    if (ne == NULL || tomb == NULL) {
        hm_free_table(ne, size);
        PyMem_Free(tomb);
        PyErr_NoMemory();
        return -1;
    }
    hm_step(m, (size_t)-1); /* a growth while old is still there: finish it first */
    m->old = m->e;
    m->omask = m->mask;
    m->obits = m->bits;
    m->cur = 0;
    m->tomb = tomb;
    m->e = ne;
    m->mask = size - 1;
    m->bits = bits;
    return 0;
}

static void hm_clear(hmap_t *m) {
    hm_drop_old(m);
    hm_drop_next(m);
    memset(m->e, 0, (m->mask + 1) * sizeof(hment_t));
    m->count = 0;
}

static size_t hm_nbytes(const hmap_t *m) {
    size_t n = (m->mask + 1) * sizeof(hment_t);
    if (m->old)
        n += (m->omask + 1) * sizeof(hment_t) + (m->omask + 1 + 63) / 64 * sizeof(uint64_t);
    if (m->next)
        n += ((size_t)1 << m->nbits) * sizeof(hment_t);
    return n;
}

typedef struct {
    PyObject_HEAD
    node_t *n;
    int32_t cap;      /* slots allocated */
    int n_mapped;     /* n is an mmap() of its own (nodes_resize()) */
    int32_t used;     /* high-water mark of slots */
    int32_t free;     /* head of the free-slot list */
    int32_t root;
    Py_ssize_t count;
    unsigned long long version; /* bumped by every insert and erase */
    hmap_t h;         /* key -> slot */
} RBTree;

#define L(x) (t->n[x].left)
#define R(x) (t->n[x].right)
#define P(x) (t->n[x].parent)
#define C(x) (t->n[x].color)
#define K(x) (t->n[x].key)

/* Large arrays are read at random (a search touches ~20 nodes, a lookup one hash entry):
 * transparent huge pages save a TLB miss on most of those reads, as numpy asks for its
 * large arrays. Only a hint; without THP nothing changes. */
static void hint_huge(void *p, size_t len) {
#ifdef MADV_HUGEPAGE
    if (len < ((size_t)4 << 20))
        return;
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
    uintptr_t e = ((uintptr_t)p + len) & ~(uintptr_t)4095;
    if (e > a)
        (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)len;
#endif
}

/* -- hash key -> slot ------------------------------------------------------------------ */

static int32_t find(const RBTree *t, uint64_t key) {
    int64_t s = hm_get(&t->h, key);
    return s == HM_EMPTY ? NIL : (int32_t)s;
}

static void hput(RBTree *t, uint64_t key, int32_t slot) { hm_set(&t->h, key, slot); }

static void hdel(RBTree *t, uint64_t key) { (void)hm_del(&t->h, key); }

/* Grow the node array to `bytes`. A large one is an mmap() of its own, grown by mremap()
 * (page tables moved, nothing copied): realloc() would copy it whenever glibc put it on
 * the heap (its mmap threshold rises to 32 MiB after big frees, e.g. of a hash table),
 * which cost 35-80 ms at 256k-512k nodes. The new tail is faulted in as slots are used. */
#define NODES_MAP_MIN ((size_t)1 << 20)
static node_t *nodes_resize(RBTree *t, size_t oldbytes, size_t bytes) {
    if (bytes < NODES_MAP_MIN)
        return PyMem_Realloc(t->n, bytes);
    void *p;
    if (t->n_mapped) {
        p = mremap(t->n, oldbytes, bytes, MREMAP_MAYMOVE);
    } else {
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            if (t->n)
                memcpy(p, t->n, oldbytes);
            PyMem_Free(t->n);
        }
    }
    if (p == MAP_FAILED)
        return NULL;
    t->n_mapped = 1;
    return p;
}

static void nodes_free(RBTree *t) {
    if (t->n_mapped)
        munmap(t->n, (size_t)t->cap * sizeof(node_t));
    else
        PyMem_Free(t->n);
    t->n = NULL;
}

/* Room for `more` new keys (nodes and hash, load <= 1/2) before a change starts, so that
 * no change can fail half-way. */
static int reserve(RBTree *t, Py_ssize_t more) {
    Py_ssize_t need = t->count + more;
    if (need > INT32_MAX - 1) {
        PyErr_SetString(PyExc_OverflowError, "rbtree: more than 2**31 - 2 keys");
        return -1;
    }
    Py_ssize_t free_slots = (Py_ssize_t)t->cap - t->count;
    if (more > free_slots) {
        Py_ssize_t cap = t->cap ? t->cap : 64;
        while (cap < need)
            cap *= 2;
        if (cap > INT32_MAX)
            cap = INT32_MAX;
        node_t *nn =
            nodes_resize(t, (size_t)t->cap * sizeof(node_t), (size_t)cap * sizeof(node_t));
        if (nn == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->n = nn;
        t->cap = (int32_t)cap;
        hint_huge(nn, (size_t)cap * sizeof(node_t));
    }
    return hm_reserve(&t->h, more);
}

static int32_t alloc_slot(RBTree *t) {
    int32_t s;
    if (t->free != NIL) {
        s = t->free;
        t->free = P(s);
    } else {
        s = t->used++;
    }
    return s;
}

/* -- lib/rbtree.c ---------------------------------------------------------------------- */

/* __rb_change_child() */
static inline void change_child(RBTree *t, int32_t old, int32_t new, int32_t parent) {
    if (parent != NIL) {
        if (L(parent) == old)
            L(parent) = new;
        else
            R(parent) = new;
    } else {
        t->root = new;
    }
}

/* __rb_rotate_set_parents() */
static inline void rotate_set_parents(RBTree *t, int32_t old, int32_t new, int color) {
    int32_t parent = P(old);
    P(new) = parent;
    C(new) = C(old);
    P(old) = new;
    C(old) = color;
    change_child(t, old, new, parent);
}

/* __rb_insert() */
static void insert_color(RBTree *t, int32_t node) {
    int32_t parent = P(node), gparent, tmp;
    for (;;) {
        if (parent == NIL) {
            P(node) = NIL;
            C(node) = BLACK;
            break;
        }
        if (C(parent) == BLACK)
            break;
        gparent = P(parent);
        tmp = R(gparent);
        if (parent != tmp) { /* parent == gparent->rb_left */
            if (tmp != NIL && C(tmp) == RED) {
                /* Case 1 - color flips */
                P(tmp) = gparent;
                C(tmp) = BLACK;
                P(parent) = gparent;
                C(parent) = BLACK;
                node = gparent;
                parent = P(node);
                C(node) = RED;
                continue;
            }
            tmp = R(parent);
            if (node == tmp) {
                /* Case 2 - left rotate at parent */
                tmp = L(node);
                R(parent) = tmp;
                L(node) = parent;
                if (tmp != NIL) {
                    P(tmp) = parent;
                    C(tmp) = BLACK;
                }
                P(parent) = node;
                C(parent) = RED;
                parent = node;
                tmp = R(node);
            }
            /* Case 3 - right rotate at gparent */
            L(gparent) = tmp;
            R(parent) = gparent;
            if (tmp != NIL) {
                P(tmp) = gparent;
                C(tmp) = BLACK;
            }
            rotate_set_parents(t, gparent, parent, RED);
            break;
        } else {
            tmp = L(gparent);
            if (tmp != NIL && C(tmp) == RED) {
                /* Case 1 - color flips */
                P(tmp) = gparent;
                C(tmp) = BLACK;
                P(parent) = gparent;
                C(parent) = BLACK;
                node = gparent;
                parent = P(node);
                C(node) = RED;
                continue;
            }
            tmp = L(parent);
            if (node == tmp) {
                /* Case 2 - right rotate at parent */
                tmp = R(node);
                L(parent) = tmp;
                R(node) = parent;
                if (tmp != NIL) {
                    P(tmp) = parent;
                    C(tmp) = BLACK;
                }
                P(parent) = node;
                C(parent) = RED;
                parent = node;
                tmp = L(node);
            }
            /* Case 3 - left rotate at gparent */
            R(gparent) = tmp;
            L(parent) = gparent;
            if (tmp != NIL) {
                P(tmp) = gparent;
                C(tmp) = BLACK;
            }
            rotate_set_parents(t, gparent, parent, RED);
            break;
        }
    }
}

/* rb_link_node() at the BST place of key, then rb_insert_color(). Needs reserve(t, 1).
 * 1: inserted, 0: the key is already in the tree (nothing changes). */
static int insert_key(RBTree *t, uint64_t key) {
    int32_t parent = NIL, cur = t->root;
    int go_left = 0;
    while (cur != NIL) {
        uint64_t ck = K(cur);
        if (key == ck)
            return 0;
        parent = cur;
        go_left = key < ck;
        cur = go_left ? L(cur) : R(cur);
    }
    t->version++;
    int32_t s = alloc_slot(t);
    node_t *n = &t->n[s];
    n->key = key;
    n->parent = parent;
    n->left = NIL;
    n->right = NIL;
    n->color = RED;
    if (parent == NIL)
        t->root = s;
    else if (go_left)
        L(parent) = s;
    else
        R(parent) = s;
    hput(t, key, s);
    t->count++;
    insert_color(t, s);
    return 1;
}

/* ____rb_erase_color() */
static void erase_color(RBTree *t, int32_t parent) {
    int32_t node = NIL, sibling, tmp1, tmp2;
    for (;;) {
        sibling = R(parent);
        if (node != sibling) { /* node == parent->rb_left */
            if (C(sibling) == RED) {
                /* Case 1 - left rotate at parent */
                tmp1 = L(sibling);
                R(parent) = tmp1;
                L(sibling) = parent;
                P(tmp1) = parent;
                C(tmp1) = BLACK;
                rotate_set_parents(t, parent, sibling, RED);
                sibling = tmp1;
            }
            tmp1 = R(sibling);
            if (tmp1 == NIL || C(tmp1) == BLACK) {
                tmp2 = L(sibling);
                if (tmp2 == NIL || C(tmp2) == BLACK) {
                    /* Case 2 - sibling color flip */
                    P(sibling) = parent;
                    C(sibling) = RED;
                    if (C(parent) == RED) {
                        C(parent) = BLACK;
                    } else {
                        node = parent;
                        parent = P(node);
                        if (parent != NIL)
                            continue;
                    }
                    break;
                }
                /* Case 3 - right rotate at sibling */
                tmp1 = R(tmp2);
                L(sibling) = tmp1;
                R(tmp2) = sibling;
                R(parent) = tmp2;
                if (tmp1 != NIL) {
                    P(tmp1) = sibling;
                    C(tmp1) = BLACK;
                }
                tmp1 = sibling;
                sibling = tmp2;
            }
            /* Case 4 - left rotate at parent + color flips */
            tmp2 = L(sibling);
            R(parent) = tmp2;
            L(sibling) = parent;
            P(tmp1) = sibling;
            C(tmp1) = BLACK;
            if (tmp2 != NIL)
                P(tmp2) = parent;
            rotate_set_parents(t, parent, sibling, BLACK);
            break;
        } else {
            sibling = L(parent);
            if (C(sibling) == RED) {
                /* Case 1 - right rotate at parent */
                tmp1 = R(sibling);
                L(parent) = tmp1;
                R(sibling) = parent;
                P(tmp1) = parent;
                C(tmp1) = BLACK;
                rotate_set_parents(t, parent, sibling, RED);
                sibling = tmp1;
            }
            tmp1 = L(sibling);
            if (tmp1 == NIL || C(tmp1) == BLACK) {
                tmp2 = R(sibling);
                if (tmp2 == NIL || C(tmp2) == BLACK) {
                    /* Case 2 - sibling color flip */
                    P(sibling) = parent;
                    C(sibling) = RED;
                    if (C(parent) == RED) {
                        C(parent) = BLACK;
                    } else {
                        node = parent;
                        parent = P(node);
                        if (parent != NIL)
                            continue;
                    }
                    break;
                }
                /* Case 3 - left rotate at sibling */
                tmp1 = L(tmp2);
                R(sibling) = tmp1;
                L(tmp2) = sibling;
                L(parent) = tmp2;
                if (tmp1 != NIL) {
                    P(tmp1) = sibling;
                    C(tmp1) = BLACK;
                }
                tmp1 = sibling;
                sibling = tmp2;
            }
            /* Case 4 - right rotate at parent + color flips */
            tmp2 = R(sibling);
            L(parent) = tmp2;
            R(sibling) = parent;
            P(tmp1) = sibling;
            C(tmp1) = BLACK;
            if (tmp2 != NIL)
                P(tmp2) = parent;
            rotate_set_parents(t, parent, sibling, BLACK);
            break;
        }
    }
}

/* rb_erase(): __rb_erase_augmented() then ____rb_erase_color(). */
static void erase_slot(RBTree *t, int32_t node) {
    int32_t child = R(node), tmp = L(node), parent, rebalance;
    t->version++;
    if (tmp == NIL) {
        /* Case 1: node to erase has no more than 1 child (easy!) */
        int pcolor = C(node);
        parent = P(node);
        change_child(t, node, child, parent);
        if (child != NIL) {
            P(child) = parent;
            C(child) = pcolor;
            rebalance = NIL;
        } else {
            rebalance = pcolor == BLACK ? parent : NIL;
        }
    } else if (child == NIL) {
        /* Still case 1, but this time the child is node->rb_left */
        parent = P(node);
        P(tmp) = parent;
        C(tmp) = C(node);
        change_child(t, node, tmp, parent);
        rebalance = NIL;
    } else {
        int32_t successor = child, child2;
        tmp = L(child);
        if (tmp == NIL) {
            /* Case 2: node's successor is its right child */
            parent = successor;
            child2 = R(successor);
        } else {
            /* Case 3: node's successor is leftmost under node's right child subtree */
            do {
                parent = successor;
                successor = tmp;
                tmp = L(tmp);
            } while (tmp != NIL);
            child2 = R(successor);
            L(parent) = child2;
            R(successor) = child;
            P(child) = successor;
        }
        tmp = L(node);
        L(successor) = tmp;
        P(tmp) = successor;
        int32_t nparent = P(node);
        int ncolor = C(node);
        change_child(t, node, successor, nparent);
        if (child2 != NIL) {
            P(child2) = parent;
            C(child2) = BLACK;
            rebalance = NIL;
        } else {
            rebalance = C(successor) == BLACK ? parent : NIL;
        }
        P(successor) = nparent;
        C(successor) = ncolor;
    }
    hdel(t, K(node));
    P(node) = t->free;
    t->free = node;
    t->count--;
    if (rebalance != NIL)
        erase_color(t, rebalance);
}

/* -- Python interface ------------------------------------------------------------------ */

/* An int in [0, 2**64) -> key. 1: ok; -1: error set; 0 (only when `quiet`: lookups,
 * where such a key is simply absent): not an int of that range. */
static int as_key(PyObject *o, uint64_t *key, int quiet) {
    PyObject *i = PyNumber_Index(o); /* ints, and numpy's integer scalars */
    if (i == NULL) {
        if (quiet && PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(i);
    Py_DECREF(i);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        if (quiet)
            return 0;
        PyErr_SetString(PyExc_OverflowError, "rbtree keys are in [0, 2**64)");
        return -1;
    }
    *key = (uint64_t)v;
    return 1;
}

static PyObject *key_or_none(const RBTree *t, int32_t s) {
    if (s == NIL)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(K(s));
}

static int32_t slot_of(RBTree *t, PyObject *o) {
    uint64_t key;
    int r = as_key(o, &key, 1);
    if (r < 0)
        return -2;
    int32_t s = r ? find(t, key) : NIL;
    if (s == NIL) {
        PyErr_SetObject(PyExc_KeyError, o);
        return -2;
    }
    return s;
}

static PyObject *RBTree_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":RBTree", kwlist))
        return NULL;
    RBTree *t = (RBTree *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->n = NULL;
    t->cap = t->used = t->count = 0;
    t->free = t->root = NIL;
    t->version = 0;
    if (hm_init(&t->h, 4) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyObject *)t;
}

static void RBTree_dealloc(RBTree *t) {
    nodes_free(t);
    hm_free(&t->h);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t RBTree_len(RBTree *t) { return t->count; }

static int RBTree_contains(RBTree *t, PyObject *o) {
    uint64_t key;
    int r = as_key(o, &key, 1);
    if (r <= 0)
        return r;
    return find(t, key) != NIL;
}

static PyObject *RBTree_insert(RBTree *t, PyObject *o) {
    uint64_t key;
    if (as_key(o, &key, 0) < 0 || reserve(t, 1) < 0)
        return NULL;
    if (!insert_key(t, key)) {
        PyErr_Format(PyExc_KeyError, "key %llu already in the tree", (unsigned long long)key);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *RBTree_erase(RBTree *t, PyObject *o) {
    int32_t s = slot_of(t, o);
    if (s == -2)
        return NULL;
    erase_slot(t, s);
    Py_RETURN_NONE;
}

/* A C-contiguous buffer of 8-byte unsigned ints (a numpy uint64 array). */
static int get_keys(PyObject *o, Py_buffer *view) {
    if (PyObject_GetBuffer(o, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    if (view->itemsize != 8 || (strcmp(f, "Q") != 0 && strcmp(f, "L") != 0)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "keys must be a contiguous array of uint64");
        return -1;
    }
    return 0;
}

/* The searches of a group of keys walked side by side, only to load the nodes on their
 * paths (and their hash entries) into the cache: the cache misses of independent walks
 * overlap, where one insert after the other would wait for each miss in turn. The inserts
 * that follow (each a full walk of its own) find most of their nodes cached. Changes
 * nothing. */
#define GROUP 16
static void touch_paths(const RBTree *t, const uint64_t *keys, int g) {
    int32_t cur[GROUP];
    for (int j = 0; j < g; j++) {
        cur[j] = t->root;
        __builtin_prefetch(hm_prefetch_addr(&t->h, keys[j]), 1);
    }
    for (int active = g; active;) {
        active = 0;
        for (int j = 0; j < g; j++) {
            int32_t c = cur[j];
            if (c == NIL)
                continue;
            const node_t *n = &t->n[c];
            c = keys[j] < n->key ? n->left : keys[j] > n->key ? n->right : NIL;
            cur[j] = c;
            active += c != NIL;
        }
    }
}

static PyObject *RBTree_insert_many(RBTree *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"keys", "skip_present", NULL};
    PyObject *o;
    int skip = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$p:insert_many", kwlist, &o, &skip))
        return NULL;
    Py_buffer view;
    if (get_keys(o, &view) < 0)
        return NULL;
    Py_ssize_t n = view.len / 8, done = 0;
    const uint64_t *keys = view.buf;
    if (reserve(t, n) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i % GROUP == 0)
            touch_paths(t, keys + i, n - i < GROUP ? (int)(n - i) : GROUP);
        if (insert_key(t, keys[i])) {
            done++;
        } else if (!skip) {
            PyErr_Format(PyExc_KeyError, "key %llu already in the tree",
                         (unsigned long long)keys[i]);
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(done);
}

static PyObject *RBTree_step(RBTree *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "step(node, key) takes two arguments");
        return NULL;
    }
    int32_t s = slot_of(t, args[0]);
    uint64_t key;
    if (s == -2 || as_key(args[1], &key, 0) < 0)
        return NULL;
    return key_or_none(t, key < K(s) ? L(s) : R(s));
}

static PyObject *RBTree_node(RBTree *t, PyObject *o) {
    int32_t s = slot_of(t, o);
    if (s == -2)
        return NULL;
    PyObject *p = key_or_none(t, P(s)), *l = key_or_none(t, L(s)), *r = key_or_none(t, R(s));
    PyObject *res = NULL;
    if (p && l && r)
        res = Py_BuildValue("(OOOi)", p, l, r, (int)C(s));
    Py_XDECREF(p);
    Py_XDECREF(l);
    Py_XDECREF(r);
    return res;
}

static PyObject *RBTree_path(RBTree *t, PyObject *o) {
    uint64_t key;
    if (as_key(o, &key, 0) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (int32_t cur = t->root; cur != NIL;) {
        PyObject *k = PyLong_FromUnsignedLongLong(K(cur));
        if (k == NULL || PyList_Append(out, k) < 0) {
            Py_XDECREF(k);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(k);
        if (key == K(cur))
            break;
        cur = key < K(cur) ? L(cur) : R(cur);
    }
    return out;
}

static PyObject *RBTree_interval(RBTree *t, PyObject *o) {
    uint64_t key;
    if (as_key(o, &key, 0) < 0)
        return NULL;
    int has_lo = 0, has_hi = 0;
    uint64_t lo = 0, hi = 0;
    for (int32_t cur = t->root; cur != NIL && K(cur) != key;) {
        if (key < K(cur)) {
            hi = K(cur);
            has_hi = 1;
            cur = L(cur);
        } else {
            lo = K(cur);
            has_lo = 1;
            cur = R(cur);
        }
    }
    PyObject *plo = has_lo ? PyLong_FromUnsignedLongLong(lo) : PyLong_FromLong(-1);
    PyObject *phi;
    if (has_hi) {
        phi = PyLong_FromUnsignedLongLong(hi);
    } else {
        PyObject *one = PyLong_FromLong(1), *sh = PyLong_FromLong(64);
        phi = (one && sh) ? PyNumber_Lshift(one, sh) : NULL;
        Py_XDECREF(one);
        Py_XDECREF(sh);
    }
    PyObject *res = NULL;
    if (plo && phi)
        res = PyTuple_Pack(2, plo, phi);
    Py_XDECREF(plo);
    Py_XDECREF(phi);
    return res;
}

/* check(): black height of the subtree at n, or -1 with AssertionError set. */
static long check_walk(RBTree *t, int32_t n, int has_lo, uint64_t lo, int has_hi, uint64_t hi,
                       Py_ssize_t *seen) {
    if (n == NIL)
        return 1;
    const char *bad = NULL;
    if (n < 0 || n >= t->used)
        bad = "link to a slot out of range";
    else if (++*seen > t->count)
        bad = "more nodes reachable than keys (a cycle?)";
    else if ((has_lo && K(n) <= lo) || (has_hi && K(n) >= hi))
        bad = "keys out of order";
    else if (find(t, K(n)) != n)
        bad = "hash does not map the key to its node";
    else if (C(n) != RED && C(n) != BLACK)
        bad = "bad colour";
    else if (C(n) == RED && ((L(n) != NIL && C(L(n)) == RED) || (R(n) != NIL && C(R(n)) == RED)))
        bad = "red node with a red child";
    else if ((L(n) != NIL && P(L(n)) != n) || (R(n) != NIL && P(R(n)) != n))
        bad = "bad parent link";
    if (bad) {
        PyErr_SetString(PyExc_AssertionError, bad);
        return -1;
    }
    long a = check_walk(t, L(n), has_lo, lo, 1, K(n), seen);
    if (a < 0)
        return -1;
    long b = check_walk(t, R(n), 1, K(n), has_hi, hi, seen);
    if (b < 0)
        return -1;
    if (a != b) {
        PyErr_SetString(PyExc_AssertionError, "unequal black heights");
        return -1;
    }
    return a + (C(n) == BLACK);
}

static PyObject *RBTree_check(RBTree *t, PyObject *Py_UNUSED(ignored)) {
    if (t->root != NIL && (P(t->root) != NIL || C(t->root) != BLACK)) {
        PyErr_SetString(PyExc_AssertionError, "root has a parent or is red");
        return NULL;
    }
    Py_ssize_t seen = 0;
    long h = check_walk(t, t->root, 0, 0, 0, 0, &seen);
    if (h < 0)
        return NULL;
    if (seen != t->count) {
        PyErr_SetString(PyExc_AssertionError, "keys not reachable from the root");
        return NULL;
    }
    return PyLong_FromLong(h);
}

static PyObject *RBTree_get_root(RBTree *t, void *Py_UNUSED(closure)) {
    return key_or_none(t, t->root);
}

static PyObject *RBTree_get_version(RBTree *t, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(t->version);
}

static PyObject *RBTree_get_nbytes(RBTree *t, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t((size_t)t->cap * sizeof(node_t) + hm_nbytes(&t->h));
}

static PyMethodDef RBTree_methods[] = {
    {"insert", (PyCFunction)RBTree_insert, METH_O,
     "insert(key): rb_link_node() at key's BST place, then rb_insert_color(). KeyError if "
     "the key is in the tree."},
    {"insert_many", (PyCFunction)(void (*)(void))RBTree_insert_many,
     METH_VARARGS | METH_KEYWORDS,
     "insert_many(keys, *, skip_present=False) -> int: insert() of every key of a uint64 "
     "array, in order; with skip_present, keys already in the tree (or earlier in keys) "
     "are passed over instead of raising KeyError. Returns the number inserted."},
    {"erase", (PyCFunction)RBTree_erase, METH_O, "erase(key): rb_erase(). KeyError if absent."},
    {"step", (PyCFunction)(void (*)(void))RBTree_step, METH_FASTCALL,
     "step(node, key): the child of node on the side of key (left when key < node), or "
     "None: one step of a search for key."},
    {"node", (PyCFunction)RBTree_node, METH_O,
     "node(key) -> (parent, left, right, colour): the links of key's node (None: no node; "
     "colour 0 red, 1 black)."},
    {"path", (PyCFunction)RBTree_path, METH_O,
     "path(key): the keys a search for key visits, root first."},
    {"interval", (PyCFunction)RBTree_interval, METH_O,
     "interval(key) -> (lo, hi): the open interval of search keys whose walk passes key's "
     "node (-1 and 2**64 for no bound)."},
    {"check", (PyCFunction)RBTree_check, METH_NOARGS,
     "check() -> int: verify the red-black properties and the index; the black height."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RBTree_getset[] = {
    {"root", (getter)RBTree_get_root, NULL, "the root's key, or None", NULL},
    {"version", (getter)RBTree_get_version, NULL,
     "bumped by every insert and erase (the shape may change)", NULL},
    {"nbytes", (getter)RBTree_get_nbytes, NULL, "bytes allocated for nodes and index", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods RBTree_as_sequence = {
    .sq_length = (lenfunc)RBTree_len,
    .sq_contains = (objobjproc)RBTree_contains,
};

static PyTypeObject RBTreeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ksmfs.kernel._rbtree.RBTree",
    .tp_basicsize = sizeof(RBTree),
    .tp_dealloc = (destructor)RBTree_dealloc,
    .tp_as_sequence = &RBTree_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A red-black tree of uint64 keys with the exact rebalancing of lib/rbtree.c.",
    .tp_methods = RBTree_methods,
    .tp_getset = RBTree_getset,
    .tp_new = RBTree_new,
};

/* -- TokenMap: uint64 key -> int64 value ------------------------------------------------ */

/* The stable tree's other view (kernel/stabletree.py): content token -> stable node id or
 * chain, for the page-by-page lookups and for a batch's lookups of thousands of tokens at
 * once. Open addressing with linear probing and backward-shift deletion, like the
 * rbtree's index; an empty entry holds the value EMPTY_VAL, which no stable node or chain
 * id can be. */

#define EMPTY_VAL HM_EMPTY

typedef struct {
    PyObject_HEAD
    hmap_t h;
} TokenMap;

static int as_val(PyObject *o, int64_t *val) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v == EMPTY_VAL) {
        PyErr_SetString(PyExc_ValueError, "TokenMap values are in (-2**63, 2**63)");
        return -1;
    }
    *val = v;
    return 0;
}

static PyObject *TokenMap_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":TokenMap", kwlist))
        return NULL;
    TokenMap *m = (TokenMap *)type->tp_alloc(type, 0);
    if (m == NULL)
        return NULL;
    if (hm_init(&m->h, 4) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

static void TokenMap_dealloc(TokenMap *m) {
    hm_free(&m->h);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static Py_ssize_t TokenMap_len(TokenMap *m) { return m->h.count; }

static int TokenMap_contains(TokenMap *m, PyObject *o) {
    uint64_t key;
    int r = as_key(o, &key, 1);
    if (r <= 0)
        return r;
    return hm_get(&m->h, key) != EMPTY_VAL;
}

static PyObject *TokenMap_subscript(TokenMap *m, PyObject *o) {
    uint64_t key;
    int r = as_key(o, &key, 1);
    if (r < 0)
        return NULL;
    int64_t v = r ? hm_get(&m->h, key) : EMPTY_VAL;
    if (v == EMPTY_VAL) {
        PyErr_SetObject(PyExc_KeyError, o);
        return NULL;
    }
    return PyLong_FromLongLong(v);
}

static int TokenMap_ass_subscript(TokenMap *m, PyObject *o, PyObject *v) {
    uint64_t key;
    if (v == NULL) {
        int r = as_key(o, &key, 1);
        if (r < 0)
            return -1;
        if (!r || !hm_del(&m->h, key)) {
            PyErr_SetObject(PyExc_KeyError, o);
            return -1;
        }
        return 0;
    }
    int64_t val;
    if (as_key(o, &key, 0) < 0 || as_val(v, &val) < 0 || hm_reserve(&m->h, 1) < 0)
        return -1;
    hm_set(&m->h, key, val);
    return 0;
}

static PyObject *TokenMap_get(TokenMap *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    uint64_t key;
    int r = as_key(args[0], &key, 1);
    if (r < 0)
        return NULL;
    int64_t v = r ? hm_get(&m->h, key) : EMPTY_VAL;
    if (v == EMPTY_VAL) {
        PyObject *d = nargs == 2 ? args[1] : Py_None;
        return Py_NewRef(d);
    }
    return PyLong_FromLongLong(v);
}

static int keys_append(PyObject *out, Py_ssize_t *k, uint64_t key) {
    PyObject *o = PyLong_FromUnsignedLongLong(key);
    if (o == NULL)
        return -1;
    PyList_SET_ITEM(out, (*k)++, o);
    return 0;
}

/* The keys of e, then those still live in old. */
static PyObject *TokenMap_keys(TokenMap *m, PyObject *Py_UNUSED(ignored)) {
    const hmap_t *h = &m->h;
    PyObject *out = PyList_New(h->count);
    if (out == NULL)
        return NULL;
    Py_ssize_t k = 0;
    for (size_t i = 0; i <= h->mask; i++)
        if (h->e[i].sv != 0 && keys_append(out, &k, h->e[i].key) < 0)
            goto fail;
    if (h->old)
        for (size_t i = h->cur; i <= h->omask; i++)
            if (hm_old_live(h, i) && keys_append(out, &k, h->old[i].key) < 0)
                goto fail;
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *TokenMap_iter(TokenMap *m) {
    PyObject *keys = TokenMap_keys(m, NULL);
    if (keys == NULL)
        return NULL;
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

/* A C-contiguous buffer of 8-byte signed ints (a numpy int64 array). */
static int get_vals(PyObject *o, Py_buffer *view, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, view, flags) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    if (view->itemsize != 8 || (strcmp(f, "q") != 0 && strcmp(f, "l") != 0)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "values must be a contiguous array of int64");
        return -1;
    }
    return 0;
}

static PyObject *TokenMap_set_many(TokenMap *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_many(keys, values) takes two arrays");
        return NULL;
    }
    Py_buffer kv, vv;
    if (get_keys(args[0], &kv) < 0)
        return NULL;
    if (get_vals(args[1], &vv, 0) < 0) {
        PyBuffer_Release(&kv);
        return NULL;
    }
    Py_ssize_t n = kv.len / 8;
    const uint64_t *keys = kv.buf;
    const int64_t *vals = vv.buf;
    PyObject *res = NULL;
    if (vv.len != kv.len) {
        PyErr_SetString(PyExc_ValueError, "set_many: keys and values differ in length");
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (vals[i] == EMPTY_VAL) {
            PyErr_SetString(PyExc_ValueError, "TokenMap values are in (-2**63, 2**63)");
            goto out;
        }
    }
    if (hm_reserve(&m->h, n) < 0)
        goto out;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + 8 < n)
            __builtin_prefetch(hm_prefetch_addr(&m->h, keys[i + 8]), 1);
        hm_set(&m->h, keys[i], vals[i]);
    }
    res = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&kv);
    PyBuffer_Release(&vv);
    return res;
}

static PyObject *TokenMap_lookup_into(TokenMap *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "lookup_into(keys, out, missing)");
        return NULL;
    }
    long long missing = PyLong_AsLongLong(args[2]);
    if (missing == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer kv, ov;
    if (get_keys(args[0], &kv) < 0)
        return NULL;
    if (get_vals(args[1], &ov, 1) < 0) {
        PyBuffer_Release(&kv);
        return NULL;
    }
    PyObject *res = NULL;
    if (ov.len != kv.len) {
        PyErr_SetString(PyExc_ValueError, "lookup_into: keys and out differ in length");
    } else {
        Py_ssize_t n = kv.len / 8;
        const uint64_t *keys = kv.buf;
        int64_t *out = ov.buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i + 8 < n)
                __builtin_prefetch(hm_prefetch_addr(&m->h, keys[i + 8]));
            hm_step(&m->h, HM_STEP);
            int64_t v = hm_get(&m->h, keys[i]);
            out[i] = v == EMPTY_VAL ? missing : v;
        }
        res = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&kv);
    PyBuffer_Release(&ov);
    return res;
}

static PyObject *TokenMap_clear(TokenMap *m, PyObject *Py_UNUSED(ignored)) {
    hm_clear(&m->h);
    Py_RETURN_NONE;
}

static PyObject *TokenMap_get_nbytes(TokenMap *m, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t(hm_nbytes(&m->h));
}

static PyMethodDef TokenMap_methods[] = {
    {"get", (PyCFunction)(void (*)(void))TokenMap_get, METH_FASTCALL,
     "get(key, default=None): the value of key, or default."},
    {"keys", (PyCFunction)TokenMap_keys, METH_NOARGS, "keys() -> list: the keys, unordered."},
    {"clear", (PyCFunction)TokenMap_clear, METH_NOARGS,
     "clear(): no keys; the table keeps the size it needed."},
    {"set_many", (PyCFunction)(void (*)(void))TokenMap_set_many, METH_FASTCALL,
     "set_many(keys, values): map[keys[i]] = values[i] for a uint64 and an int64 array, in "
     "order."},
    {"lookup_into", (PyCFunction)(void (*)(void))TokenMap_lookup_into, METH_FASTCALL,
     "lookup_into(keys, out, missing): out[i] = the value of keys[i], or missing (out: a "
     "writable int64 array of the same length)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef TokenMap_getset[] = {
    {"nbytes", (getter)TokenMap_get_nbytes, NULL, "bytes allocated for the table", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods TokenMap_as_sequence = {
    .sq_contains = (objobjproc)TokenMap_contains,
};

static PyMappingMethods TokenMap_as_mapping = {
    .mp_length = (lenfunc)TokenMap_len,
    .mp_subscript = (binaryfunc)TokenMap_subscript,
    .mp_ass_subscript = (objobjargproc)TokenMap_ass_subscript,
};

static PyTypeObject TokenMapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ksmfs.kernel._rbtree.TokenMap",
    .tp_basicsize = sizeof(TokenMap),
    .tp_dealloc = (destructor)TokenMap_dealloc,
    .tp_as_sequence = &TokenMap_as_sequence,
    .tp_as_mapping = &TokenMap_as_mapping,
    .tp_iter = (getiterfunc)TokenMap_iter,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A hash map from uint64 keys to int64 values, with array lookups.",
    .tp_methods = TokenMap_methods,
    .tp_getset = TokenMap_getset,
    .tp_new = TokenMap_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ksmfs.kernel._rbtree",
    .m_doc = "The stable tree's rbtree (lib/rbtree.c, compiled; see ksmfs/kernel/rbtree.py) "
             "and its token -> node map.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__rbtree(void) {
    if (PyType_Ready(&RBTreeType) < 0 || PyType_Ready(&TokenMapType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "RBTree", (PyObject *)&RBTreeType) < 0
        || PyModule_AddObjectRef(m, "TokenMap", (PyObject *)&TokenMapType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
