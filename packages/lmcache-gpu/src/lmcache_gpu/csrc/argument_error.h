/*
 * argument_error.h - the one exception type for a bad argument: the binding turns it into
 * ValueError. Its message names the argument, what was expected and what was given.
 */
#ifndef LMCACHE_GPU_ARGUMENT_ERROR_H_
#define LMCACHE_GPU_ARGUMENT_ERROR_H_

#include <stdexcept>

namespace lmcache_gpu {

struct ArgumentError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

}  // namespace lmcache_gpu

#endif  // LMCACHE_GPU_ARGUMENT_ERROR_H_
