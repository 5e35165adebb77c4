// Hot loops are compiled several times and picked at load time by the CPU's features
// (GCC function multi-versioning), so one portable binary uses AVX-512/AVX2 where they
// exist. The build uses -ffp-contract=off, so every clone does the same roundings and
// results are bit-identical across CPUs, not only across thread counts.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define BN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BN_CLONES
#endif

namespace bn {
// Names of the instruction-set levels this CPU offers to the clones above.
const char* cpu_simd_level();
}  // namespace bn
