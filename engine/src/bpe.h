/* bpe.h: byte-pair merging by rank (lowest first, leftmost on ties), shared by the tokenizers. */
#ifndef SG_BPE_H
#define SG_BPE_H

#include <stdint.h>

/* The merge table: (left id, right id) -> (rank, merged id). */
typedef struct sg_bpe_merges sg_bpe_merges;

sg_bpe_merges *sg_bpe_merges_new(int expected_count);
void sg_bpe_merges_free(sg_bpe_merges *merges);
int sg_bpe_merges_count(const sg_bpe_merges *merges);
/* Adds (or, for a pair already there, replaces: the last line of a merges file wins, as in the
 * Hugging Face and OpenAI implementations) one merge. */
void sg_bpe_merges_add(sg_bpe_merges *merges, int32_t left, int32_t right, int32_t rank,
                       int32_t merged);
/* Returns 1 and fills rank/merged when the pair has a merge, else 0. */
int sg_bpe_merges_find(const sg_bpe_merges *merges, int32_t left, int32_t right, int32_t *rank,
                       int32_t *merged);

/* Applies the merges to one word given as symbol ids: repeatedly merges the adjacent pair with
 * the lowest rank (the leftmost one among equals) until no pair has a merge. ids[0..*count) is
 * replaced by the merged ids and *count shrinks. O(n log n) in the word length. */
void sg_bpe_merge_word(const sg_bpe_merges *merges, int32_t *ids, int *count);

#endif
