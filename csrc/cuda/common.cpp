// Host helpers declared in chita/cuda/common.hpp.
#include <cstdint>
#include <mutex>
#include <vector>

#include "chita/cuda/common.hpp"

namespace chita::cuda {

int sm_count() {
  static std::mutex mutex;
  static std::vector<int> cache;  // per device ordinal, 0 = not queried yet
  int device = 0;
  CHITA_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() <= std::size_t(device)) cache.resize(std::size_t(device) + 1, 0);
  int& sms = cache[std::size_t(device)];
  if (sms == 0)
    CHITA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

void retain_pool_memory() {
  static std::mutex mutex;
  static std::vector<bool> done;  // per device ordinal
  int device = 0;
  CHITA_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (done.size() <= std::size_t(device)) done.resize(std::size_t(device) + 1, false);
  if (done[std::size_t(device)]) return;
  cudaMemPool_t pool;
  CHITA_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  std::uint64_t threshold = UINT64_MAX;
  CHITA_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  done[std::size_t(device)] = true;
}

void read_back(void* host, const void* device, std::size_t bytes, cudaStream_t stream) {
  CHITA_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
  CHITA_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace chita::cuda
