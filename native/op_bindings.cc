// The op bindings: each JS call becomes one op struct (ops.h), one backend choice
// (backend.cc) and one run, on the JS thread or a worker (AsyncCall). Every op takes one
// named options object, read by the attr_* helpers of args.h.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "args.h"
#include "async_work.h"
#include "hostmem.h"
#include "nccl_binding.h"
#include "op_bindings.h"

namespace bn {
namespace {

struct MomentsCall : OpCall<MomentsCall> {
  MomentsArgs args;

  Status run() const { return run_moments(backend, args); }
};

struct BatchNormCall : OpCall<BatchNormCall> {
  BatchNormArgs args;

  Status run() const {
    if (backend == Backend::kCpu && args.y != args.x.data)
      advise_fresh_output(args.y, static_cast<size_t>(numel(args.out_shape)) * sizeof(float));
    return run_batch_norm(backend, args);
  }
};


// ---- the parts of the options-object readers: layout, operands, synchronized inputs

// A per-channel layout from options.shape and options.axis: x viewed as [A, C, B].
ChannelLayout attr_layout(Napi::Object o, const char* fn) {
  Napi::Env env = o.Env();
  ChannelLayout l;
  l.shape = attr_shape(o, fn, "shape");
  const double ax = attr_number(o, fn, "axis");
  const size_t rank = l.shape.size();
  if (rank < 2) range_error(env, std::string(fn) + ": options.shape must have rank >= 2");
  if (!(ax >= 0 && ax < static_cast<double>(rank)) || ax != std::floor(ax))
    range_error(env, std::string(fn) + ": options.axis must be an integer in [0, " + std::to_string(rank) + ")");
  l.axis = static_cast<int>(ax);
  l.A = 1;
  l.B = 1;
  for (size_t d = 0; d < rank; ++d) {
    if (static_cast<int>(d) < l.axis) l.A *= l.shape[d];
    if (static_cast<int>(d) > l.axis) l.B *= l.shape[d];
  }
  l.C = l.shape[static_cast<size_t>(l.axis)];
  return l;
}

// The operands of one call: each named, each of a given length, all in the
// memory x lives in; outputs disjoint (by address) from every input and each other.
class Operands {
 public:
  Operands(Napi::Object o, const char* fn) : o_(o), fn_(fn) {}

  template <typename Call>
  const float* input(const char* key, int64_t n, bool nullable, Call* c) {
    F32 a = take(key, n, nullable, c);
    if (!a.absent()) ins_.push_back({key, a.data, a.bytes(), nullptr});
    return a.data;
  }
  template <typename Call>
  float* output(const char* key, int64_t n, Call* c, const float* in_place_of = nullptr) {
    F32 a = take(key, n, false, c);
    outs_.push_back({key, a.data, a.bytes(), in_place_of});
    return a.data;
  }
  // A float64 output (host memory; null when nullable and absent): checked with the
  // others by check_disjoint_outputs.
  template <typename Call>
  double* output_f64(const char* key, int64_t n, Call* c, bool nullable = false) {
    double* d = attr_f64(o_, fn_, key, n, &c->keep, nullable);
    outs_.push_back({key, d, static_cast<size_t>(n) * sizeof(double), nullptr});
    return d;
  }
  // Every output against every input (an output may be exactly the input it names as
  // in_place_of) and against the other outputs.
  void check_disjoint_outputs() {
    Napi::Env env = o_.Env();
    for (size_t i = 0; i < outs_.size(); ++i) {
      const Range& out = outs_[i];
      for (const Range& in : ins_) {
        const Rel r = relation(out.data, out.bytes, in.data, in.bytes);
        if (r == Rel::kSame && out.in_place_of == in.data) continue;
        if (r != Rel::kDisjoint)
          range_error(env, std::string(fn_) + ": options." + out.name + " overlaps options." + in.name + " in memory" +
                               (out.in_place_of ? "; only exact in-place use is supported" : ""));
      }
      for (size_t j = i + 1; j < outs_.size(); ++j)
        check_disjoint(env, fn_, ("options." + std::string(out.name)).c_str(), out.data, out.bytes,
                       ("options." + std::string(outs_[j].name)).c_str(), outs_[j].data, outs_[j].bytes);
    }
  }
  bool device() const { return device_; }

