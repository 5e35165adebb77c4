// Run-time loading of NVIDIA's optional libraries (cuDNN, NCCL): the path checks and the
// dlopen call both loaders share, and NVIDIA's version-number encoding.
#pragma once
#include <dlfcn.h>
#include <sys/stat.h>

#include <string>

namespace bn {
namespace dl {

inline bool is_directory(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Only regular files reach dlopen: opening a FIFO (or a device) would block the caller.
inline bool is_file(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// A name that exists but is not a regular file (FIFO, device, socket) must not be opened;
// a bare soname that does not exist as a path is left to the library search path.
inline bool refuses(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && !S_ISREG(st.st_mode);
}

// Libraries are never dlclose'd: cuDNN and NCCL keep threads and static state, and
// unloading one under a live handle would crash; a failed probe leaves only a mapped file.
inline void* open_library(const std::string& name, std::string* err) {
  dlerror();
  void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    *err = e ? e : "dlopen failed";
  }
  return h;
}

// cuDNN 9 and NCCL >= 2.9: MAJOR·10000 + MINOR·100 + PATCH; older: MAJOR·1000 + MINOR·100 + PATCH.
inline int version_major(int v) { return v >= 10000 ? v / 10000 : v / 1000; }
inline int version_minor(int v) { return v >= 10000 ? (v / 100) % 100 : (v / 100) % 10; }
inline std::string version_text(int v) {
  return std::to_string(version_major(v)) + "." + std::to_string(version_minor(v)) + "." + std::to_string(v % 100);
}

}  // namespace dl
}  // namespace bn
