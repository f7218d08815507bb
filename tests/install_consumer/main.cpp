// Consumer of an installed flash4: the C ABI and the C++ layer, no GPU needed.
#include <cstdio>
#include <cstring>
#include <string>

#include "flash4/flash4.h"
#include "flash4/flash4.hpp"

int main() {
  char expected[32];
  std::snprintf(expected, sizeof(expected), "%d.%d.%d", FLASH4_VERSION_MAJOR,
                FLASH4_VERSION_MINOR, FLASH4_VERSION_PATCH);
  const char* version = flash4_version();
  std::printf("flash4 %s\n", version);
  if (std::strcmp(version, expected) != 0) {
    std::fprintf(stderr, "header says %s, library says %s\n", expected, version);
    return 1;
  }
  // A malformed call must come back as INVALID_ARGUMENT with a message, on
  // any machine, and the C++ layer must turn it into flash4::Error.
  flash4_fwd_args args{};
  args.opt = flash4::Options();
  try {
    flash4::fwd_workspace_size(args);
    std::fprintf(stderr, "a zeroed flash4_fwd_args was accepted\n");
    return 1;
  } catch (const flash4::Error& e) {
    if (e.status() != FLASH4_ERROR_INVALID_ARGUMENT || std::string(e.what()).find("q:") == std::string::npos) {
      std::fprintf(stderr, "unexpected error: %s\n", e.what());
      return 1;
    }
    std::printf("validation error as expected: %s\n", e.what());
  }
  return 0;
}
