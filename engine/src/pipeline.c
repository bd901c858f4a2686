/* pipeline.c: (being written) */
