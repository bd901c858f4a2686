/* ops_dnnl.c: (being written) */
