// Thread-local last-error message behind flash4_last_error().
#pragma once
#include <string>
#include "flash4/flash4.h"

namespace flash4 {

void set_last_error(const std::string& message);
void clear_last_error();
// Records the message and returns the status, for `return fail(...)`.
inline flash4_status fail(flash4_status status, const std::string& message) {
  set_last_error(message);
  return status;
}

}  // namespace flash4
