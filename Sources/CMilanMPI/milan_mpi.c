// Open MPI's ABI: handles are pointers to predefined objects exported by libmpi (MPI_COMM_WORLD is
// &ompi_mpi_comm_world, MPI_FLOAT is &ompi_mpi_float, ...), MPI_IN_PLACE is (void *)1 and
// MPI_STATUS_IGNORE is NULL. Only these few entry points are used; no MPI header is needed.
#define _GNU_SOURCE
#include "milan_mpi.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef void *Handle;

static int (*p_init_thread)(int *, char ***, int, int *);
static int (*p_finalize)(void);
static int (*p_abort)(Handle, int);
static int (*p_comm_rank)(Handle, int *);
static int (*p_comm_size)(Handle, int *);
static int (*p_barrier)(Handle);
static int (*p_allreduce)(const void *, void *, int, Handle, Handle, Handle);
static int (*p_bcast)(void *, int, Handle, int, Handle);
static int (*p_allgather)(const void *, int, Handle, void *, int, Handle, Handle);
static int (*p_allgatherv)(const void *, int, Handle, void *, const int *, const int *, Handle, Handle);
static int (*p_comm_set_errhandler)(Handle, Handle);
static int (*p_error_string)(int, char *, int *);
static Handle h_comm_world, h_float, h_double, h_byte, h_sum, h_max, h_min, h_errors_return;
static void *lib;

#define IN_PLACE ((void *)1)
#define CHUNK (1 << 30)

int milan_mpi_load(const char *path, char *err, size_t errlen) {
  if (lib) return 0;
  const char *names[] = {path, "libmpi.so.40", "libmpi.so"};
  for (int i = path ? 0 : 1; i < 3 && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    snprintf(err, errlen, "%s", dlerror());
    return -1;
  }
#define SYM(var, name)                                                  \
  do {                                                                  \
    *(void **)(&var) = dlsym(lib, name);                                \
    if (!var) {                                                         \
      snprintf(err, errlen, "libmpi has no %s (not Open MPI 4?)", name); \
      dlclose(lib);                                                     \
      lib = NULL;                                                       \
      return -1;                                                        \
    }                                                                   \
  } while (0)
  SYM(p_init_thread, "MPI_Init_thread");
  SYM(p_finalize, "MPI_Finalize");
  SYM(p_abort, "MPI_Abort");
  SYM(p_comm_rank, "MPI_Comm_rank");
  SYM(p_comm_size, "MPI_Comm_size");
  SYM(p_barrier, "MPI_Barrier");
  SYM(p_allreduce, "MPI_Allreduce");
  SYM(p_bcast, "MPI_Bcast");
  SYM(p_allgather, "MPI_Allgather");
  SYM(p_allgatherv, "MPI_Allgatherv");
  SYM(p_comm_set_errhandler, "MPI_Comm_set_errhandler");
  SYM(p_error_string, "MPI_Error_string");
  SYM(h_comm_world, "ompi_mpi_comm_world");
  SYM(h_float, "ompi_mpi_float");
  SYM(h_double, "ompi_mpi_double");
  SYM(h_byte, "ompi_mpi_byte");
  SYM(h_sum, "ompi_mpi_op_sum");
  SYM(h_max, "ompi_mpi_op_max");
  SYM(h_min, "ompi_mpi_op_min");
  SYM(h_errors_return, "ompi_mpi_errors_return");
#undef SYM
  return 0;
}

int milan_mpi_init(int *rank, int *size, int *provided) {
  if (!lib) return -1;
  int rc = p_init_thread(NULL, NULL, 3 /* MPI_THREAD_MULTIPLE */, provided);
  if (rc) return rc;
  // Errors come back as codes (the caller names them) instead of aborting inside the library.
  if ((rc = p_comm_set_errhandler(h_comm_world, h_errors_return))) return rc;
  if ((rc = p_comm_rank(h_comm_world, rank))) return rc;
  return p_comm_size(h_comm_world, size);
}

int milan_mpi_finalize(void) { return lib ? p_finalize() : -1; }
int milan_mpi_abort(int code) { return lib ? p_abort(h_comm_world, code) : -1; }
int milan_mpi_barrier(void) { return lib ? p_barrier(h_comm_world) : -1; }

int milan_mpi_allreduce_sum_f32(float *buf, size_t count) {
  if (!lib) return -1;
  for (size_t o = 0; o < count; o += CHUNK) {
    size_t n = count - o < CHUNK ? count - o : CHUNK;
    int rc = p_allreduce(IN_PLACE, buf + o, (int)n, h_float, h_sum, h_comm_world);
    if (rc) return rc;
  }
  return 0;
}

int milan_mpi_allreduce_f64(double *buf, int count, int op) {
  if (!lib) return -1;
  Handle h = op == 1 ? h_max : op == 2 ? h_min : h_sum;
  return p_allreduce(IN_PLACE, buf, count, h_double, h, h_comm_world);
}

int milan_mpi_bcast(void *buf, size_t bytes, int root) {
  if (!lib) return -1;
  for (size_t o = 0; o < bytes; o += CHUNK) {
    size_t n = bytes - o < CHUNK ? bytes - o : CHUNK;
    int rc = p_bcast((char *)buf + o, (int)n, h_byte, root, h_comm_world);
    if (rc) return rc;
  }
  return 0;
}

int milan_mpi_allgather(const void *send, void *recv, size_t bytes) {
  if (!lib) return -1;
  if (bytes > (size_t)CHUNK) return -2;
  return p_allgather(send, (int)bytes, h_byte, recv, (int)bytes, h_byte, h_comm_world);
}

int milan_mpi_allgatherv(const void *send, int sendBytes, void *recv, const int *counts, const int *displs) {
  if (!lib) return -1;
  return p_allgatherv(send, sendBytes, h_byte, recv, counts, displs, h_byte, h_comm_world);
}

void milan_mpi_error_string(int code, char *buf, size_t len) {
  if (code == -1 || !lib) {
    snprintf(buf, len, "MPI is not loaded");
    return;
  }
  if (code == -2) {
    snprintf(buf, len, "message larger than 1 GiB");
    return;
  }
  int n = 0;
  char tmp[512];
  if (p_error_string(code, tmp, &n) == 0 && n > 0) {
    snprintf(buf, len, "%.*s", n, tmp);
  } else {
    snprintf(buf, len, "MPI error %d", code);
  }
}
