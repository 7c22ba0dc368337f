// Header-only target (CLibFuzzerDriver.h); SwiftPM wants one source file.
#include "CLibFuzzerDriver.h"
