/* bpe.c: byte-pair merging by rank with a binary heap over a linked list of symbols. */
#include "bpe.h"

#include <glib.h>

/* Open addressing with linear probing: GHashTable would need an allocation per 64-bit key, and
 * Gemma has over half a million merges. */
typedef struct {
  uint64_t key; /* (left << 32 | right) + 1; 0 marks an empty slot */
  int32_t rank, merged;
} merge_slot;

struct sg_bpe_merges {
  merge_slot *slots;
  uint64_t mask; /* capacity - 1 (capacity is a power of two) */
  int count;
};

static uint64_t pair_key(int32_t left, int32_t right) {
  return (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
}

static uint64_t hash_key(uint64_t key) { /* splitmix64 finalizer */
  key ^= key >> 30;
  key *= 0xbf58476d1ce4e5b9ull;
  key ^= key >> 27;
  key *= 0x94d049bb133111ebull;
  return key ^ (key >> 31);
}

sg_bpe_merges *sg_bpe_merges_new(int expected_count) {
  sg_bpe_merges *merges = g_new0(sg_bpe_merges, 1);
  uint64_t capacity = 64;
  while (capacity < 2 * (uint64_t)(expected_count > 0 ? expected_count : 1)) capacity *= 2;
  merges->slots = g_new0(merge_slot, capacity);
  merges->mask = capacity - 1;
  return merges;
}

void sg_bpe_merges_free(sg_bpe_merges *merges) {
  if (!merges) return;
  g_free(merges->slots);
  g_free(merges);
}

int sg_bpe_merges_count(const sg_bpe_merges *merges) {
  return merges->count;
}

static void grow(sg_bpe_merges *merges) {
  merge_slot *old = merges->slots;
  uint64_t old_capacity = merges->mask + 1;
  merges->slots = g_new0(merge_slot, old_capacity * 2);
  merges->mask = old_capacity * 2 - 1;
  for (uint64_t i = 0; i < old_capacity; i++) {
    if (!old[i].key) continue;
    uint64_t at = hash_key(old[i].key) & merges->mask;
    while (merges->slots[at].key) at = (at + 1) & merges->mask;
    merges->slots[at] = old[i];
  }
  g_free(old);
}

void sg_bpe_merges_add(sg_bpe_merges *merges, int32_t left, int32_t right, int32_t rank,
                       int32_t merged) {
  if (2 * (uint64_t)(merges->count + 1) > merges->mask + 1) grow(merges);
  uint64_t key = pair_key(left, right);
  uint64_t at = hash_key(key) & merges->mask;
  while (merges->slots[at].key && merges->slots[at].key != key) at = (at + 1) & merges->mask;
  if (!merges->slots[at].key) merges->count++;
  merges->slots[at] = (merge_slot){key, rank, merged};
}

int sg_bpe_merges_find(const sg_bpe_merges *merges, int32_t left, int32_t right, int32_t *rank,
                       int32_t *merged) {
  uint64_t key = pair_key(left, right);
  uint64_t at = hash_key(key) & merges->mask;
  while (merges->slots[at].key) {
    if (merges->slots[at].key == key) {
      *rank = merges->slots[at].rank;
      *merged = merges->slots[at].merged;
      return 1;
    }
    at = (at + 1) & merges->mask;
  }
  return 0;
}

/* A candidate merge of the symbol at `pos` with the symbol after it. */
typedef struct {
  int32_t rank, pos;
} candidate;

static int comes_first(candidate a, candidate b) {
  return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static void heap_push(candidate *heap, int *size, candidate item) {
  int i = (*size)++;
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (!comes_first(item, heap[parent])) break;
    heap[i] = heap[parent];
    i = parent;
  }
  heap[i] = item;
}

static candidate heap_pop(candidate *heap, int *size) {
  candidate top = heap[0];
  candidate last = heap[--(*size)];
  int i = 0;
  for (;;) {
    int child = 2 * i + 1;
    if (child >= *size) break;
    if (child + 1 < *size && comes_first(heap[child + 1], heap[child])) child++;
    if (!comes_first(heap[child], last)) break;
    heap[i] = heap[child];
    i = child;
  }
  if (*size > 0) heap[i] = last;
  return top;
}

static void push_pair(const sg_bpe_merges *merges, const int32_t *ids, const int *next, int pos,
                      candidate *heap, int *size) {
  int32_t rank, merged;
  if (pos >= 0 && next[pos] >= 0 &&
      sg_bpe_merges_find(merges, ids[pos], ids[next[pos]], &rank, &merged)) {
    heap_push(heap, size, (candidate){rank, pos});
  }
}

void sg_bpe_merge_word(const sg_bpe_merges *merges, int32_t *ids, int *count) {
  int n = *count;
  if (n < 2) return;
  int *prev = g_new(int, n), *next = g_new(int, n);
  gboolean *removed = g_new0(gboolean, n);
  /* Each merge pushes at most two candidates, and there are at most n - 1 merges. */
  candidate *heap = g_new(candidate, 3 * (size_t)n);
  int size = 0;
  for (int i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  for (int i = 0; i + 1 < n; i++) push_pair(merges, ids, next, i, heap, &size);
  while (size > 0) {
    candidate top = heap_pop(heap, &size);
    int pos = top.pos;
    if (removed[pos] || next[pos] < 0) continue;
    int right = next[pos];
    int32_t rank, merged;
    /* Skip entries made stale by an earlier merge of either symbol. */
    if (!sg_bpe_merges_find(merges, ids[pos], ids[right], &rank, &merged) || rank != top.rank) {
      continue;
    }
    ids[pos] = merged;
    removed[right] = TRUE;
    next[pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = pos;
    push_pair(merges, ids, next, prev[pos], heap, &size);
    push_pair(merges, ids, next, pos, heap, &size);
  }
  int kept = 0;
  for (int i = 0; i < n; i++) {
    if (!removed[i]) ids[kept++] = ids[i];
  }
  *count = kept;
  g_free(prev);
  g_free(next);
  g_free(removed);
  g_free(heap);
}
