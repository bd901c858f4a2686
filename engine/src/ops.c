/* ops.c: (being written) */
