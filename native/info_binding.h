// Registration of the information functions (native/info_binding.cc).
#pragma once
#include <napi.h>

namespace bn {

void register_info_functions(Napi::Env env, Napi::Object exports);

}  // namespace bn
