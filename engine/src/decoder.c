/* decoder.c: (being written) */
