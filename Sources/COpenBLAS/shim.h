// CBLAS from Debian's libopenblas-dev (pthread variant). Found through pkg-config "openblas".
#include <cblas.h>
