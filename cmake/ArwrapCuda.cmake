# CUDA set-up for building against a CUDA build of torch without a GPU here.
# torch's legacy FindCUDA needs the toolkit
# root (derived from the nvcc on PATH, which may be a wrapper), an explicit arch list (else it runs a GPU probe), and CMake 3.25 does not
# know nvcc's C++20 flag.
set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
# Link the shared CUDA runtime, the one torch loads (libcudart.so.13), as torch's own
# extensions do; CMake's default (static) would add -lcudart_static to libarwrap.
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
if(NOT CUDA_TOOLKIT_ROOT_DIR)
  set(CUDA_TOOLKIT_ROOT_DIR "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}")
endif()
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
set(ARWRAP_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures of the arwrap kernels")
# A minimal local toolkit lacks some headers and libraries (nvrtc, cublas): take
# them from the nvidia-* wheels beside torch when present.
if(ARWRAP_TORCH_CONFIG_DIR)
  get_filename_component(_site "${ARWRAP_TORCH_CONFIG_DIR}/../../../.." ABSOLUTE)
  foreach(_cu cu13 cu12)
    if(EXISTS "${_site}/nvidia/${_cu}/include")
      include_directories(SYSTEM "${_site}/nvidia/${_cu}/include")
      list(APPEND CMAKE_LIBRARY_PATH "${_site}/nvidia/${_cu}/lib")
      link_directories("${_site}/nvidia/${_cu}/lib")
      # The wheels ship only versioned libraries (libnvrtc.so.13, no libnvrtc.so), so
      # FindCUDAToolkit's find_library(nvrtc) fails and torch's config links a NOTFOUND.
      if(NOT CUDA_nvrtc_LIBRARY)
        file(GLOB _nvrtc "${_site}/nvidia/${_cu}/lib/libnvrtc.so.[0-9]*")
        if(_nvrtc)
          list(GET _nvrtc 0 _nvrtc)
          set(CUDA_nvrtc_LIBRARY "${_nvrtc}" CACHE FILEPATH "libnvrtc (from the nvidia-* wheels beside torch)")
        endif()
      endif()
      break()
    endif()
  endforeach()
endif()