 private:
  struct Range {
    const char* name;
    const void* data;
    size_t bytes;
    const float* in_place_of;
  };
  template <typename Call>
  F32 take(const char* key, int64_t n, bool nullable, Call* c) {
    Napi::Env env = o_.Env();
    F32 a = attr_f32(o_, fn_, key, nullable);
    if (nullable && a.absent()) return a;
    if (static_cast<int64_t>(a.length) != n)
      range_error(env, std::string(fn_) + ": options." + key + " has " + std::to_string(a.length) +
                           " elements but needs " + std::to_string(n));
    if (n > 0 && a.data == nullptr) type_error(env, std::string(fn_) + ": options." + key + " is empty");
    if (first_) {
      device_ = a.device;
      first_ = false;
    } else if (a.device != device_) {
      type_error(env, std::string(fn_) + ": options." + key + " must be a " +
                          (device_ ? "DeviceTensor handle, as x is" : "Float32Array, as x is"));
    }
    c->keep.push_back(a.value);
    if (a.device) c->hold.push_back(a.hold);
    return a;
  }
  Napi::Object o_;
  const char* fn_;
  bool first_ = true;
  bool device_ = false;
  std::vector<Range> ins_;
  std::vector<Range> outs_;
};

// The synchronized inputs of a training call. options.wholeBatch (host data) is copied
// into the call: C numbers per array, and afterwards neither the caller's later writes
// nor an output sharing their memory can change what the kernels read. options.nccl
// (DeviceTensors) is the communicator, held until the call ends. The args point here;
// the call owns it through a shared_ptr, so moving the call keeps the pointers valid.

struct SyncInputs {
  std::vector<double> data;  // the wholeBatch arrays, back to back
  WholeBatchStats stats;
  WholeBatchGradSums sums;
  std::shared_ptr<nccl::Comm> comm;
};

bool present(const Napi::Value& v) { return !(v.IsEmpty() || v.IsNull() || v.IsUndefined()); }

// options.wholeBatch / options.nccl of a training call whose tensors live in device memory
// or not; null when neither is given. `arrays` are wholeBatch's float64 keys, C each.
std::shared_ptr<SyncInputs> read_sync(Napi::Object o, const char* fn, bool training, bool device, int64_t C,
                                      std::initializer_list<const char*> arrays) {
  Napi::Env env = o.Env();
  const std::string f(fn);
  Napi::Value wb = o.Get("wholeBatch"), nc = o.Get("nccl");
  if (!present(wb) && !present(nc)) return nullptr;
  if (present(wb) && present(nc))
    type_error(env, f + ": options.wholeBatch and options.nccl exclude each other (host data takes wholeBatch, "
                        "DeviceTensors take nccl)");
  const char* key = present(wb) ? "options.wholeBatch" : "options.nccl";
  if (!training) range_error(env, f + ": " + key + " is for training only (options.isTraining is false)");
  auto s = std::make_shared<SyncInputs>();
  if (present(nc)) {
    s->comm = get_comm(env, nc, fn, "options.nccl");
    if (!device)
      type_error(env, f + ": options.nccl needs DeviceTensor inputs (a device communicator); host data takes "
                          "options.wholeBatch");
    return s;
  }
  if (device)
    type_error(env, f + ": options.wholeBatch takes host data; with DeviceTensor inputs the ranks exchange the "
                        "statistics through options.nccl");
  if (!wb.IsObject() || wb.IsArray() || wb.IsTypedArray() || wb.IsFunction())
    type_error(env, f + ": options.wholeBatch must be an object of float64 per-channel sums or null");
  Napi::Object w = wb.As<Napi::Object>();
  Napi::Value cv = w.Get("count");
  if (!cv.IsNumber()) type_error(env, f + ": options.wholeBatch.count must be a number");
  const double count = cv.As<Napi::Number>().DoubleValue();
  if (!(count >= 0) || count != std::floor(count) || count > 9007199254740991.0)
    range_error(env, f + ": options.wholeBatch.count must be an integer >= 0");
  const size_t uc = static_cast<size_t>(C);
  s->data.reserve(arrays.size() * uc);
  for (const char* k : arrays) {
    const std::string name = std::string("options.wholeBatch.") + k;
    const double* p = read_f64(env, w.Get(k), fn, name.c_str(), C, false, nullptr);
    s->data.insert(s->data.end(), p, p + C);
  }
  const double* d = s->data.data();
  auto at = [&](size_t i) { return d + i * uc; };
  if (arrays.size() == 2) {
    s->stats = {count, at(0), at(1)};
  } else {
    s->sums = {count, at(0), at(1), at(2), at(3)};
  }
  return s;
}

// ---- moments and batchNormalization: one options object per call --------------------

// moments({x, shape, axes, correction, backend, mean, variance, mean64?, m2?})
MomentsCall parse_moments(const Napi::CallbackInfo& info) {
  const char* fn = "moments";
  Napi::Env env = info.Env();
  Napi::Object o = get_options(info, fn, {"x", "shape", "axes", "correction", "backend", "mean", "variance", "mean64", "m2"});
  MomentsCall c;
  MomentsArgs& a = c.args;
  a.shape = attr_shape(o, fn, "shape");
  a.reduce = attr_axes(o, fn, "axes", a.shape.size());
  a.correction = attr_number(o, fn, "correction");
  int64_t kept = 1;
  for (size_t d = 0; d < a.shape.size(); ++d)
    if (!a.reduce[d]) kept *= a.shape[d];
  Operands p(o, fn);
  a.x = p.input("x", numel(a.shape), false, &c);
  a.mean = p.output("mean", kept, &c);
  a.variance = p.output("variance", kept, &c);
  // Float64 sufficient statistics: both or neither, host memory only (the kernels write
  // them where they write mean).
  const bool has64 = present(o.Get("mean64"));
  if (!has64 && present(o.Get("m2"))) type_error(env, "moments: options.m2 needs options.mean64");
  if (has64 && p.device())
    type_error(env, "moments: options.mean64 and options.m2 need host x, mean and variance (Float32Arrays)");
  a.mean64 = p.output_f64("mean64", kept, &c, true);
  a.m2_64 = p.output_f64("m2", kept, &c, !has64);
  p.check_disjoint_outputs();
  a.mem = p.device() ? Memory::kDevice : Memory::kHost;
  c.device_only = p.device();
  std::string why;
  Status s = select_backend(Op::kMoments, attr_backend(o, fn), &c.backend, &why, a.mem);
  if (!s.ok()) throw_status(env, s);
  return c;
}

// batchNormalization({x, mean, variance, offset, scale, epsilon, y, backend}): every
// operand {data, shape}; offset/scale may be null (0 / 1); y.shape is the broadcast of
// the five shapes. y lives where x does; the parameters may live on either side.
BatchNormCall parse_batch_norm(const Napi::CallbackInfo& info) {
  const char* fn = "batchNormalization";
  Napi::Env env = info.Env();
  Napi::Object o = get_options(info, fn, {"x", "mean", "variance", "offset", "scale", "epsilon", "y", "backend"});
  BatchNormCall c;
  BatchNormArgs& a = c.args;
  static const char* names[5] = {"x", "mean", "variance", "offset", "scale"};
  Operand* ops[5] = {&a.x, &a.mean, &a.variance, &a.offset, &a.scale};
  OperandRef y = attr_operand(o, fn, "y", false);
  a.out_shape = y.shape;
  OperandRef in[5];
  bool any_device = false;
  for (size_t k = 0; k < 5; ++k) {
    in[k] = attr_operand(o, fn, names[k], k >= 3);
    if (in[k].absent()) continue;
    check_broadcast(env, fn, ("options." + std::string(names[k])).c_str(), in[k].shape, a.out_shape);
    ops[k]->data = in[k].data.data;
    ops[k]->shape = in[k].shape;
    ops[k]->mem = in[k].data.device ? Memory::kDevice : Memory::kHost;
    any_device = any_device || in[k].data.device;
    if (in[k].data.device) c.hold.push_back(in[k].data.hold);
    c.keep.push_back(in[k].data.value);
  }
  a.epsilon = attr_number(o, fn, "epsilon");
  if (!(a.epsilon >= 0)) range_error(env, "batchNormalization: options.epsilon must be >= 0");
  // In place (y is exactly x's memory) is fine elementwise only when x is not broadcast;
  // any other shared byte between y and an operand is refused.
  const F32& yd = y.data;
  const Rel rx = relation(yd.data, yd.bytes(), in[0].data.data, in[0].data.bytes());
  if (rx == Rel::kOverlap || (rx == Rel::kSame && numel(a.x.shape) != numel(a.out_shape)))
    range_error(env, "batchNormalization: options.y overlaps options.x in memory; only exact in-place use "
                     "(y is x, x of the output's shape) is supported");
  for (size_t k = 1; k < 5; ++k)
    check_disjoint(env, fn, "options.y", yd.data, yd.bytes(), ("options." + std::string(names[k])).c_str(),
                   in[k].data.data, in[k].data.bytes());
  if (yd.device != in[0].data.device)
    type_error(env, "batchNormalization: options.y.data must be a DeviceTensor handle exactly when options.x.data is one");
  a.y = yd.data;
  a.mem = yd.device ? Memory::kDevice : Memory::kHost;
  c.device_only = yd.device;  // host parameters are staged before run() returns
  c.keep.push_back(yd.value);
  if (yd.device) c.hold.push_back(yd.hold);
  std::string why;
  const CallInfo call = batch_norm_call_info(a);  // what the cuDNN path needs to judge
  Status s = select_backend(Op::kBatchNorm, attr_backend(o, fn), &c.backend, &why,
                            any_device ? Memory::kDevice : Memory::kHost, &call);
  if (!s.ok()) throw_status(env, s);
  return c;
}

// ---- fusedBatchNorm and batchNormalizationGrad --------------------------------------

struct FusedCall : OpCall<FusedCall> {
  FusedArgs args;
  std::shared_ptr<SyncInputs> sync;
  Status run() const {
    if (backend == Backend::kCpu && args.y != args.x)
      advise_fresh_output(args.y, static_cast<size_t>(numel(args.layout.shape)) * sizeof(float));
    return run_fused_batch_norm(backend, args);
  }
};

struct GradCall : OpCall<GradCall> {
  GradArgs args;
  std::shared_ptr<SyncInputs> sync;
  Status run() const {
    if (backend == Backend::kCpu)
      advise_fresh_output(args.dx, static_cast<size_t>(numel(args.layout.shape)) * sizeof(float));
    return run_batch_norm_grad(backend, args);
  }
};

CallInfo training_call(const ChannelLayout& l, double eps, bool training, bool synchronized) {
  CallInfo call;
  call.shape = l.shape;
  call.channel_axis = l.axis;
  call.epsilon = eps;
  call.training = training;
  call.synchronized = synchronized;
  return call;
}

// fusedBatchNorm({x, shape, axis, scale, offset, mean, variance, epsilon,
//   exponentialAvgFactor, isTraining, backend, y, batchMean, batchVariance,
//   batchVarianceBiased, runningMean, runningVariance, savedMean, savedInvStd,
//   wholeBatch?: {count, mean, m2}, nccl?})
FusedCall parse_fused(const Napi::CallbackInfo& info) {
  const char* fn = "fusedBatchNorm";
  Napi::Env env = info.Env();
  Napi::Object o = get_options(info, fn, {"x", "shape", "axis", "scale", "offset", "mean", "variance", "epsilon", "exponentialAvgFactor", "isTraining",
                                          "backend", "y", "batchMean", "batchVariance", "batchVarianceBiased", "runningMean",
                                          "runningVariance", "savedMean", "savedInvStd", "wholeBatch", "nccl"});
  FusedCall c;
  FusedArgs& a = c.args;
  a.layout = attr_layout(o, fn);
  const int64_t n = numel(a.layout.shape), C = a.layout.C;
  a.epsilon = attr_number(o, fn, "epsilon");
  a.factor = attr_number(o, fn, "exponentialAvgFactor");
  a.training = attr_bool(o, fn, "isTraining");
  if (!(a.epsilon >= 0)) range_error(env, "fusedBatchNorm: options.epsilon must be >= 0");
  if (!(a.factor >= 0 && a.factor <= 1)) range_error(env, "fusedBatchNorm: options.exponentialAvgFactor must be in [0, 1]");
  Operands p(o, fn);
  a.x = p.input("x", n, false, &c);
  a.scale = p.input("scale", C, true, &c);
  a.offset = p.input("offset", C, true, &c);
  const bool need_running = !a.training || a.factor != 1;
  a.running_mean = p.input("mean", C, !need_running, &c);
  a.running_var = p.input("variance", C, !need_running, &c);
  a.y = p.output("y", n, &c, a.x);
  a.batch_mean = p.output("batchMean", C, &c);
  a.batch_var = p.output("batchVariance", C, &c);
  a.batch_var_biased = p.output("batchVarianceBiased", C, &c);
  a.running_mean_out = p.output("runningMean", C, &c);
  a.running_var_out = p.output("runningVariance", C, &c);
  a.saved_mean = p.output("savedMean", C, &c);
  a.saved_inv_std = p.output("savedInvStd", C, &c);
  p.check_disjoint_outputs();
  a.mem = p.device() ? Memory::kDevice : Memory::kHost;
  c.device_only = p.device();
  c.sync = read_sync(o, fn, a.training, p.device(), C, {"mean", "m2"});
  if (c.sync) {
    a.whole_batch = c.sync->comm ? nullptr : &c.sync->stats;
    a.nccl = c.sync->comm.get();
  }
  const CallInfo call = training_call(a.layout, a.epsilon, a.training, c.sync != nullptr);
  std::string why;
  Status s = select_backend(Op::kFusedForward, attr_backend(o, fn), &c.backend, &why, a.mem, &call);
  if (!s.ok()) throw_status(env, s);
  return c;
}

// batchNormalizationGrad({dy, x, shape, axis, scale, savedMean, savedInvStd, epsilon,
//   isTraining, backend, dx, dscale, doffset,
//   wholeBatch?: {count, sumDy, sumDyXmu, shardSumDy, shardSumDyXmu}, nccl?})
GradCall parse_grad(const Napi::CallbackInfo& info) {
  const char* fn = "batchNormalizationGrad";
  Napi::Env env = info.Env();
  Napi::Object o = get_options(info, fn, {"dy", "x", "shape", "axis", "scale", "savedMean", "savedInvStd", "epsilon", "isTraining", "backend",
                                          "dx", "dscale", "doffset", "wholeBatch", "nccl"});
  GradCall c;
  GradArgs& a = c.args;
  a.layout = attr_layout(o, fn);
  const int64_t n = numel(a.layout.shape), C = a.layout.C;
  a.epsilon = attr_number(o, fn, "epsilon");
  a.training = attr_bool(o, fn, "isTraining");
  if (!(a.epsilon >= 0)) range_error(env, "batchNormalizationGrad: options.epsilon must be >= 0");
  Operands p(o, fn);
  a.dy = p.input("dy", n, false, &c);
  a.x = p.input("x", n, false, &c);
  a.scale = p.input("scale", C, true, &c);
  a.saved_mean = p.input("savedMean", C, false, &c);
  a.saved_inv_std = p.input("savedInvStd", C, false, &c);
  a.dx = p.output("dx", n, &c);
  a.dscale = p.output("dscale", C, &c);
  a.doffset = p.output("doffset", C, &c);
  p.check_disjoint_outputs();
  a.mem = p.device() ? Memory::kDevice : Memory::kHost;
  c.device_only = p.device();
  c.sync = read_sync(o, fn, a.training, p.device(), C, {"sumDy", "sumDyXmu", "shardSumDy", "shardSumDyXmu"});
  if (c.sync) {
    a.whole_batch = c.sync->comm ? nullptr : &c.sync->sums;
    a.nccl = c.sync->comm.get();
  }
  const CallInfo call = training_call(a.layout, a.epsilon, a.training, c.sync != nullptr);
  std::string why;
  Status s = select_backend(Op::kFusedBackward, attr_backend(o, fn), &c.backend, &why, a.mem, &call);
  if (!s.ok()) throw_status(env, s);
  return c;
}

// A shard's backward sums (the synchronized backward all-reduces them): per channel,
// Σdy and Σdy·(x − μ) in float64, with μ = savedMean as batchNormalizationGrad forms it.
struct GradSumsCall : OpCall<GradSumsCall> {
  ChannelGradArgs args;  // mean: set in run()
  const float* saved_mean = nullptr;
  double* sum_dy = nullptr;
  double* sum_dy_xmu = nullptr;
  Status run() const {
    std::vector<double> mu;
    try {
      mu.assign(saved_mean, saved_mean + args.C);
    } catch (const std::bad_alloc&) {
      return Status::Error(Code::kOutOfMemory, "channelGradSums: out of host memory for the channel means");
    }
    ChannelGradArgs p = args;
    p.mean = mu.data();
    return run_channel_grad_sums(backend, p, sum_dy, sum_dy_xmu);
  }
};

// channelGradSums({dy, x, shape, axis, savedMean, backend, sumDy, sumDyXmu}): host data.
GradSumsCall parse_grad_sums(const Napi::CallbackInfo& info) {
  const char* fn = "channelGradSums";
  Napi::Env env = info.Env();
  Napi::Object o = get_options(info, fn, {"dy", "x", "shape", "axis", "savedMean", "backend", "sumDy", "sumDyXmu"});
  GradSumsCall c;
  const ChannelLayout l = attr_layout(o, fn);
  const int64_t n = numel(l.shape), C = l.C;
  Operands p(o, fn);
  c.args.dy = p.input("dy", n, false, &c);
  c.args.x = p.input("x", n, false, &c);
  c.saved_mean = p.input("savedMean", C, false, &c);
  if (p.device())
    type_error(env, "channelGradSums: options.dy, options.x and options.savedMean must be Float32Arrays "
                    "(DeviceTensors synchronize through batchNormalizationGrad's options.nccl)");
  c.sum_dy = p.output_f64("sumDy", C, &c);
  c.sum_dy_xmu = p.output_f64("sumDyXmu", C, &c);
  p.check_disjoint_outputs();
  c.args.A = l.A;
  c.args.C = C;
  c.args.B = l.B;
  std::string why;
  Status s = select_backend(Op::kTraining, attr_backend(o, fn), &c.backend, &why);
  if (!s.ok()) throw_status(env, s);
  return c;
}

// Counts the calls into the op bindings (every sync or async op call): tests assert
// that one public call crosses the JS/native boundary once.
std::atomic<uint64_t> g_op_calls{0};

template <typename Call, Call (*Parse)(const Napi::CallbackInfo&)>
Napi::Value Sync(const Napi::CallbackInfo& info) {
  g_op_calls.fetch_add(1);
  return run_sync(info, Parse(info));
}

template <typename Call, Call (*Parse)(const Napi::CallbackInfo&)>
Napi::Value Async(const Napi::CallbackInfo& info) {
  g_op_calls.fetch_add(1);
  return AsyncCall<Call>::Start(info.Env(), Parse(info));
}

Napi::Value OpCalls(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(g_op_calls.load())); }

}  // namespace

void register_op_functions(Napi::Env env, Napi::Object exports) {
  auto add = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, f, name));
  };
  add("moments", Sync<MomentsCall, parse_moments>);
  add("momentsAsync", Async<MomentsCall, parse_moments>);
  add("batchNormalization", Sync<BatchNormCall, parse_batch_norm>);
  add("batchNormalizationAsync", Async<BatchNormCall, parse_batch_norm>);
  add("fusedBatchNorm", Sync<FusedCall, parse_fused>);
  add("fusedBatchNormAsync", Async<FusedCall, parse_fused>);
  add("batchNormalizationGrad", Sync<GradCall, parse_grad>);
  add("batchNormalizationGradAsync", Async<GradCall, parse_grad>);
  add("channelGradSums", Sync<GradSumsCall, parse_grad_sums>);
  add("channelGradSumsAsync", Async<GradSumsCall, parse_grad_sums>);
  add("opCalls", OpCalls);
}

}  // namespace bn
