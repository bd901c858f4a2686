/* rng.h: the counter-based random numbers behind seeds: Philox-4x32-10 and Box-Muller, so a seed
 * gives the same latent on every platform and thread count (documented in weights/README.md). */
#ifndef SG_RNG_H
#define SG_RNG_H

#include <stdint.h>

/* Philox-4x32 with 10 rounds: key = seed (low, high 32 bits), counter = (index low, index high,
 * stream, 0). Returns the 4 output words. */
void sg_philox4x32(uint64_t seed, uint64_t index, uint32_t stream, uint32_t out[4]);
/* The bare bijection on a full 4-word counter and 2-word key (checked against Random123's
 * published known-answer vectors in the unit tests). */
void sg_philox4x32_raw(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* out[i], i in [0, count): standard normal values. Element i uses block i/2 of Philox (counter
 * index = i/2): u1 = (w0 + 0.5)/2^32, u2 = (w1 + 0.5)/2^32, r = sqrt(-2 ln u1), element 2b is
 * r cos(2 pi u2) and 2b+1 is r sin(2 pi u2), in double, rounded to float (weights/README.md). */
void sg_normal_fill(uint64_t seed, uint32_t stream, float *out, int64_t count);
/* out[i] uniform in [lo, hi) from word 0 of block i: (float)(lo + (hi - lo) * w0 / 2^32) computed
 * in double; a value that rounds to hi becomes the largest float below hi. */
void sg_uniform_fill(uint64_t seed, uint32_t stream, float lo, float hi, float *out,
                     int64_t count);

#endif
