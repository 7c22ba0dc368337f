// A minimal MPI binding loaded at run time (dlopen of Open MPI's libmpi.so.40), so the package builds and runs
// without MPI headers or libraries and initialises MPI only when launched by mpirun. Every function returns an MPI
// error code (0 = MPI_SUCCESS), or -1 when the library is not loaded.
#ifndef MILAN_MPI_H
#define MILAN_MPI_H
#include <stddef.h>

/// Loads libmpi (path NULL: "libmpi.so.40", then "libmpi.so") and resolves the functions and Open MPI's predefined
/// handles. 0 on success; otherwise fills `err` with dlerror's text.
int milan_mpi_load(const char *path, char *err, size_t errlen);
/// MPI_Init_thread asking for MPI_THREAD_MULTIPLE; `provided` receives the level granted (0..3).
int milan_mpi_init(int *rank, int *size, int *provided);
int milan_mpi_finalize(void);
int milan_mpi_abort(int code);
int milan_mpi_barrier(void);
/// In-place float32 sum over all ranks (split into calls of at most 2^30 elements).
int milan_mpi_allreduce_sum_f32(float *buf, size_t count);
/// In-place float64 reduction: op 0 = sum, 1 = max, 2 = min.
int milan_mpi_allreduce_f64(double *buf, int count, int op);
/// Broadcast of `bytes` bytes from `root` (in pieces of at most 2^30 bytes).
int milan_mpi_bcast(void *buf, size_t bytes, int root);
/// Every rank's `bytes` bytes gathered into `recv` in rank order (size × bytes); equal sizes on every rank.
int milan_mpi_allgather(const void *send, void *recv, size_t bytes);
/// Gathers variable-size pieces (bytes per rank in `counts`, offsets in `displs`) into `recv` on every rank.
int milan_mpi_allgatherv(const void *send, int sendBytes, void *recv, const int *counts, const int *displs);
/// The library's text for an error code.
void milan_mpi_error_string(int code, char *buf, size_t len);

#endif
