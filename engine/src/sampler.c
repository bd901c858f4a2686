/* sampler.c: (being written) */
