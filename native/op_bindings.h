// Registration of the op bindings (native/op_bindings.cc).
#pragma once
#include <napi.h>

namespace bn {

// moments, batchNormalization, fusedBatchNorm, batchNormalizationGrad (each with its
// Async twin), the synchronized backward's channelGradSums and the call counter opCalls.
void register_op_functions(Napi::Env env, Napi::Object exports);

}  // namespace bn
