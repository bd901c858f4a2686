/* vector_clones.h: SG_VECTOR_CLONES, for hot loops compiled for several x86-64 levels at once. */
#ifndef SG_VECTOR_CLONES_H
#define SG_VECTOR_CLONES_H

/* A function marked SG_VECTOR_CLONES is compiled three times on x86-64 and the CPU picks one when
 * the library loads (GCC's function multi-versioning): AVX-512, AVX2 and the SSE2 baseline that
 * a Debian build targets. Without it the engine's own loops ran 4 floats at a time on CPUs that
 * do 16. No FMA contraction in C11 mode, so the clones compute the same values. OpenMP bodies
 * are outlined before cloning: mark plain functions that the parallel loops call. Elsewhere
 * (arm64: NEON is the baseline; clang builds such as the fuzzers) it is empty. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SG_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SG_VECTOR_CLONES
#endif

#endif
