// A pool of spinning worker threads for Parallel.run: between the back-to-back parallel regions of a training step
// (hundreds per step: every GEMM split, every row kernel) a worker keeps polling for the next region for a short
// while instead of sleeping, so it joins within a microsecond rather than after an OS wake-up (tens to hundreds of
// microseconds on a virtual machine, during which the caller runs its half alone and then waits for the late one).
// Parts are claimed one at a time, so a worker that arrives late finds them taken by the caller instead of holding
// one back (the caller then waits only for parts already running).
// A worker that has polled for `MILAN_WORKER_SPIN_US` (default 300) with no work sleeps on a condition variable.
#include "milan_kernels.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define MAX_WORKERS 255
// One atomic word says which region is running, how many parts it has and which part is next: generation (24 bits)
// | parts (20) | next (20). A worker claims a part by a compare-and-swap on the whole word, so a worker still
// leaving one region can never claim a part of the next one with the previous region's count or function.
#define FIELD_MASK ((1ULL << 20) - 1)
#define PARTS_SHIFT 20
#define GEN_SHIFT 40
#define GEN_MASK ((1ULL << 24) - 1)

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;    // one region at a time (held by its caller)
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;  // guards sleeping on `wake`
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int started;                            // worker threads running (under run_lock)
static _Atomic unsigned long long region;      // generation | parts | next
static _Atomic long done_parts;
static _Atomic int sleepers;
static _Atomic int active;                     // workers with index < active take parts (threads - 1)
static milan_pool_fn region_fn;                // written before the region's word is published, read after a claim
static void *region_ctx;
static long spin_ns = -1;

static long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long)t.tv_sec * 1000000000L + t.tv_nsec;
}

static unsigned long long generation_of(unsigned long long w) { return w >> GEN_SHIFT; }

// Claims and runs parts of region `gen` until none is left (or another region has begun).
static void take_parts(unsigned long long gen) {
  unsigned long long w = atomic_load(&region);
  for (;;) {
    if (generation_of(w) != gen) return;
    unsigned long long parts = (w >> PARTS_SHIFT) & FIELD_MASK, next = w & FIELD_MASK;
    if (next >= parts) return;
    if (!atomic_compare_exchange_weak(&region, &w, w + 1)) continue;  // w now holds the current word
    region_fn(region_ctx, (long)next);  // the region cannot end (nor its function change) before this part is done
    atomic_fetch_add(&done_parts, 1);
    w = atomic_load(&region);
  }
}

static void *worker_main(void *arg) {
  int index = (int)(long)arg;
  unsigned long long seen = generation_of(atomic_load(&region));
  for (;;) {
    unsigned long long g = generation_of(atomic_load(&region));
    long start = now_ns();
    for (unsigned spins = 1; g == seen; spins++) {
      CPU_RELAX();
      g = generation_of(atomic_load(&region));
      if (g == seen && spins % 256 == 0 && now_ns() - start > spin_ns) {
        pthread_mutex_lock(&sleep_lock);
        atomic_fetch_add(&sleepers, 1);
        while ((g = generation_of(atomic_load(&region))) == seen) pthread_cond_wait(&wake, &sleep_lock);
        atomic_fetch_sub(&sleepers, 1);
        pthread_mutex_unlock(&sleep_lock);
      }
    }
    seen = g;
    if (index < atomic_load(&active)) take_parts(g);
  }
  return NULL;
}

int milan_pool_run(long parts, int threads, milan_pool_fn fn, void *ctx) {
  if (threads < 2 || parts < 1 || (unsigned long long)parts > FIELD_MASK) return 0;
  if (pthread_mutex_trylock(&run_lock) != 0) return 0;  // another thread's region, or a nested one: caller falls back
  if (spin_ns < 0) {
    const char *s = getenv("MILAN_WORKER_SPIN_US");
    long us = s ? atol(s) : 300;
    spin_ns = (us < 0 ? 0 : us) * 1000L;
  }
  int want = threads - 1 > MAX_WORKERS ? MAX_WORKERS : threads - 1;
  while (started < want) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, worker_main, (void *)(long)started);
    pthread_attr_destroy(&attr);
    if (rc != 0) break;  // fewer workers: the caller and the started ones take every part anyway
    started++;
  }
  if (started == 0) {
    pthread_mutex_unlock(&run_lock);
    return 0;
  }
  atomic_store(&active, want);
  region_fn = fn;
  region_ctx = ctx;
  atomic_store(&done_parts, 0);
  unsigned long long gen = (generation_of(atomic_load(&region)) + 1) & GEN_MASK;
  atomic_store(&region, (gen << GEN_SHIFT) | ((unsigned long long)parts << PARTS_SHIFT));
  if (atomic_load(&sleepers) > 0) {
    pthread_mutex_lock(&sleep_lock);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&sleep_lock);
  }
  take_parts(gen);
  for (unsigned spins = 1; atomic_load(&done_parts) < parts; spins++) {
    CPU_RELAX();
    if (spins % 4096 == 0) sched_yield();  // a worker preempted mid-part: let it run
  }
  pthread_mutex_unlock(&run_lock);
  return 1;
}
