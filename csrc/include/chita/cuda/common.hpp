// Shared host-side types for the CUDA kernels: a non-owning view of A in device memory (any of
// four storage types), error checks that turn every CUDA status into std::runtime_error, and
// stream-ordered scratch memory. Headers here include no Python and no device code, so the
// pybind11 module compiles with the host compiler.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace chita::cuda {

enum class Dtype { f32, f64, f16, bf16 };

// A is n x p in device memory, C order (row i at data + i * p) or F order (column j at
// data + j * n). Kernels never copy it.
struct DeviceMatrix {
  const void* data;   // [n * p] elements of `dtype`
  std::int64_t n;     // rows (samples)
  std::int64_t p;     // columns (weights)
  bool col_major;     // F order
  Dtype dtype;
};

inline std::size_t dtype_size(Dtype d) {
  return d == Dtype::f64 ? 8 : d == Dtype::f32 ? 4 : 2;
}

// "<call> failed: <cudaGetErrorString>". Clears the sticky launch error so the next call starts
// clean (a failed launch is not a corrupted context).
inline void check_cuda(cudaError_t err, const char* call) {
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string("chita_core CUDA: ") + call + " failed: " +
                             cudaGetErrorString(err));
  }
}

#define CHITA_CUDA_CHECK(expr) ::chita::cuda::check_cuda((expr), #expr)
// After a kernel launch: launch-configuration errors surface here, not at the next sync.
#define CHITA_CUDA_LAUNCHED(name) ::chita::cuda::check_cuda(cudaGetLastError(), name)

// Makes the current device's default memory pool keep freed memory (first call per device):
// scratch is freed at the end of every call, and by default the pool would hand it back to the
// driver at each synchronisation and map it again on the next call.
void retain_pool_memory();

// Stream-ordered device scratch: cudaMallocAsync on construction, cudaFreeAsync on destruction,
// both on the caller's stream, so the memory is reused from the pool and never outlives the
// work queued on it. Zero bytes allocate nothing.
class Scratch {
 public:
  Scratch() = default;
  Scratch(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes == 0) return;
    retain_pool_memory();
    CHITA_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Scratch(Scratch&& o) noexcept : ptr_(o.ptr_), stream_(o.stream_) { o.ptr_ = nullptr; }
  Scratch& operator=(Scratch&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = o.ptr_;
      stream_ = o.stream_;
      o.ptr_ = nullptr;
    }
    return *this;
  }
  ~Scratch() { release(); }

  template <class U>
  U* as() const {
    return static_cast<U*>(ptr_);
  }

 private:
  void release() noexcept {
    if (ptr_ != nullptr) (void)cudaFreeAsync(ptr_, stream_);  // a destructor must not throw
    ptr_ = nullptr;
  }
  void* ptr_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

// Typed scratch of `count` elements.
template <class U>
struct Buffer {
  Scratch mem;
  U* ptr = nullptr;
  Buffer() = default;
  Buffer(std::size_t count, cudaStream_t stream) : mem(count * sizeof(U), stream) {
    ptr = mem.as<U>();
  }
  U* get() const { return ptr; }
};

// Streaming multiprocessors of the current device (cached per device): launch sizes are chosen
// to fill the GPU, not from fixed constants.
int sm_count();

// Copies `bytes` from the device to the host and waits for the stream: the only way the
// host reads results (scalars for the line search, factorisation status).
void read_back(void* host, const void* device, std::size_t bytes, cudaStream_t stream);

}  // namespace chita::cuda
