// libFuzzer's driver as a library call (declared in LLVM's compiler-rt FuzzerInterface.h; defined in the libFuzzer
// that -sanitize=fuzzer links). The Swift entry point calls it with its own argc/argv: SwiftPM links an executable's
// `main` to the module's entry symbol, so libFuzzer's own main cannot be used.
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*user_callback)(const uint8_t *data, size_t size));
