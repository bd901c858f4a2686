/* weights.c: (being written) */
