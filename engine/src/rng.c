/* rng.c: Philox-4x32-10 and the Box-Muller normal map documented in weights/README.md. */
#include "rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define SG_TWO_PI 6.283185307179586 /* 2 * pi rounded to double, as numpy's 2 * np.pi */

/* Blocks per OpenMP work item: large enough to amortise scheduling, small enough to balance. */
#define RNG_BLOCKS_PER_TASK 4096

void sg_philox4x32_raw(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t key0 = key[0], key1 = key[1];
  for (int round = 0; round < 10; round++) {
    uint64_t product0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t product1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(product0 >> 32), lo0 = (uint32_t)product0;
    uint32_t hi1 = (uint32_t)(product1 >> 32), lo1 = (uint32_t)product1;
    c0 = hi1 ^ c1 ^ key0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ key1;
    c3 = lo0;
    key0 += PHILOX_W0; /* the key bump after the last round is unused */
    key1 += PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

void sg_philox4x32(uint64_t seed, uint64_t index, uint32_t stream, uint32_t out[4]) {
  const uint32_t counter[4] = {(uint32_t)index, (uint32_t)(index >> 32), stream, 0};
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  sg_philox4x32_raw(counter, key, out);
}

/* Block b gives elements 2b (cosine) and 2b+1 (sine); words 2 and 3 are unused. */
static void normal_block(uint64_t seed, uint32_t stream, uint64_t block, double *cos_value,
                         double *sin_value) {
  uint32_t words[4];
  sg_philox4x32(seed, block, stream, words);
  double u1 = ((double)words[0] + 0.5) / 4294967296.0;
  double u2 = ((double)words[1] + 0.5) / 4294967296.0;
  double radius = sqrt(-2.0 * log(u1));
  double angle = SG_TWO_PI * u2;
  *cos_value = radius * cos(angle);
  *sin_value = radius * sin(angle);
}

void sg_normal_fill(uint64_t seed, uint32_t stream, float *out, int64_t count) {
  if (count <= 0) return;
  int64_t blocks = (count + 1) / 2;
  int64_t tasks = (blocks + RNG_BLOCKS_PER_TASK - 1) / RNG_BLOCKS_PER_TASK;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t task = 0; task < tasks; task++) {
    int64_t first = task * RNG_BLOCKS_PER_TASK;
    int64_t last = first + RNG_BLOCKS_PER_TASK < blocks ? first + RNG_BLOCKS_PER_TASK : blocks;
    for (int64_t b = first; b < last; b++) {
      double c, s;
      normal_block(seed, stream, (uint64_t)b, &c, &s);
      out[2 * b] = (float)c;
      if (2 * b + 1 < count) out[2 * b + 1] = (float)s;
    }
  }
}

/* out[i] = lo + (hi - lo) * w0 / 2^32 in double, rounded to float; a value that rounds up to hi
 * is replaced by the largest float below hi, so the range stays [lo, hi). */
void sg_uniform_fill(uint64_t seed, uint32_t stream, float lo, float hi, float *out,
                     int64_t count) {
  if (count <= 0) return;
  int64_t tasks = (count + RNG_BLOCKS_PER_TASK - 1) / RNG_BLOCKS_PER_TASK;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t task = 0; task < tasks; task++) {
    int64_t first = task * RNG_BLOCKS_PER_TASK;
    int64_t last = first + RNG_BLOCKS_PER_TASK < count ? first + RNG_BLOCKS_PER_TASK : count;
    for (int64_t i = first; i < last; i++) {
      uint32_t words[4];
      sg_philox4x32(seed, (uint64_t)i, stream, words);
      double u = (double)words[0] / 4294967296.0;
      float value = (float)((double)lo + ((double)hi - (double)lo) * u);
      if (value >= hi && hi > lo) value = nextafterf(hi, lo);
      out[i] = value;
    }
  }
}
