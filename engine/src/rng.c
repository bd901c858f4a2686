/* rng.c: (being written) */
