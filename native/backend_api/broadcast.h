// Host-side planning of broadcast elementwise passes, shared by the CPU kernels
// (cpu_batchnorm.cc) and the CUDA launcher (cuda/batchnorm.cu) so both walk the output
// the same way.
#pragma once
#include <cstdint>
#include <vector>

#include "ops.h"

namespace bn {

// Strides of an operand broadcast to the output shape `out` (aligned right; 0 where the
// operand has extent 1 or the dimension is missing).
inline std::vector<int64_t> broadcast_strides(const Shape& shape, const Shape& out) {
  const size_t r = out.size(), k = shape.size();
  std::vector<int64_t> st(r, 0);
  int64_t s = 1;
  for (size_t i = 0; i < k; ++i) {
    const size_t d = r - 1 - i;
    const int64_t ext = shape[k - 1 - i];
    st[d] = ext == 1 ? 0 : s;
    s *= ext;
  }
  return st;
}

// Dims of the output after collapsing; each operand has a stride per dim.
struct Dims {
  std::vector<int64_t> size;
  std::vector<std::vector<int64_t>> st;  // st[operand][dim]
};

// Drops extent-1 dims and merges neighbours that are contiguous for every operand.
inline Dims collapse(const Shape& out, const std::vector<std::vector<int64_t>>& strides) {
  Dims d;
  d.st.resize(strides.size());
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == 1) continue;
    bool merge = !d.size.empty();
    for (size_t k = 0; merge && k < strides.size(); ++k) merge = d.st[k].back() == strides[k][i] * out[i];
    if (merge) {
      d.size.back() *= out[i];
      for (size_t k = 0; k < strides.size(); ++k) d.st[k].back() = strides[k][i];
    } else {
      d.size.push_back(out[i]);
      for (size_t k = 0; k < strides.size(); ++k) d.st[k].push_back(strides[k][i]);
    }
  }
  if (d.size.empty()) {
    d.size.push_back(1);
    for (auto& v : d.st) v.push_back(0);
  }
  return d;
}

// The output dims along which any parameter varies: row-major strides of a table over
// them (0 for the others) and its size *T. Parameters are then folded into that table.
inline std::vector<int64_t> table_strides(const std::vector<std::vector<int64_t>>& param_strides, const Shape& out,
                                          int64_t* T) {
  std::vector<int64_t> tst(out.size(), 0);
  *T = 1;
  for (size_t i = out.size(); i-- > 0;) {
    bool varies = false;
    for (const auto& st : param_strides) varies = varies || st[i] != 0;
    if (varies) {
      tst[i] = *T;
      *T *= out[i];
    }
  }
  return tst;
}

}  // namespace bn
