/* test_rng.c: unit tests of Philox-4x32-10 (Random123 known answers) and the noise maps. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "rng.h"
#include "test.h"

/* Random123 kat_vectors for philox4x32 10: counter (4 words), key (2 words) -> output (4 words). */
static void test_philox_known_answers(sg_test *t) {
  static const uint32_t vectors[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
      {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x408f276du,
       0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
      {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, 0xd16cfe09u,
       0x94fdccebu, 0x5001e420u, 0x24126ea1u},
  };
  for (int v = 0; v < 3; v++) {
    uint32_t out[4];
    sg_philox4x32_raw(vectors[v], vectors[v] + 4, out);
    for (int i = 0; i < 4; i++) {
      CHECK_MSG(t, out[i] == vectors[v][6 + i], "vector %d word %d: %08x != %08x", v, i, out[i],
                vectors[v][6 + i]);
    }
  }
  /* Counter (index low, index high, stream, 0), key (seed low, seed high). */
  uint32_t first[4];
  sg_philox4x32(0, 0, 0, first);
  CHECK(t, first[0] == 0x6627e8d5u && first[3] == 0x9b00dbd8u);
  uint64_t seeds[3] = {0, 0x299f31d0a4093822ull, 0xffffffffffffffffull};
  uint64_t indices[3] = {0, 0x85a308d3243f6a88ull, 123456789};
  uint32_t streams[3] = {0, 0x13198a2eu, 1};
  for (int s = 0; s < 3; s++) {
    uint32_t counter[4] = {(uint32_t)indices[s], (uint32_t)(indices[s] >> 32), streams[s], 0};
    uint32_t key[2] = {(uint32_t)seeds[s], (uint32_t)(seeds[s] >> 32)};
    uint32_t expected[4], got[4];
    sg_philox4x32_raw(counter, key, expected);
    sg_philox4x32(seeds[s], indices[s], streams[s], got);
    CHECK(t, memcmp(expected, got, sizeof got) == 0);
  }
}

static void test_normal_map(sg_test *t) {
  /* Element 2b and 2b+1 come from block b by Box-Muller, computed in double. */
  float values[7];
  sg_normal_fill(42, 0, values, 7);
  for (int b = 0; b < 4; b++) {
    uint32_t w[4];
    sg_philox4x32(42, (uint64_t)b, 0, w);
    double u1 = (w[0] + 0.5) / 4294967296.0, u2 = (w[1] + 0.5) / 4294967296.0;
    double r = sqrt(-2.0 * log(u1));
    CHECK(t, values[2 * b] == (float)(r * cos(6.283185307179586 * u2)));
    if (2 * b + 1 < 7) CHECK(t, values[2 * b + 1] == (float)(r * sin(6.283185307179586 * u2)));
  }
}

/* The first values for seed 42, stream 0 (the same as weights/recipe's NumPy generator):
 * -0.97018981, 0.19401896, -0.07318151, 0.139137492, -0.336961865, -0.518748701, -0.379737258,
 * -0.697365999, written exactly as hexadecimal floats. */
static void test_normal_seed42(sg_test *t) {
  static const float expected[8] = {-0x1.f0bcb8p-1f, 0x1.8d59dp-3f,   -0x1.2bc06p-4f,
                                    0x1.1cf41ep-3f,  -0x1.590c88p-2f, -0x1.09996ep-1f,
                                    -0x1.84d9d8p-2f, -0x1.650d28p-1f};
  float values[8];
  sg_normal_fill(42, 0, values, 8);
  for (int i = 0; i < 8; i++) {
    CHECK_MSG(t, values[i] == expected[i], "element %d: %.9g != %.9g", i, values[i], expected[i]);
  }
}

static void test_normal_statistics(sg_test *t) {
  int64_t count = 1 << 18;
  float *values = malloc((size_t)count * sizeof *values);
  if (!CHECK(t, values != NULL)) return;
  sg_normal_fill(7, 3, values, count);
  double sum = 0, sum_squares = 0;
  int finite = 1;
  for (int64_t i = 0; i < count; i++) {
    finite &= isfinite(values[i]) ? 1 : 0;
    sum += values[i];
    sum_squares += (double)values[i] * values[i];
  }
  double mean = sum / count, std = sqrt(sum_squares / count - mean * mean);
  CHECK(t, finite);
  CHECK_NEAR(t, mean, 0.0, 0.01); /* standard error 0.002 */
  CHECK_NEAR(t, std, 1.0, 0.01);
  /* Different seeds and streams give different numbers. */
  float a[4], b[4], c[4];
  sg_normal_fill(7, 3, a, 4);
  sg_normal_fill(8, 3, b, 4);
  sg_normal_fill(7, 4, c, 4);
  CHECK(t, memcmp(a, values, sizeof a) == 0);
  CHECK(t, memcmp(a, b, sizeof a) != 0 && memcmp(a, c, sizeof a) != 0);
  free(values);
}

/* Output must not depend on how the work is split: a short fill is a prefix of a long one, and
 * any thread count gives the same bytes. */
static void test_thread_independence(sg_test *t) {
  int64_t count = 100001; /* odd, many OpenMP tasks */
  float *full = malloc((size_t)count * sizeof *full);
  float *other = malloc((size_t)count * sizeof *other);
  if (!CHECK(t, full && other)) {
    free(full);
    free(other);
    return;
  }
  sg_normal_fill(99, 0, full, count);
  float prefix[9];
  sg_normal_fill(99, 0, prefix, 9);
  CHECK(t, memcmp(prefix, full, sizeof prefix) == 0);
  /* Serial recomputation of a few elements deep in the array, from the block map alone. */
  int64_t probes[3] = {8192, 50001, count - 1};
  for (int p = 0; p < 3; p++) {
    int64_t i = probes[p];
    uint32_t w[4];
    sg_philox4x32(99, (uint64_t)(i / 2), 0, w);
    double u1 = (w[0] + 0.5) / 4294967296.0, u2 = (w[1] + 0.5) / 4294967296.0;
    double r = sqrt(-2.0 * log(u1)), angle = 6.283185307179586 * u2;
    CHECK(t, full[i] == (float)(i % 2 ? r * sin(angle) : r * cos(angle)));
  }
#ifdef _OPENMP
  int saved = omp_get_max_threads();
  int thread_counts[3] = {1, 3, 8};
  for (int k = 0; k < 3; k++) {
    omp_set_num_threads(thread_counts[k]);
    memset(other, 0, (size_t)count * sizeof *other);
    sg_normal_fill(99, 0, other, count);
    CHECK_MSG(t, memcmp(full, other, (size_t)count * sizeof *full) == 0,
              "normal fill differs with %d threads", thread_counts[k]);
    sg_uniform_fill(5, 2, -1, 1, other, count);
    float single[5];
    sg_uniform_fill(5, 2, -1, 1, single, 5);
    CHECK(t, memcmp(single, other, sizeof single) == 0);
  }
  omp_set_num_threads(saved);
#endif
  free(full);
  free(other);
}

static void test_uniform(sg_test *t) {
  int64_t count = 1 << 16;
  float *values = malloc((size_t)count * sizeof *values);
  if (!CHECK(t, values != NULL)) return;
  sg_uniform_fill(1, 1, -0.5f, 0.25f, values, count);
  double sum = 0;
  int inside = 1;
  for (int64_t i = 0; i < count; i++) {
    inside &= values[i] >= -0.5f && values[i] < 0.25f;
    sum += values[i];
  }
  CHECK(t, inside);
  CHECK_NEAR(t, sum / count, -0.125, 0.005);
  uint32_t w[4];
  sg_philox4x32(1, 10, 1, w);
  CHECK(t, values[10] == (float)(-0.5 + 0.75 * (w[0] / 4294967296.0)));
  free(values);
}

void register_rng_tests(sg_test_list *list) {
  sg_test_add(list, "rng/philox_known_answers", test_philox_known_answers);
  sg_test_add(list, "rng/normal_map", test_normal_map);
  sg_test_add(list, "rng/normal_seed42", test_normal_seed42);
  sg_test_add(list, "rng/normal_statistics", test_normal_statistics);
  sg_test_add(list, "rng/thread_independence", test_thread_independence);
  sg_test_add(list, "rng/uniform", test_uniform);
}
