/* ops_ref.c: (being written) */
