/* rng.h: the counter-based random numbers behind seeds: Philox-4x32-10 and Box-Muller, so a seed
 * gives the same latent on every platform and thread count (documented in weights/README.md). */
#ifndef SG_RNG_H
#define SG_RNG_H

#include <stdint.h>

/* Philox-4x32 with 10 rounds: key = seed (low, high 32 bits), counter = (index low, index high,
 * stream, 0). Returns the 4 output words. */
void sg_philox4x32(uint64_t seed, uint64_t index, uint32_t stream, uint32_t out[4]);

/* out[i], i in [0, count): standard normal values. Element i uses block i/2 of Philox (counter
 * index = i/2): words 0,1 give the uniforms u1 = (w0 + 0.5)/2^32 ... see rng.c for the exact map. */
void sg_normal_fill(uint64_t seed, uint32_t stream, float *out, int64_t count);
/* out[i] uniform in [lo, hi) from word 0 of block i. */
void sg_uniform_fill(uint64_t seed, uint32_t stream, float lo, float hi, float *out,
                     int64_t count);

#endif
